"""Routing by adapter between two whole proxies on loopback (gRPC and HTTP), each with its own vLLM double,
over one real storage service and one rollout store: who serves, what passes through a forward, spill-over,
an owner that is gone, and the replicas' own service refusing everyone else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from claas.v1 import common_pb2, peer_pb2, peer_pb2_grpc
from pydantic import ValidationError

from services.common.domain import Message
from services.common.net import free_port
from services.common.rendezvous import ranked
from services.proxy import convert
from services.proxy.domain import (
    Busy,
    ChatRequest,
    ChatResult,
    CompletionRequest,
    Delta,
    Preload,
    Preloaded,
    Sampling,
    ScoreRequest,
    ScoreResult,
    Started,
    TokenLogprob,
    TopLogprob,
)
from services.proxy.settings import ProxySettings
from services.storage.client import StorageClient
from tests.unit.proxy.conftest import Proxy, proxy_settings, running_proxy
from tests.unit.proxy.fakes import BASE, FakeTrainer, FakeVllm, add

TOKEN = "replicas-token"
MESSAGES = [{"role": "user", "content": "Hi"}]


@dataclass
class Replica:
    addr: str
    proxy: Proxy
    vllm: FakeVllm


@dataclass
class Pair:
    """Two proxy replicas that know each other; ``by`` finds one by address."""

    replicas: list[Replica]
    members: tuple[str, ...]

    def by(self, addr: str) -> Replica:
        return next(r for r in self.replicas if r.addr == addr)

    def owner(self, adapter: str) -> Replica:
        return self.by(ranked(adapter, self.members)[0])

    def other(self, replica: Replica) -> Replica:
        return next(r for r in self.replicas if r is not replica)


def replica_settings(folder: Path, keys_file: Path, port: int, peers: str, **changes: object) -> ProxySettings:
    fields = proxy_settings(folder, keys_file).model_dump() | {
        "port": port,
        "adapter_dir": folder / f"adapters-{port}",  # each replica unpacks for its own vLLM
        "internal_token": TOKEN,
        "proxy_peers": peers,
        "proxy_peer_addr": f"127.0.0.1:{port}",
        "spill_in_flight": 1,
    }
    return ProxySettings(**(fields | changes))


@pytest.fixture
async def pair(
    tmp_path: Path, keys_file: Path, keys: dict[str, str], storage: StorageClient, trainer: FakeTrainer
) -> AsyncIterator[Pair]:
    ports = [free_port(), free_port()]
    members = tuple(f"127.0.0.1:{port}" for port in ports)
    async with AsyncExitStack() as stack:
        replicas = []
        for port in ports:
            vllm = FakeVllm()
            settings = replica_settings(tmp_path, keys_file, port, ",".join(members))
            proxy = await stack.enter_async_context(running_proxy(settings, storage, trainer, vllm, keys))
            replicas.append(Replica(f"127.0.0.1:{port}", proxy, vllm))
        yield Pair(replicas, members)


async def adapter_owned_by(storage: StorageClient, members: tuple[str, ...], addr: str) -> str:
    """A new adapter of acme (at version 1) whose owner is ``addr``."""
    for index in range(100):
        name = f"acme/bot{index}"
        if ranked(name, members)[0] == addr:
            await add(storage, name)
            return name
    raise AssertionError("no name owned by that replica")


def chats_with(vllm: FakeVllm, adapter: str) -> int:
    return sum(1 for body in vllm.chats if body["model"].startswith(adapter.replace("/", "+")))


async def chat(replica: Replica, model: str, **extra: object) -> dict:
    body = {"model": model, "messages": MESSAGES, "temperature": 0, **extra}
    response = await replica.proxy.http.post("/v1/chat/completions", headers=replica.proxy.auth("acme"), json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def stream_lines(replica: Replica, path: str, body: dict) -> list[dict]:
    lines = []
    async with replica.proxy.http.stream("POST", path, headers=replica.proxy.auth("acme"), json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                lines.append(json.loads(line.removeprefix("data: ")))
    return lines


def comparable(chunks: list[dict]) -> list:
    """What a client reads of a stream, without the ids and times that differ per call."""
    return [
        [(c.get("delta") or {}, c.get("text"), c.get("logprobs"), c.get("finish_reason")) for c in chunk["choices"]]
        for chunk in chunks
    ]


async def test_every_chat_of_an_adapter_is_served_by_its_owner_wherever_it_lands(pair: Pair) -> None:
    owner = pair.owner("acme/bot")
    other = pair.other(owner)

    answers = [await chat(replica, "bot") for replica in (other, owner, other)]

    assert {a["choices"][0]["message"]["content"] for a in answers} == {"Hello world!"}
    assert chats_with(owner.vllm, "acme/bot") == 3
    assert other.vllm.chats == [] and other.vllm.lora_calls == []
    assert [call for call, _ in owner.vllm.lora_calls] == ["load"]


async def test_base_model_chats_are_served_where_they_land(pair: Pair) -> None:
    first, second = pair.replicas
    await chat(first, BASE)
    await chat(second, BASE)

    assert len(first.vllm.chats) == len(second.vllm.chats) == 1


async def test_a_stream_through_a_forward_reads_like_one_served_directly(pair: Pair) -> None:
    owner = pair.owner("acme/bot")
    body = {"model": "bot", "messages": MESSAGES, "stream": True, "logprobs": True, "top_logprobs": 2}

    direct = await stream_lines(owner, "/v1/chat/completions", body)
    forwarded = await stream_lines(pair.other(owner), "/v1/chat/completions", body)

    assert comparable(forwarded) == comparable(direct)
    assert "".join((c["choices"][0]["delta"].get("content") or "") for c in forwarded if c["choices"]) == (
        "Hello world!"
    )
    assert any(c["choices"] and c["choices"][0].get("logprobs") for c in forwarded)


async def test_completions_and_scores_are_forwarded_and_answer_alike(pair: Pair) -> None:
    owner = pair.owner("acme/bot")
    other = pair.other(owner)
    text = {"model": "bot", "prompt": "Once", "max_tokens": 5, "logprobs": 2}
    score = {"model": "bot", "messages": MESSAGES, "completion": "Hello"}

    answers = []
    for replica in (owner, other):
        completion = await replica.proxy.http.post("/v1/completions", headers=replica.proxy.auth("acme"), json=text)
        scored = await replica.proxy.http.post("/v1/score", headers=replica.proxy.auth("acme"), json=score)
        assert completion.status_code == scored.status_code == 200, (completion.text, scored.text)
        answers.append((completion.json()["choices"], scored.json()["logprobs"], scored.json()["tokens"]))

    assert answers[0] == answers[1]
    assert other.vllm.completions == [] and other.vllm.lora_calls == []
    assert len(owner.vllm.completions) == 4


async def test_a_client_leaving_a_forwarded_stream_cancels_the_request_on_the_owner(pair: Pair) -> None:
    owner = pair.owner("acme/bot")
    owner.vllm.hold = asyncio.Event()  # generation stalls after "Hello" until the client is gone
    other = pair.other(owner)
    body = {"model": "bot", "messages": MESSAGES, "stream": True}

    async with other.proxy.http.stream(
        "POST", "/v1/chat/completions", headers=other.proxy.auth("acme"), json=body
    ) as response:
        async for line in response.aiter_lines():
            if "Hello" in line:
                break

    await asyncio.wait_for(owner.vllm.stream_cancelled.wait(), timeout=10)
    assert other.vllm.chats == []


async def test_feedback_on_a_completion_the_other_replica_served_trains_and_is_served_by_the_owner(
    pair: Pair, trainer: FakeTrainer
) -> None:
    owner = pair.owner("acme/bot")
    other = pair.other(owner)
    served = await chat(owner, "bot")

    for via in (other, owner):
        response = await via.proxy.http.post(
            "/v1/feedback",
            headers=via.proxy.auth("acme"),
            json={"completion_ids": [served["id"]], "feedback": f"Shorter ({via.addr}).", "wait": True},
        )
        assert response.status_code == 200, response.text
        assert response.json()["job"]["state"] == "JOB_STATE_SUCCEEDED"

    assert [s.adapter for s in trainer.submitted] == ["acme/bot", "acme/bot"]
    loaded = [name for call, name in owner.vllm.lora_calls if call == "load"]
    assert loaded[-1] == "acme+bot+v3"  # the feedback's wait had the owner load each new head
    assert other.vllm.lora_calls == []


async def test_a_busy_owner_spills_the_next_call_to_the_following_replica(pair: Pair) -> None:
    owner = pair.owner("acme/bot")
    other = pair.other(owner)
    owner.vllm.hold = asyncio.Event()
    body = {"model": "bot", "messages": MESSAGES, "stream": True}

    async with owner.proxy.http.stream(
        "POST", "/v1/chat/completions", headers=owner.proxy.auth("acme"), json=body
    ) as held:
        lines = held.aiter_lines()  # kept: a reader dropped mid-stream would end the call
        while "Hello" not in await anext(lines):
            pass  # one call of the adapter in flight on its owner now: the limit (spill_in_flight=1)
        via_other = await chat(other, "bot")
        via_owner = await chat(owner, "bot")
        owner.vllm.hold.set()

    assert via_other["choices"][0]["message"]["content"] == via_owner["choices"][0]["message"]["content"]
    assert chats_with(other.vllm, "acme/bot") == 2  # both spilled there, neither forwarded further
    assert chats_with(owner.vllm, "acme/bot") == 1


async def test_an_owner_that_is_gone_leaves_its_calls_to_the_replica_they_reach(
    tmp_path: Path, keys_file: Path, keys: dict[str, str], storage: StorageClient, trainer: FakeTrainer
) -> None:
    port, gone = free_port(), free_port()
    members = (f"127.0.0.1:{port}", f"127.0.0.1:{gone}")
    adapter = await adapter_owned_by(storage, members, members[1])
    vllm = FakeVllm()
    settings = replica_settings(tmp_path, keys_file, port, ",".join(members))
    async with running_proxy(settings, storage, trainer, vllm, keys) as proxy:
        replica = Replica(members[0], proxy, vllm)
        answers = [await chat(replica, adapter.removeprefix("acme/")) for _ in range(3)]

    assert [a["choices"][0]["message"]["content"] for a in answers] == ["Hello world!"] * 3
    assert chats_with(vllm, adapter) == 3


async def test_with_routing_off_every_replica_serves_what_reaches_it(
    tmp_path: Path, keys_file: Path, keys: dict[str, str], storage: StorageClient, trainer: FakeTrainer
) -> None:
    ports = [free_port(), free_port()]
    peers = ",".join(f"127.0.0.1:{port}" for port in ports)
    async with AsyncExitStack() as stack:
        replicas = []
        for port in ports:
            vllm = FakeVllm()
            settings = replica_settings(tmp_path, keys_file, port, peers, route_by_adapter=False)
            proxy = await stack.enter_async_context(running_proxy(settings, storage, trainer, vllm, keys))
            replicas.append(Replica(f"127.0.0.1:{port}", proxy, vllm))
        for replica in replicas:
            await chat(replica, "bot")

    assert [chats_with(r.vllm, "acme/bot") for r in replicas] == [1, 1]


def peer_request(**fields: object) -> peer_pb2.ProxyPeerServiceServeRequest:
    chat = peer_pb2.PeerChat(model="bot", messages=[common_pb2.ChatMessage(role="user", content="Hi")])
    return peer_pb2.ProxyPeerServiceServeRequest(**{"tenant": "acme", "chat": chat, **fields})


async def serve_code(replica: Replica, request: peer_pb2.ProxyPeerServiceServeRequest, token: str) -> grpc.StatusCode:
    stub = peer_pb2_grpc.ProxyPeerServiceStub(replica.proxy.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Serve(request, metadata=(("authorization", f"Bearer {token}"),)):
            pass
    return caught.value.code(), caught.value.details()


async def test_the_replicas_service_takes_only_the_internal_token_and_checks_what_it_is_sent(pair: Pair) -> None:
    replica = pair.replicas[0]

    assert await serve_code(replica, peer_request(), replica.proxy.keys["acme"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ProxyPeerService is for proxy replicas only (the internal token)",
    )
    assert (await serve_code(replica, peer_request(), "wrong"))[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = await serve_code(replica, peer_request(tenant="../x"), TOKEN)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid tenant name" in details
    empty = peer_pb2.ProxyPeerServiceServeRequest(tenant="acme")
    assert await serve_code(replica, empty, TOKEN) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "a forwarded call names no chat, completion, score or preload",
    )
    preload = peer_pb2.ProxyPeerServiceServeRequest(
        tenant="acme", preload=peer_pb2.PeerPreload(adapter="beta/secret", version=1, generation=1)
    )
    assert (await serve_code(replica, preload, TOKEN))[0] == grpc.StatusCode.NOT_FOUND
    # The internal token is no tenant: the public services still ask for an API key.
    response = await replica.proxy.http.post(
        "/v1/chat/completions", headers={"authorization": f"Bearer {TOKEN}"}, json={"model": "bot", "messages": []}
    )
    assert response.status_code == 401
    assert all(r.vllm.chats == [] for r in pair.replicas)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"internal_token": ""}, "CLAAS_PROXY_PEERS needs CLAAS_INTERNAL_TOKEN"),
        ({"proxy_peer_addr": ""}, "CLAAS_PROXY_PEER_ADDR is required with CLAAS_PROXY_PEERS"),
        ({"proxy_peers": "127.0.0.1:1,nowhere"}, "CLAAS_PROXY_PEERS: invalid peer address 'nowhere'"),
        ({"proxy_peers": "dns:///"}, "CLAAS_PROXY_PEERS: no peer address"),
    ],
)
def test_a_replica_set_that_cannot_route_is_refused_at_start(
    tmp_path: Path, keys_file: Path, changes: dict, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        replica_settings(tmp_path, keys_file, 5000, "127.0.0.1:5000,127.0.0.1:5001", **changes)


def test_every_field_of_a_forwarded_call_and_its_events_travels() -> None:

    sampling = Sampling(max_tokens=7, temperature=0.7, top_p=0.9, seed=3, stop=("\n",))
    calls = [
        ChatRequest("bot", (Message("user", "Hi"),), sampling, strip_thinking=True, top_logprobs=0),
        ChatRequest("bot", (Message("user", "Hi"),)),
        CompletionRequest("bot", "Once", sampling, logprobs=2),
        ScoreRequest("bot", (Message("user", "Hi"),), "Hello", version=2),
        Preload("acme/bot", 3, 2),
    ]
    for call in calls:
        proto = convert.peer_request_to_proto("acme", call, stream=True, may_refuse=True)
        assert convert.peer_request_from_proto(proto) == call
    logprobs = (TokenLogprob("Hé", -0.25, (72, 195, 169), (TopLogprob("Hé", -0.25, (72,)), TopLogprob("x", -2.0))),)
    events = [
        Busy(3),
        Started("cmpl-1", "acme/bot", "acme/bot", 2, 1796320000),
        Delta("Hé", logprobs),
        ChatResult("cmpl-1", "acme/bot", "Hé", "acme/bot", 2, 4, 1, "stop", 1796320000, logprobs=()),
        ChatResult("cmpl-1", "acme/bot", "Hé", "acme/bot", 2, 4, 1, "stop", 1796320000),
        ScoreResult("acme/bot", "acme/bot", 2, ("H",), (39,), (-0.5,), 4),
        Preloaded(),
    ]
    for event in events:
        assert convert.peer_event_from_proto(convert.peer_event_to_proto(event)) == event
