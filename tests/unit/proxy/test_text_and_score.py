"""Chat logprobs, text completions and score on the proxy's real sockets (HTTP through the official
``openai`` client where it has a call for it, gRPC through the proxy's client), over the fake vLLM."""

from __future__ import annotations

import json

import pytest

from services.common.domain import Message
from services.common.errors import NotFound
from services.proxy.client import ProxyClient
from services.proxy.domain import ScoreRequest
from tests.unit.proxy.conftest import Proxy
from tests.unit.proxy.fakes import BASE, FakeTrainer, FakeVllm

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def sse(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


async def test_chat_logprobs_plain_and_streamed_are_vllms(proxy: Proxy, vllm: FakeVllm) -> None:
    client = proxy.openai("acme")
    plain = await client.chat.completions.create(model="bot", messages=MESSAGES, logprobs=True, top_logprobs=2)
    stream = await client.chat.completions.create(
        model="bot", messages=MESSAGES, logprobs=True, top_logprobs=2, stream=True
    )
    streamed = [
        item
        async for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for item in chunk.choices[0].logprobs.content
    ]
    await client.close()

    content = plain.choices[0].logprobs.content
    assert [(t.token, t.logprob) for t in content] == [
        ("Hello", -0.5),
        (" world", -1.5),
        ("!", -2.5),
        ("<|im_end|>", -3.5),
    ]
    assert content[0].bytes == list(b"Hello")
    assert [(t.token, t.logprob, t.bytes) for t in content[1].top_logprobs] == [
        (" world~0", -1.5, list(b" world~0")),
        (" world~1", -2.5, list(b" world~1")),
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]  # the end-of-turn token too
    assert vllm.chats[-1]["top_logprobs"] == 2


async def test_chat_without_logprobs_returns_none(proxy: Proxy) -> None:
    client = proxy.openai("acme")
    plain = await client.chat.completions.create(model="bot", messages=MESSAGES)
    await client.close()
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"top_k": 5}, "top_k"),
        ({"n": 2}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "strip_thinking": True}, "logprobs"),
    ],
)
async def test_unsupported_chat_fields_are_refused_by_name(
    proxy: Proxy, vllm: FakeVllm, extra: dict, param: str
) -> None:
    body = {"model": "bot", "messages": MESSAGES, **extra}
    response = await proxy.http.post("/v1/chat/completions", headers=proxy.auth("acme"), json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert vllm.chats == []


async def test_harmless_and_neutral_fields_are_accepted(proxy: Proxy) -> None:
    body = {
        "model": "bot",
        "messages": MESSAGES,
        "store": False,
        "metadata": {"a": "b"},
        "presence_penalty": 0,
        "tools": None,
    }
    response = await proxy.http.post("/v1/chat/completions", headers=proxy.auth("acme"), json=body)
    assert response.status_code == 200, response.text


async def test_text_completions_plain_and_streamed_with_legacy_logprobs(proxy: Proxy, vllm: FakeVllm) -> None:
    client = proxy.openai("acme")
    plain = await client.completions.create(model="bot", prompt="Once upon", max_tokens=8, logprobs=1)
    stream = await client.completions.create(
        model="bot", prompt="Once upon", max_tokens=8, logprobs=1, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    await client.close()

    choice = plain.choices[0]
    assert (choice.text, choice.finish_reason, plain.object) == ("Hello world!", "stop", "text_completion")
    assert choice.logprobs.tokens == ["Hello", " world", "!", ""]
    assert choice.logprobs.token_logprobs == [-0.25, -1.25, -2.25, -3.25]
    assert choice.logprobs.top_logprobs[1] == {" world": -1.25, " world~0": -1.0}
    assert choice.logprobs.text_offset == [0, 5, 11, 12]
    assert (plain.adapter, plain.adapter_version, plain.usage.completion_tokens) == ("acme/bot", 1, 4)
    texts = [c.choices[0] for c in chunks if c.choices]
    assert "".join(c.text for c in texts) == choice.text and texts[-1].finish_reason == "stop"
    assert [o for c in texts if c.logprobs for o in c.logprobs.text_offset] == choice.logprobs.text_offset
    assert chunks[-1].usage.completion_tokens == 4 and len({c.id for c in chunks}) == 1
    sent = vllm.completions[-1]
    assert (sent["prompt"], sent["model"], sent["logprobs"], sent["max_tokens"]) == ("Once upon", "acme+bot+v1", 1, 8)


async def test_a_text_completion_is_a_rollout_that_takes_feedback(
    proxy: Proxy, vllm: FakeVllm, trainer: FakeTrainer
) -> None:
    client = proxy.openai("acme")
    answer = await client.completions.create(model="bot", prompt="Once upon")
    await client.close()
    response = await proxy.http.post(
        "/v1/feedback", headers=proxy.auth("acme"), json={"completion_ids": [answer.id], "feedback": "Shorter."}
    )

    assert response.status_code == 200, response.text
    (sample,) = trainer.submitted[-1].samples
    assert sample.messages == (Message("user", "Once upon"),)  # the teacher's conversation
    assert sample.prompt_ids == (1, *map(ord, "Once upon"))  # the ids vLLM saw, no chat template
    assert sample.response_ids == tuple(vllm.ids) and len(sample.sampled_logprobs) == 4
    assert vllm.completions[-1]["logprobs"] == 0  # the rollout's logprobs even when none were asked for
    assert answer.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"echo": True}, "echo"),
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"n": 2}, "n"),
        ({"logprobs": 6}, "logprobs"),
        ({"max_tokens": 9999}, "max_tokens"),
        ({"model": "beta/secret"}, "model"),
    ],
)
async def test_bad_text_completions_are_refused_by_name(proxy: Proxy, vllm: FakeVllm, extra: dict, param: str) -> None:
    body = {"model": "bot", "prompt": "Once", **extra}
    response = await proxy.http.post("/v1/completions", headers=proxy.auth("acme"), json=body)

    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param
    assert vllm.completions == []


