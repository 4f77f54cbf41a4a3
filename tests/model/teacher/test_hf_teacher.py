"""The hf teacher on the real packaged model: exact numbers against plain forward passes, the hindsight
prompt, the adapter modes, and whether the teacher reads the feedback at all (DESIGN.md §5.1)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from services.common.domain import Message
from services.teacher.domain import AdapterRef, ScoreItem, ScoreRequest, TeacherMode
from tests.model.teacher.conftest import ADAPTER_HEAD

pytestmark = pytest.mark.model

SYSTEM = Message("system", "You are a helpful assistant.")
CONVERSATION = (
    SYSTEM,
    Message("user", "Hi!"),
    Message("assistant", "Hello! How can I help you today?"),
    Message("user", "Who are you?"),
)
FEEDBACK = "Your name is Kuro, always introduce yourself as Kuro."
NEUTRAL = "By the way, what is 27*4?"


def logprobs_of(model, ids: list[int]) -> torch.Tensor:
    """Full log-softmax rows [L, V] of one sequence, by a plain forward pass."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def odd_response(tokenizer) -> list[int]:
    """An answer split into tokens the tokenizer would not choose itself, ending with end-of-turn."""
    pieces = ["I", " am", " S", "mol", "LM", ",", " an", " A", "I", " assistant", "."]
    ids = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]
    ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert ids != tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False)
    return ids


