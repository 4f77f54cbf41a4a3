"""``ProxyClient``: the proxy's public gRPC API as callers use it, domain types in and out, our errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.domain import LoraSpec, Message
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from services.proxy.client import ProxyClient
from services.proxy.domain import ChatRequest, ChatResult, Sampling
from services.storage.client import StorageClient
from services.trainer.domain import JobState
from tests.unit.proxy.conftest import Proxy
from tests.unit.proxy.fakes import FakeTrainer, commit

ASK = ChatRequest("bot", (Message("system", "Be brief."), Message("user", "Hi")), Sampling(max_tokens=16))


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[ProxyClient]:
    async with ProxyClient.connect(proxy.target, token=proxy.keys["acme"], timeout_s=10) as client:
        yield client


async def test_chat_and_stream(client: ProxyClient) -> None:
    plain = await client.inference.chat(ASK)
    events = [event async for event in client.inference.chat_stream(ASK)]

    assert (plain.text, plain.adapter, plain.version, plain.model) == ("Hello world!", "acme/bot", 1, "acme/bot")
    assert (plain.prompt_tokens, plain.completion_tokens, plain.finish_reason) == (4, 4, "stop")
    *deltas, final = events
    assert deltas == ["Hello", " world", "!"]
    assert isinstance(final, ChatResult) and final.text == plain.text and final.completion_id != plain.completion_id


async def test_feedback_submit_wait_and_watch(client: ProxyClient, trainer: FakeTrainer) -> None:
    completion = (await client.inference.chat(ASK)).completion_id

    job = await client.feedback.submit([completion], "Shorter.", {"steps": 1, "learning_rate": 1e-4}, wait=True)
    watched = [view async for view in client.feedback.watch(job.job_id)]

    assert (job.state, job.new_version, job.adapter) == (JobState.SUCCEEDED, 2, "acme/bot")
    assert trainer.submitted[-1].config == {"steps": 1, "learning_rate": 1e-4}  # as HTTP would pass it
    assert trainer.submitted[-1].samples[0].completion_id == completion
    assert watched[-1].state is JobState.SUCCEEDED
    assert (await client.inference.chat(ASK)).version == 2
    with pytest.raises(InvalidArgument) as caught:
        await client.feedback.submit([completion], "Shorter.", {"nope": 1})
    assert caught.value.param == "config"


async def test_adapters_round_trip(client: ProxyClient, storage: StorageClient) -> None:
    created = await client.adapters.create("helper", LoraSpec(rank=4))
    await commit(storage, "acme/helper")

    assert (created.name, created.head_version, created.lora.rank) == ("acme/helper", 1, 4)
    assert [a.name for a in await client.adapters.list()] == ["acme/bot", "acme/helper"]
    assert (await client.adapters.get("acme/helper")).head_version == 2
    versions = await client.adapters.versions("helper")
    assert [(v.version, v.parent_version) for v in versions] == [(1, 0), (2, 1)]
    header, files = await client.adapters.export("helper", 2)
    assert sorted(files) == sorted(f.path for f in header.files) == ["adapter_config.json", "adapter_model.safetensors"]
    assert files["adapter_model.safetensors"] == b"v2"
    assert (await client.adapters.rollback("helper", 1)).head_version == 1
    assert await client.adapters.delete("helper") is True
    assert await client.adapters.delete("helper") is False


async def test_failures_are_our_errors(client: ProxyClient, proxy: Proxy) -> None:
    with pytest.raises(NotFound, match="adapter 'beta/secret' not found"):
        await client.adapters.get("beta/secret")
    with pytest.raises(NotFound):
        await client.inference.chat(ChatRequest("beta/secret", ASK.messages))
    async with ProxyClient.connect(proxy.target, token="nope") as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.adapters.list()
