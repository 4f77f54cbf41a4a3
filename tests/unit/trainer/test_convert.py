"""Proto <-> trainer types: config overrides, teacher answers checked against the request."""

from __future__ import annotations

import pytest
from claas.v1 import common_pb2, teacher_pb2

from services.common.errors import ClaasError
from services.trainer import convert
from services.trainer.config import SdpoConfig
from services.trainer.domain import Message, Sample

SAMPLE = Sample("c", (Message("user", "hi"),), (1, 2), (3, 4, 5), (-1.0, -1.0, -1.0), "be brief")


def test_only_set_fields_override_and_float32_values_read_as_written() -> None:
    proto = common_pb2.SdpoConfig(learning_rate=2e-4, alpha=0.3, steps=2, teacher_mode=common_pb2.TEACHER_MODE_SELF)
    overrides = convert.config_overrides(proto)
    assert overrides == {"alpha": 0.3, "learning_rate": 2e-4, "steps": 2, "teacher_mode": "self"}
    config = SdpoConfig().with_overrides(**overrides)
    assert (config.learning_rate, config.top_k, config.loss) == (2e-4, 100, "jsd")


def test_an_unspecified_teacher_mode_keeps_the_default_and_remote_is_refused() -> None:
    unspecified = common_pb2.SdpoConfig(teacher_mode=common_pb2.TEACHER_MODE_UNSPECIFIED)
    assert convert.config_overrides(unspecified) == {}
    remote = common_pb2.SdpoConfig(teacher_mode=common_pb2.TEACHER_MODE_REMOTE)
    with pytest.raises(ClaasError, match="teacher_mode must be BASE, SELF or TRUST_REGION, got TEACHER_MODE_REMOTE"):
        convert.config_overrides(remote)


def _distributions(length: int, k: int) -> teacher_pb2.TokenDistributions:
    return teacher_pb2.TokenDistributions(
        k=k,
        ids=list(range(length * k)),
        logprobs=[-2.0] * (length * k),
        sampled_logprobs=[-1.0] * length,
        tail_logprobs=[-3.0] * length,
    )


def test_teacher_answers_become_per_position_tensors() -> None:
    response = teacher_pb2.ScoreResponse(results=[teacher_pb2.ScoreResult(teacher=_distributions(3, 2))])
    (targets,) = convert.targets(response, (SAMPLE,), contrastive=False)
    assert targets.teacher.ids.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert targets.teacher.tail.tolist() == [-3.0] * 3 and targets.neutral is None


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
        convert.targets(response, (SAMPLE,), contrastive=True)


def test_a_neutral_answer_on_other_ids_is_refused() -> None:
    neutral = _distributions(3, 2)
    neutral.ids[0] = 99
    result = teacher_pb2.ScoreResult(teacher=_distributions(3, 2), neutral=neutral)
    with pytest.raises(ClaasError, match="on other ids than the feedback"):
        convert.targets(teacher_pb2.ScoreResponse(results=[result]), (SAMPLE,), contrastive=True)