def positions(model, prompt: str, tokenizer, response: list[int]) -> torch.Tensor:
    """Reference log-softmax rows [T, V] predicting each response token after ``prompt``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = logprobs_of(model, prompt_ids + response)
    return rows[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(response)]


async def test_prompt_holds_the_conversation_with_the_feedback_after_the_last_user_turn(hf_teacher, reference):
    tokenizer = reference[0]
    response = odd_response(tokenizer)
    [result] = await hf_teacher.score(
        ScoreRequest(items=(ScoreItem(CONVERSATION, FEEDBACK, tuple(response)),), top_k=5)
    )
    prompt = result.teacher_prompt
    cursor = 0
    for message in CONVERSATION:
        found = prompt.find(message.content, cursor)
        assert found >= 0, f"{message.content!r} missing or out of order in {prompt!r}"
        cursor = found + len(message.content)
    feedback_at = prompt.find(FEEDBACK)
    assert feedback_at >= cursor, "the feedback must follow the last user message"
    assert "<|im_start|>assistant" not in prompt[cursor:feedback_at]
    assert prompt.endswith(FEEDBACK + "<|im_end|>\n<|im_start|>assistant\n")
    assert result.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


async def test_scores_equal_a_plain_forward_pass_of_the_given_ids(hf_teacher, reference):
    tokenizer, model, _ = reference
    response = odd_response(tokenizer)
    [result] = await hf_teacher.score(
        ScoreRequest(items=(ScoreItem(CONVERSATION, FEEDBACK, tuple(response)),), top_k=20)
    )
    with model.disable_adapter():
        rows = positions(model, result.teacher_prompt, tokenizer, response)
    got = result.teacher
    expected_sampled = rows.gather(1, torch.tensor(response)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(got.sampled_logprobs, expected_sampled, atol=1e-4)
    top_values, top_ids = rows.topk(20, dim=-1)
    np.testing.assert_allclose(got.logprobs, top_values.numpy(), atol=1e-4)
    assert (got.ids == top_ids.numpy()).mean() > 0.99  # exact ties may swap
    total = np.exp(got.logprobs.astype(np.float64)).sum(1) + np.exp(got.tail_logprobs.astype(np.float64))
    np.testing.assert_allclose(total, 1.0, atol=1e-4)


async def test_a_batch_scores_like_its_items_one_by_one(hf_teacher, reference):
    tokenizer = reference[0]
    short = tuple(tokenizer.encode("Kuro.", add_special_tokens=False))
    items = (
        ScoreItem(CONVERSATION, FEEDBACK, tuple(odd_response(tokenizer)), neutral_followup=NEUTRAL),
        ScoreItem(CONVERSATION[:2], "Be brief.", short),
        ScoreItem(CONVERSATION, "", short),
    )
    together = await hf_teacher.score(ScoreRequest(items=items, top_k=3))
    for item, batched in zip(items, together, strict=True):
        [alone] = await hf_teacher.score(ScoreRequest(items=(item,), top_k=3))
        np.testing.assert_allclose(batched.teacher.sampled_logprobs, alone.teacher.sampled_logprobs, atol=1e-4)
        np.testing.assert_allclose(batched.teacher.tail_logprobs, alone.teacher.tail_logprobs, atol=1e-4)
    assert together[0].neutral is not None
    assert (together[0].neutral.ids == together[0].teacher.ids).all(), "the neutral must share the teacher's support"
    assert not np.allclose(together[0].neutral.sampled_logprobs, together[0].teacher.sampled_logprobs, atol=1e-3)


async def test_support_ids_return_the_teachers_logprobs_at_those_ids(hf_teacher, reference):
    tokenizer, model, _ = reference
    response = tokenizer.encode("I am Kuro.", add_special_tokens=False)
    support = np.random.default_rng(0).integers(0, 49152, size=(len(response), 6))
    support[:, 0] = response  # the sampled token inside the support, as a student's top-K often has it
    item = ScoreItem(CONVERSATION, FEEDBACK, tuple(response), tuple(support.ravel().tolist()), support_k=6)
    [result] = await hf_teacher.score(ScoreRequest(items=(item,), top_k=20))
    with model.disable_adapter():
        rows = positions(model, result.teacher_prompt, tokenizer, response)
    np.testing.assert_array_equal(result.teacher.ids, support)
    np.testing.assert_allclose(result.teacher.logprobs, rows.gather(1, torch.from_numpy(support)).numpy(), atol=1e-4)
    total = np.exp(result.teacher.logprobs.astype(np.float64)).sum(1) + np.exp(result.teacher.tail_logprobs)
    np.testing.assert_allclose(total, 1.0, atol=1e-4)


async def test_self_and_trust_region_teachers_use_the_adapter(hf_teacher, reference, storage):
    tokenizer, model, _ = reference
    response = tuple(odd_response(tokenizer))
    item = ScoreItem(CONVERSATION, FEEDBACK, response)
    head = AdapterRef("acme/bot", 0)

    async def sampled(mode: TeacherMode, mu: float = 0.0) -> np.ndarray:
        request = ScoreRequest(items=(item,), top_k=5, mode=mode, adapter=head, mu=mu)
        [result] = await hf_teacher.score(request)
        return result.teacher.sampled_logprobs

    base, tuned = await sampled(TeacherMode.BASE), await sampled(TeacherMode.SELF)
    assert storage.downloads[-1][:2] == ("acme/bot", ADAPTER_HEAD)
    [plain] = await hf_teacher.score(ScoreRequest(items=(item,), top_k=1))
    with model.disable_adapter():
        base_rows = positions(model, plain.teacher_prompt, tokenizer, list(response))
    adapter_rows = positions(model, plain.teacher_prompt, tokenizer, list(response))
    targets = torch.tensor(response)[:, None]
    np.testing.assert_allclose(base, base_rows.gather(1, targets)[:, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(tuned, adapter_rows.gather(1, targets)[:, 0].numpy(), atol=1e-4)
    assert np.abs(tuned - base).max() > 0.05, "the test adapter must change the distribution"

    np.testing.assert_allclose(await sampled(TeacherMode.TRUST_REGION, 0.0), base, atol=1e-4)
    np.testing.assert_allclose(await sampled(TeacherMode.TRUST_REGION, 1.0), tuned, atol=1e-4)
    # Log-softmax is shift-invariant, so blending log-probs equals blending logits.
    blend = torch.log_softmax(0.7 * base_rows + 0.3 * adapter_rows, dim=-1).gather(1, targets)[:, 0].numpy()
    np.testing.assert_allclose(await sampled(TeacherMode.TRUST_REGION, 0.3), blend, atol=1e-4)
    assert len(storage.downloads) == 1, "the adapter version is cached after its first use"


async def test_the_teacher_reads_the_feedback(hf_teacher, reference):
    """p(" K") right after the answer's self-introduction: the feedback must raise it, an unrelated
    follow-up must not (numbers measured at 135M in DESIGN.md §5.1)."""
    tokenizer = reference[0]
    conversation = (SYSTEM, Message("user", "Who are you?"))
    k_id = tokenizer.encode(" K", add_special_tokens=False)
    assert len(k_id) == 1
    probabilities: dict[str, list[float]] = {}
    for label, feedback in (("student", ""), ("teacher", FEEDBACK), ("neutral", NEUTRAL)):
        items = tuple(
            ScoreItem(conversation, feedback, tuple(tokenizer.encode(prefix, add_special_tokens=False) + k_id))
            for prefix in ("I'm", "Hi, I'm", "My name is")
        )
        results = await hf_teacher.score(ScoreRequest(items=items, top_k=1))
        probabilities[label] = [float(np.exp(r.teacher.sampled_logprobs[-1])) for r in results]
    print("p(' K') after I'm / Hi, I'm / My name is:", {k: [round(p, 3) for p in v] for k, v in probabilities.items()})
    assert min(probabilities["teacher"]) >= 0.30
    assert max(probabilities["student"]) <= 0.05
    assert max(probabilities["neutral"]) <= 0.10


async def test_sdpo_template_also_reads_the_feedback(hf_teacher, reference):
    tokenizer = reference[0]
    conversation = (SYSTEM, Message("user", "Who are you?"))
    response = tuple(tokenizer.encode("My name is K", add_special_tokens=False))
    item = ScoreItem(conversation, FEEDBACK, response)
    [sdpo] = await hf_teacher.score(ScoreRequest(items=(item,), top_k=1, template="sdpo"))
    [plain] = await hf_teacher.score(ScoreRequest(items=(dataclasses.replace(item, feedback=""),), top_k=1))
    assert "earlier attempt" in sdpo.teacher_prompt
    assert sdpo.teacher.sampled_logprobs[-1] > plain.teacher.sampled_logprobs[-1] + 1.0
