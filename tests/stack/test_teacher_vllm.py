"""The vllm teacher backend against a real vLLM (CPU build) serving the packaged model, checked against
the exact hf backend: same model in fp32, so the two must agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common.domain import Message
from services.common.errors import InvalidArgument
from services.teacher.adapters import AdapterFiles
from services.teacher.core import Teacher
from services.teacher.domain import AdapterRef, ScoreItem, ScoreRequest, TeacherMode
from services.teacher.hf_backend import HfBackend
from services.teacher.settings import TeacherSettings
from services.teacher.vllm_backend import VllmBackend
from tests.model.teacher.lora import make_test_lora, storage_serving

pytestmark = [pytest.mark.stack, pytest.mark.model]

K = 20
CONVERSATION = (
    Message("system", "You are a helpful assistant."),
    Message("user", "What is the capital of France?"),
    Message("assistant", "The capital of France is Paris."),
    Message("user", "Tell me one fact about it."),
)
ANSWER = "Paris is home to the Eiffel Tower, which was built in 1889 for the World's Fair."


@pytest.fixture(scope="module")
async def teachers(model_dir: Path, vllm_url: str, vllm_api_key: str, tmp_path_factory: pytest.TempPathFactory):
    """(hf teacher, vllm teacher) sharing one stand-in storage that serves a test LoRA."""
    folder = tmp_path_factory.mktemp("lora")
    make_test_lora(model_dir, folder)
    adapters = AdapterFiles(lambda: storage_serving(folder, head=1))
    common = {"base_model": str(model_dir), "vllm_model": "smollm2-135m", "vllm_url": vllm_url}
    common |= {"vllm_api_key": vllm_api_key}
    hf = Teacher(HfBackend(TeacherSettings(backend="hf", **common), adapters), adapters=adapters)
    vllm_settings = TeacherSettings(
        backend="vllm", vllm_max_logprobs=K, adapter_dir=tmp_path_factory.mktemp("adapters"), **common
    )
    vllm = Teacher(VllmBackend(vllm_settings, adapters), adapters=adapters)
    await hf.start()
    await vllm.start()
    yield hf, vllm
    await vllm.close()
    await hf.close()


@pytest.fixture(scope="module")
def answer(model_dir: Path) -> tuple[int, ...]:
    """The answer's token ids, end-of-turn included."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return (*tokenizer.encode(ANSWER, add_special_tokens=False), tokenizer.convert_tokens_to_ids("<|im_end|>"))


def agreement(hf, vllm) -> tuple[float, float]:
    """(share of positions with the same top-K id set, largest sampled-logprob gap in nats)."""
    same = np.mean([set(a) == set(b) for a, b in zip(hf.ids.tolist(), vllm.ids.tolist(), strict=True)])
    return float(same), float(np.abs(hf.sampled_logprobs - vllm.sampled_logprobs).max())


async def test_hf_and_vllm_backends_agree(teachers, answer):
    hf, vllm = teachers
    # The vllm backend scores each text on its own top-K (it cannot gather the neutral at the feedback's
    # ids), so the neutral follow-up is compared as an item of its own.
    items = (
        ScoreItem(CONVERSATION, "Keep it under ten words.", answer),
        ScoreItem(CONVERSATION, "What is 27*4?", answer),
    )
    a, a_neutral = await hf.score(ScoreRequest(items=items, top_k=K))
    b, b_neutral = await vllm.score(ScoreRequest(items=items, top_k=K))
    assert a.teacher_prompt == b.teacher_prompt
    for label, x, y in (("feedback", a.teacher, b.teacher), ("neutral", a_neutral.teacher, b_neutral.teacher)):
        same, gap = agreement(x, y)
        tail_gap = float(np.abs(np.exp(x.tail_logprobs) - np.exp(y.tail_logprobs)).max())
        print(
            f"{label}: same top-{K} ids at {same:.1%} of {len(x.ids)} positions, sampled gap {gap:.1e} nats, "
            f"tail mass gap {tail_gap:.1e}"
        )
        assert same >= 0.95
        assert gap <= 0.05
    total = np.exp(b.teacher.logprobs.astype(np.float64)).sum(1) + np.exp(b.teacher.tail_logprobs)
    np.testing.assert_allclose(total, 1.0, atol=1e-4)


async def test_self_mode_on_vllm_serves_the_adapter_version_like_hf(teachers, answer):
    hf, vllm = teachers
    item = ScoreItem(CONVERSATION, "", answer)
    request = ScoreRequest(items=(item,), top_k=5, mode=TeacherMode.SELF, adapter=AdapterRef("teacher-test/lora", 0))
    [a] = await hf.score(request)
    [b] = await vllm.score(request)
    [base] = await vllm.score(ScoreRequest(items=(item,), top_k=5))
    gap = float(np.abs(a.teacher.sampled_logprobs - b.teacher.sampled_logprobs).max())
    shift = float(np.abs(b.teacher.sampled_logprobs - base.teacher.sampled_logprobs).max())
    print(f"self mode: hf vs vllm gap {gap:.1e} nats; the adapter moves vLLM's log-probs by up to {shift:.3f}")
    assert gap <= 0.05
    assert shift > 0.05, "vLLM must have scored with the adapter, not the base model"


async def test_top_k_above_the_servers_cap_is_refused_before_asking_vllm(teachers):
    _, vllm = teachers
    item = ScoreItem(CONVERSATION, "f", (1, 2))
    with pytest.raises(InvalidArgument, match=r"--max-logprobs cap is 20 \(CLAAS_VLLM_MAX_LOGPROBS\)"):
        await vllm.score(ScoreRequest(items=(item,), top_k=K + 1))
