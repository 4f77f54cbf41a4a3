"""The teacher's answers checked against the request (``validation.targets_from_results``)."""

from __future__ import annotations

import pytest
from claas.v1 import teacher_pb2

from services.common.domain import Message
from services.common.errors import ClaasError
from services.teacher.convert import score_response_from_proto
from services.trainer.domain import Sample
from services.trainer.validation import targets_from_results

SAMPLE = Sample("c", (Message("user", "hi"),), (1, 2), (3, 4, 5), (-1.0, -1.0, -1.0), "be brief")


def _distributions(length: int, k: int) -> teacher_pb2.TokenDistributions:
    return teacher_pb2.TokenDistributions(
        k=k,
        ids=list(range(length * k)),
        logprobs=[-2.0] * (length * k),
        sampled_logprobs=[-1.0] * length,
        tail_logprobs=[-3.0] * length,
    )


def _targets(response: teacher_pb2.ScoreResponse, *, contrastive: bool):
    return targets_from_results(score_response_from_proto(response), (SAMPLE,), contrastive=contrastive)


def test_teacher_answers_become_per_position_targets() -> None:
    response = teacher_pb2.ScoreResponse(results=[teacher_pb2.ScoreResult(teacher=_distributions(3, 2))])
    (targets,) = _targets(response, contrastive=False)
    assert targets.teacher.ids.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert targets.teacher.tail_logprobs.tolist() == [-3.0] * 3 and targets.neutral is None


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (teacher_pb2.ScoreResponse(), "teacher returned 0 results for 1 samples"),
        (
            teacher_pb2.ScoreResponse(results=[teacher_pb2.ScoreResult(teacher=_distributions(2, 2))]),
            "expected 3 x K ids and logprobs",
        ),
        (
            teacher_pb2.ScoreResponse(results=[teacher_pb2.ScoreResult(teacher=_distributions(3, 2))]),
            "teacher returned no neutral distributions",
        ),
    ],
)
def test_teacher_answers_that_do_not_fit_the_request_are_errors(
    response: teacher_pb2.ScoreResponse, message: str
) -> None:
    with pytest.raises(ClaasError, match=message):
        _targets(response, contrastive=True)


def test_a_neutral_answer_on_other_ids_is_refused() -> None:
    neutral = _distributions(3, 2)
    neutral.ids[0] = 99
    result = teacher_pb2.ScoreResult(teacher=_distributions(3, 2), neutral=neutral)
    with pytest.raises(ClaasError, match="on other ids than the feedback"):
        _targets(teacher_pb2.ScoreResponse(results=[result]), contrastive=True)


def test_answers_with_different_k_are_refused() -> None:
    results = [
        teacher_pb2.ScoreResult(teacher=_distributions(3, 2)),
        teacher_pb2.ScoreResult(teacher=_distributions(3, 4)),
    ]
    with pytest.raises(ClaasError, match="teacher returned K=4 for result 1, K=2 before"):
        targets_from_results(
            score_response_from_proto(teacher_pb2.ScoreResponse(results=results)), (SAMPLE, SAMPLE), contrastive=False
        )
