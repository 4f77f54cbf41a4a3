"""The teacher's core with a recording backend: what gets scored, in which order, and what is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.common.domain import Message
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.teacher.core import Teacher, finite_logprobs, log1mexp
from services.teacher.domain import AdapterRef, ScoreItem, ScoreRequest, TeacherMode
from tests.unit.teacher.fakes import CharTokenizer, FakeResolver, RecordingBackend, info

CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", "Who are you?"),
)
RESPONSE = (5, 9, 5, 2)


async def started(backend: RecordingBackend | None = None, **kwargs) -> tuple[Teacher, RecordingBackend]:
    backend = backend or RecordingBackend()
    teacher = Teacher(backend, **kwargs)
    await teacher.start()
    return teacher, backend


def item(**changes) -> ScoreItem:
    return dataclasses.replace(ScoreItem(CONVERSATION, "Call yourself Kuro.", RESPONSE), **changes)


async def test_scores_the_hindsight_prompt_followed_by_the_response_ids_unchanged():
    teacher, backend = await started()
    [result] = await teacher.score(ScoreRequest(items=(item(),), top_k=3))

    [(inputs, top_k, spec)] = backend.calls
    [scored] = inputs
    assert scored.response_ids == RESPONSE
    assert list(scored.prompt_ids) == CharTokenizer().encode(result.teacher_prompt)
    assert result.prompt_tokens == len(scored.prompt_ids)
    assert result.teacher_prompt.endswith("Call yourself Kuro.</user>\n<assistant>")
    assert (top_k, spec.mode) == (3, TeacherMode.BASE)
    assert result.neutral is None


async def test_neutral_followup_is_scored_at_the_teachers_own_ids_and_results_keep_item_order():
    teacher, backend = await started()
    items = (item(neutral_followup="What is 27*4?"), item(feedback="Be short."), item(neutral_followup="Hm?"))
    results = await teacher.score(ScoreRequest(items=items, top_k=2))

    [(mains, _, _), (neutrals, _, _)] = backend.calls
    assert len(mains) == 3 and len(neutrals) == 2
    assert all(i.response_ids == RESPONSE for i in [*mains, *neutrals])
    assert list(mains[0].prompt_ids) == teacher.render(CONVERSATION, "Call yourself Kuro.")[1]
    assert list(neutrals[0].prompt_ids) == teacher.render(CONVERSATION, "What is 27*4?")[1]
    assert list(neutrals[1].prompt_ids) == teacher.render(CONVERSATION, "Hm?")[1]
    # Each neutral is gathered at the ids of its item's teacher distribution.
    assert (neutrals[0].support_ids == results[0].teacher.ids).all()
    assert (neutrals[1].support_ids == results[2].teacher.ids).all()
    assert "What is 27*4?" not in results[0].teacher_prompt
    # The recording backend marks the n-th sequence of each call with sampled log-probs of -n.
    assert [r.teacher.sampled_logprobs[0] for r in results] == [0.0, -1.0, -2.0]
    assert [None if r.neutral is None else r.neutral.sampled_logprobs[0] for r in results] == [0.0, None, -1.0]


async def test_empty_feedback_scores_the_plain_conversation():
    teacher, _ = await started()
    [result] = await teacher.score(ScoreRequest(items=(item(feedback=""),), top_k=1))
    plain, _ = teacher.render(CONVERSATION, "")
    assert result.teacher_prompt == plain
    assert "Hindsight" not in plain


async def test_support_ids_reach_the_backend_as_rows_of_support_k():
    teacher, backend = await started()
    support = tuple(range(len(RESPONSE) * 2))
    [result] = await teacher.score(ScoreRequest(items=(item(support_ids=support, support_k=2),), top_k=5))
    [(inputs, _, _)] = backend.calls
    np.testing.assert_array_equal(inputs[0].support_ids, np.arange(8).reshape(4, 2))
    assert result.teacher.k == 2


async def test_self_mode_resolves_the_head_version_before_scoring():
    resolver = FakeResolver()
    teacher, backend = await started(adapters=resolver)
    request = ScoreRequest(items=(item(),), top_k=1, mode=TeacherMode.SELF, adapter=AdapterRef("acme/bot", 0))
    await teacher.score(request)
    assert backend.calls[0][2].adapter == AdapterRef("acme/bot", 7)


async def test_score_before_the_model_is_loaded_is_unavailable():
    teacher = Teacher(RecordingBackend())
    with pytest.raises(Unavailable, match="still loading"):
        await teacher.score(ScoreRequest(items=(item(),), top_k=1))


@pytest.mark.parametrize(
    ("request_changes", "item_changes", "message"),
    [
        ({"items": ()}, {}, "at least one item"),
        ({"top_k": 0}, {}, r"top_k must be in \[1, 50\] \(CLAAS_MAX_TOP_K of the hf backend\), got 0"),
        ({"top_k": 51}, {}, r"top_k must be in \[1, 50\]"),
        ({"template": "fancy"}, {}, "unknown template 'fancy'; choose one of hindsight, sdpo"),
        ({"mode": TeacherMode.SELF}, {}, "self mode needs an adapter"),
        ({"mode": TeacherMode.TRUST_REGION, "adapter": AdapterRef("a/b", 1), "mu": 1.5}, {}, r"mu must be in \[0, 1\]"),
        ({}, {"messages": ()}, r"items\[0\]: the conversation is empty"),
        ({}, {"messages": (Message("system", "x"),)}, r"items\[0\]: the conversation has no user message"),
        ({}, {"messages": (Message("robot", "x"),)}, "role must be one of system, user, assistant, got 'robot'"),
        ({}, {"response_ids": ()}, r"items\[0\]: response_ids is empty"),
        ({}, {"response_ids": (1, 1000)}, r"response_ids\[1\] = 1000 is outside the vocabulary \[0, 1000\)"),
        ({}, {"response_ids": (-1,)}, r"response_ids\[0\] = -1 is outside"),
        ({}, {"response_ids": (1,) * 400}, "exceeds the model's context of 400"),
        ({}, {"support_ids": (1, 2, 3), "support_k": 2}, r"T \* support_k = 4 \* 2 = 8 ids, got 3"),
        ({}, {"support_ids": (1,) * 4, "support_k": 0}, r"support_k must be in \[1, 50\], got 0"),
        ({}, {"support_ids": (1,) * 7 + (5000,), "support_k": 2}, r"support_ids\[7\] = 5000 is outside"),
    ],
)
async def test_invalid_requests_are_refused_with_a_message_naming_the_fault(request_changes, item_changes, message):
    teacher, backend = await started(adapters=FakeResolver())
    request = dataclasses.replace(ScoreRequest(items=(item(**item_changes),), top_k=3), **request_changes)
    with pytest.raises(InvalidArgument, match=message):
        await teacher.score(request)
    assert backend.calls == []


async def test_options_the_backend_cannot_honour_name_the_hf_backend():
    vllm_like = info(name="vllm", supports_support_ids=False, supports_trust_region=False)
    teacher, _ = await started(RecordingBackend(vllm_like), adapters=FakeResolver())
    support = item(support_ids=(1,) * 4, support_k=1)
    with pytest.raises(FailedPrecondition, match=r"vllm backend .* support ids need the hf backend"):
        await teacher.score(ScoreRequest(items=(support,), top_k=1))
    blend = ScoreRequest(items=(item(),), top_k=1, mode=TeacherMode.TRUST_REGION, adapter=AdapterRef("a/b"), mu=0.5)
    with pytest.raises(FailedPrecondition, match=r"vllm backend cannot blend .* hf backend"):
        await teacher.score(blend)


async def test_remote_mode_needs_a_remote_model_with_the_same_tokenizer():
    request = ScoreRequest(items=(item(),), top_k=1, mode=TeacherMode.REMOTE)
    teacher, _ = await started(RecordingBackend(info(remote_fingerprint=None)))
    with pytest.raises(FailedPrecondition, match="none is configured"):
        await teacher.score(request)
    teacher, _ = await started(RecordingBackend(info(remote_fingerprint="0" * 16)))
    with pytest.raises(FailedPrecondition, match=f"fingerprint {'0' * 16}.* differs .*{'f' * 16}"):
        await teacher.score(request)
    teacher, backend = await started(RecordingBackend(info(remote_fingerprint="f" * 16)))
    await teacher.score(request)
    assert backend.calls[0][2].mode is TeacherMode.REMOTE


async def test_adapter_modes_without_storage_are_refused():
    teacher, _ = await started()
    request = ScoreRequest(items=(item(),), top_k=1, mode=TeacherMode.SELF, adapter=AdapterRef("a/b", 2))
    with pytest.raises(FailedPrecondition, match="no storage"):
        await teacher.score(request)


def test_log1mexp_is_accurate_at_both_ends_and_empty_tails_become_a_large_negative():
    x = np.array([-1e-12, -0.5, -30.0, 0.0, 1e-7])
    got = log1mexp(x)
    np.testing.assert_allclose(got[:3], [np.log(1e-12), np.log(1 - np.exp(-0.5)), -np.exp(-30.0)], rtol=1e-6)
    assert np.isneginf(got[3:]).all()
    assert finite_logprobs(got)[3] == -1.0e4