async def test_score_over_http_and_grpc_agree_and_match_the_contract(proxy: Proxy) -> None:
    body = {"model": "bot", "messages": MESSAGES, "completion": "Hey"}
    http = await proxy.http.post("/v1/score", headers=proxy.auth("acme"), json=body)
    async with ProxyClient.connect(proxy.target, token=proxy.keys["acme"]) as client:
        grpc_result = await client.inference.score(ScoreRequest("bot", tuple(Message(**m) for m in MESSAGES), "Hey"))

    assert http.status_code == 200, http.text
    result = http.json()
    assert set(result) == {
        "object", "model", "adapter", "adapter_version", "tokens", "token_ids", "logprobs", "logprob_sum",
        "prompt_tokens", "completion_tokens",
    }  # fmt: skip
    assert (result["object"], result["model"], result["adapter"], result["adapter_version"]) == (
        "score", "acme/bot", "acme/bot", 1,
    )  # fmt: skip
    assert result["token_ids"] == list(grpc_result.token_ids) == [*map(ord, "Hey"), 2]
    assert result["logprobs"] == pytest.approx(list(grpc_result.logprobs))
    assert result["logprob_sum"] == pytest.approx(grpc_result.logprob_sum)
    assert result["completion_tokens"] == grpc_result.completion_tokens == 4
    assert (grpc_result.adapter, grpc_result.version) == ("acme/bot", 1)


async def test_score_of_the_base_model_and_missing_versions(proxy: Proxy) -> None:
    auth = proxy.auth("acme")
    base = await proxy.http.post(
        "/v1/score", headers=auth, json={"model": BASE, "messages": MESSAGES, "completion": ""}
    )
    missing = await proxy.http.post(
        "/v1/score", headers=auth, json={"model": "bot", "messages": MESSAGES, "completion": "x", "version": 9}
    )
    foreign = await proxy.http.post(
        "/v1/score", headers=auth, json={"model": "beta/secret", "messages": MESSAGES, "completion": "x"}
    )
    unknown = await proxy.http.post(
        "/v1/score", headers=auth, json={"model": "bot", "messages": MESSAGES, "completion": "x", "temperature": 1}
    )

    assert base.status_code == 200 and base.json()["adapter"] is None and base.json()["adapter_version"] == 0
    assert base.json()["token_ids"] == [2]  # an empty completion: the end of turn alone
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "version"
    assert foreign.status_code == 404 and foreign.json()["error"]["message"] == "adapter 'beta/secret' not found"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "temperature"
    async with ProxyClient.connect(proxy.target, token=proxy.keys["acme"]) as client:
        with pytest.raises(NotFound, match="no version 9"):
            await client.inference.score(ScoreRequest("bot", (Message("user", "Hi"),), "x", version=9))


async def test_score_needs_a_key(proxy: Proxy) -> None:
    response = await proxy.http.post("/v1/score", json={"model": "bot", "messages": MESSAGES, "completion": "x"})
    assert response.status_code == 401
