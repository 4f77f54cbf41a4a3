"""The proxy in front of the real vLLM, storage, trainer and teacher: what a user of the OpenAI client or
of the gRPC API sees, down to the token ids in the rollout and the versions vLLM serves."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc

from services.common.naming import vllm_lora_name
from tests.stack.conftest import ProxyStack

pytestmark = [pytest.mark.stack, pytest.mark.model]

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
async def adapter(stack_proxy: ProxyStack) -> str:
    """A fresh adapter of tenant acme at version 1 (rank 8); a new name each session, so a vLLM that outlives
    sessions never holds an older namesake."""
    name = f"bot-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=stack_proxy.http_url, timeout=120) as http:
        response = await http.post(
            "/v1/adapters", headers=stack_proxy.bearer("acme"), json={"name": name, "lora": {"rank": 8, "alpha": 16}}
        )
    assert response.status_code == 200, response.text
    assert response.json()["adapter"]["head_version"] == 1
    return name


@pytest.fixture
async def acme(stack_proxy: ProxyStack) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{stack_proxy.http_url}/v1", api_key=stack_proxy.keys["acme"], max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def http(stack_proxy: ProxyStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack_proxy.http_url, timeout=300) as client:
        yield client


@pytest.fixture
async def channel(stack_proxy: ProxyStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack_proxy.grpc_addr) as channel:
        yield channel


async def vllm_models(stack: ProxyStack) -> set[str]:
    async with stack.vllm_client(timeout=30) as client:
        return {card["id"] for card in (await client.get("/v1/models")).json()["data"]}


async def test_openai_client_chats_with_an_adapter_plain_and_streamed(acme: openai.AsyncOpenAI, adapter: str) -> None:
    plain = await acme.chat.completions.create(model=adapter, messages=MESSAGES, **GREEDY)
    stream = await acme.chat.completions.create(
        model=adapter, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = [chunk async for chunk in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert plain.choices[0].message.content
    assert streamed == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # relayed token by token
    assert (plain.adapter, plain.adapter_version) == (f"acme/{adapter}", 1)
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert f"acme/{adapter}" in {m.id for m in (await acme.models.list()).data}


async def test_the_rollout_holds_exactly_what_vllm_sampled(stack_proxy: ProxyStack, acme, adapter: str) -> None:
    answer = await acme.chat.completions.create(model=adapter, messages=MESSAGES, **GREEDY)
    rollout = await stack_proxy.server.core.rollouts.get("acme", answer.id)

    async with stack_proxy.vllm_client(timeout=120) as client:
        direct = await client.post(
            "/v1/chat/completions",
            json={
                "model": vllm_lora_name(f"acme/{adapter}", 1),
                "messages": MESSAGES,
                "logprobs": True,
                "return_token_ids": True,
                **GREEDY,
            },
        )
    body = direct.json()
    assert rollout.prompt_ids == tuple(body["prompt_token_ids"])
    assert rollout.response_ids == tuple(body["choices"][0]["token_ids"])
    assert rollout.sampled_logprobs == pytest.approx(
        [t["logprob"] for t in body["choices"][0]["logprobs"]["content"]], abs=1e-4
    )
    assert rollout.text == body["choices"][0]["message"]["content"] == answer.choices[0].message.content
    assert (rollout.adapter, rollout.version) == (f"acme/{adapter}", 1)


async def test_feedback_makes_version_2_which_serves_next_and_rollback_returns_to_1(
    stack_proxy: ProxyStack, acme, http: httpx.AsyncClient, adapter: str
) -> None:
    full = f"acme/{adapter}"
    answer = await acme.chat.completions.create(model=adapter, messages=MESSAGES, temperature=0, max_tokens=6)

    feedback = {
        "completion_ids": [answer.id],
        "feedback": "Answer in one word.",
        "config": {"steps": 1},
        "wait": True,
    }
    response = await http.post("/v1/feedback", headers=stack_proxy.bearer("acme"), json=feedback)
    job = response.json()["job"]
    assert response.status_code == 200, response.text
    assert (job["state"], job["base_version"], job["new_version"]) == ("JOB_STATE_SUCCEEDED", 1, 2)

    after = await acme.chat.completions.create(model=adapter, messages=MESSAGES, **GREEDY)
    assert after.adapter_version == 2
    served = await vllm_models(stack_proxy)
    assert vllm_lora_name(full, 2) in served and vllm_lora_name(full, 1) not in served

    rolled = await http.post(
        f"/v1/adapters/{adapter}/rollback", headers=stack_proxy.bearer("acme"), json={"version": 1}
    )
    assert rolled.json()["adapter"]["head_version"] == 1
    again = await acme.chat.completions.create(model=adapter, messages=MESSAGES, **GREEDY)
    assert again.adapter_version == 1
    served = await vllm_models(stack_proxy)
    assert vllm_lora_name(full, 1) in served and vllm_lora_name(full, 2) not in served


async def test_grpc_chat_and_stream_agree(stack_proxy: ProxyStack, channel: grpc.aio.Channel, adapter: str) -> None:
    stub = proxy_pb2_grpc.InferenceServiceStub(channel)
    metadata = (("authorization", f"Bearer {stack_proxy.keys['acme']}"),)
    request = {
        "model": adapter,
        "messages": [common_pb2.ChatMessage(**m) for m in MESSAGES],
        "sampling": proxy_pb2.SamplingParams(max_tokens=12, temperature=0),
    }
    plain = await stub.Chat(proxy_pb2.ChatRequest(**request), metadata=metadata)
    events = [e async for e in stub.ChatStream(proxy_pb2.ChatStreamRequest(**request), metadata=metadata)]

    assert "".join(e.delta for e in events[:-1]) == events[-1].final.text == plain.text
    assert plain.adapter == f"acme/{adapter}" and plain.version >= 1


async def test_another_tenant_reaches_nothing_of_acme(
    stack_proxy: ProxyStack, acme, http: httpx.AsyncClient, channel: grpc.aio.Channel, adapter: str
) -> None:
    answer = await acme.chat.completions.create(model=adapter, messages=MESSAGES, temperature=0, max_tokens=4)
    beta = stack_proxy.bearer("beta")
    full = f"acme/{adapter}"

    chat = await http.post("/v1/chat/completions", headers=beta, json={"model": full, "messages": MESSAGES})
    listed = await http.get("/v1/models", headers=beta)
    feedback = await http.post("/v1/feedback", headers=beta, json={"completion_ids": [answer.id], "feedback": "x"})
    export = await http.get(f"/v1/adapters/{full}/export", headers=beta)

    assert chat.status_code == 404 and chat.json()["error"]["message"] == f"adapter '{full}' not found"
    assert full not in {m["id"] for m in listed.json()["data"]}
    assert feedback.status_code == 404 and feedback.json()["error"]["message"] == f"completion '{answer.id}' not found"
    assert export.status_code == 404
    stub = proxy_pb2_grpc.AdaptersServiceStub(channel)
    beta_meta = (("authorization", f"Bearer {stack_proxy.keys['beta']}"),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Export(proxy_pb2.AdaptersServiceExportRequest(name=full), metadata=beta_meta):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_no_key_is_unauthenticated(stack_proxy: ProxyStack, http: httpx.AsyncClient, channel) -> None:
    response = await http.post("/v1/chat/completions", json={"model": "x", "messages": MESSAGES})
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await proxy_pb2_grpc.AdaptersServiceStub(channel).List(proxy_pb2.AdaptersServiceListRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_inputs_get_clear_codes_and_change_nothing(
    stack_proxy: ProxyStack, acme, http: httpx.AsyncClient, adapter: str
) -> None:
    auth = stack_proxy.bearer("acme")
    before = (await http.get(f"/v1/adapters/{adapter}/versions", headers=auth)).json()["versions"]
    answer = await acme.chat.completions.create(model=adapter, messages=MESSAGES, temperature=0, max_tokens=4)
    unknown_id = answer.id[:-4] + "0000"
    cases = [
        (http.post("/v1/feedback", headers=auth, json={"completion_ids": [unknown_id], "feedback": "x"}), 404),
        (http.post("/v1/feedback", headers=auth, json={"completion_ids": [answer.id], "feedback": "  "}), 400),
        (http.post("/v1/chat/completions", headers=auth, json={"model": "no-such", "messages": MESSAGES}), 404),
        (http.post("/v1/chat/completions", headers={**auth, "content-type": "application/json"}, content=b"{"), 400),
        (http.post("/v1/chat/completions", headers=auth, json={"model": adapter, "messages": MESSAGES * 200}), 413),
        (http.post("/v1/chat/completions", headers=auth, content=b"x" * (2 << 20)), 413),
    ]
    for call, status in cases:
        response = await call
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    after = (await http.get(f"/v1/adapters/{adapter}/versions", headers=auth)).json()["versions"]
    assert after == before
