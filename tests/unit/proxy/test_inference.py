"""Chat through the core: resolution, tenancy, validation, the vLLM request, rollouts, streaming."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import Message
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, RequestTooLarge, Unavailable
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest, ChatResult, Delta, Sampling, Started
from services.storage.client import StorageClient
from tests.unit.proxy.fakes import BASE, FakeVllm, add

MESSAGES = (Message("system", "Be brief."), Message("user", "Hi"))


def ask(model: str = "bot", **kwargs) -> ChatRequest:
    return ChatRequest(model=model, messages=kwargs.pop("messages", MESSAGES), **kwargs)


async def collect(core: ProxyCore, tenant: str, request: ChatRequest) -> list:
    return [event async for event in core.inference.chat_stream(tenant, request)]


async def test_chat_with_an_adapter_is_served_by_its_head_and_recorded(core: ProxyCore, vllm: FakeVllm) -> None:
    result = await core.inference.chat("acme", ask(sampling=Sampling(temperature=0.0, max_tokens=20)))

    assert (result.text, result.adapter, result.version, result.model) == ("Hello world!", "acme/bot", 1, "acme/bot")
    assert result.completion_id.startswith("cmpl-")
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (4, 4, "stop")
    sent = vllm.chats[-1]
    assert sent["model"] == "acme+bot+v1"
    assert sent["logprobs"] is True and sent["return_token_ids"] is True
    assert (sent["temperature"], sent["max_tokens"]) == (0.0, 20)
    rollout = await core.rollouts.get("acme", result.completion_id)
    assert rollout.prompt_ids == tuple(vllm.prompt_ids(sent["messages"]))
    assert rollout.response_ids == tuple(vllm.ids)
    assert rollout.sampled_logprobs == (-0.5, -1.5, -2.5, -3.5)
    assert (rollout.adapter, rollout.version, rollout.messages) == ("acme/bot", 1, MESSAGES)


async def test_full_name_and_base_model_resolve(core: ProxyCore, vllm: FakeVllm) -> None:
    full = await core.inference.chat("acme", ask("acme/bot"))
    base = await core.inference.chat("acme", ask(BASE))

    assert (full.adapter, full.version) == ("acme/bot", 1)
    assert (base.adapter, base.version, base.model) == ("", 0, BASE)
    assert vllm.chats[-1]["model"] == BASE
    assert (await core.rollouts.get("acme", base.completion_id)).adapter == ""


@pytest.mark.parametrize("model", ["beta/secret", "beta/nothing", "nothing", "acme/"])
async def test_unknown_or_foreign_adapters_are_not_found_alike(core: ProxyCore, vllm: FakeVllm, model: str) -> None:
    with pytest.raises(NotFound) as caught:
        await core.inference.chat("acme", ask(model))

    assert caught.value.message == f"adapter '{model}' not found"
    assert vllm.chats == [] and vllm.loaded == {}


async def test_adapter_without_a_version_is_refused(core: ProxyCore, storage: StorageClient) -> None:
    await add(storage, "acme/empty", versions=0)
    with pytest.raises(FailedPrecondition, match="no version yet"):
        await core.inference.chat("acme", ask("empty"))


@pytest.mark.parametrize(
    ("request_", "error", "text"),
    [
        (ask(messages=()), InvalidArgument, "at least one message"),
        (ask(messages=(Message("user", "x"),) * 9), RequestTooLarge, "9 messages, at most 8"),
        (ask(messages=(Message("user", "x" * 5000),)), RequestTooLarge, "5000 bytes"),
        (ask(messages=(Message("tool", "x"),)), InvalidArgument, "role 'tool'"),
        (ask(sampling=Sampling(max_tokens=513)), RequestTooLarge, "max_tokens 513 is over the limit of 512"),
        (ask(sampling=Sampling(temperature=3.0)), InvalidArgument, "temperature must be in"),
        (ask(sampling=Sampling(top_p=0.0)), InvalidArgument, "top_p must be in"),
        (ask(sampling=Sampling(stop=("",))), InvalidArgument, "stop takes"),
        (ask(model=" "), InvalidArgument, "'model' is required"),
        # Hole: a system-only chat was answered, and its feedback failed later ("no user message").
        (ask(messages=(Message("system", "Be brief."),)), InvalidArgument, "at least one user message"),
    ],
)
async def test_bad_requests_are_refused_before_anything_happens(
    core: ProxyCore, vllm: FakeVllm, settings, request_: ChatRequest, error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        await core.inference.chat("acme", request_)
    with pytest.raises(error, match=text):
        await collect(core, "acme", request_)

    assert vllm.chats == [] and vllm.loaded == {}
    assert await core.rollouts._store.list("rollouts/") == []


async def test_default_max_tokens_is_sent_when_none_asked(core: ProxyCore, vllm: FakeVllm, settings) -> None:
    await core.inference.chat("acme", ask())
    assert vllm.chats[-1]["max_tokens"] == settings.default_max_tokens
    assert "temperature" not in vllm.chats[-1] and "stop" not in vllm.chats[-1]


async def test_stream_relays_deltas_then_a_final_result_after_the_rollout(core: ProxyCore, vllm: FakeVllm) -> None:
    events = await collect(core, "acme", ask())

    started, *deltas, final = events
    assert isinstance(started, Started) and isinstance(final, ChatResult)
    assert deltas == [Delta("Hello"), Delta(" world"), Delta("!")]  # no logprobs asked for, none passed on
    assert final.text == "".join(d.text for d in deltas) == "Hello world!"
    assert final.logprobs is None
    assert (started.completion_id, started.version) == (final.completion_id, 1)
    assert vllm.chats[-1]["stream"] is True and vllm.chats[-1]["stream_options"] == {"include_usage": True}
    rollout = await core.rollouts.get("acme", final.completion_id)
    assert rollout.response_ids == tuple(vllm.ids) and len(rollout.sampled_logprobs) == 4


async def test_stream_and_plain_chat_record_the_same_tokens(core: ProxyCore) -> None:
    plain = await core.inference.chat("acme", ask())
    streamed = (await collect(core, "acme", ask()))[-1]

    a, b = [await core.rollouts.get("acme", r.completion_id) for r in (plain, streamed)]
    assert (a.prompt_ids, a.response_ids, a.sampled_logprobs, a.text) == (
        b.prompt_ids,
        b.response_ids,
        b.sampled_logprobs,
        b.text,
    )


async def test_a_stream_broken_midway_records_nothing_and_releases_its_adapter(core: ProxyCore, vllm: FakeVllm) -> None:
    vllm.break_stream_after = 2
    events = []
    with pytest.raises(Unavailable, match="vLLM unreachable"):
        async for event in core.inference.chat_stream("acme", ask()):
            events.append(event)

    assert events[1:] == [Delta("Hello"), Delta(" world")]
    assert await core.rollouts._store.list("rollouts/") == []
    assert all(entry.leases == 0 for entry in core.loras._entries.values())


async def test_thinking_is_stripped_from_the_text_but_kept_in_the_rollout(core: ProxyCore, vllm: FakeVllm) -> None:
    vllm.pieces = ["<th", "ink>let me see</thi", "nk>\n\nHi", "!"]
    vllm.ids = [10, 11, 12, 13, 2]
    request = ask(strip_thinking=True)

    plain = await core.inference.chat("acme", request)
    *_, deltas_final = events = await collect(core, "acme", request)

    assert plain.text == "Hi!"
    assert "".join(e.text for e in events if isinstance(e, Delta)) == deltas_final.text == "Hi!"
    rollout = await core.rollouts.get("acme", plain.completion_id)
    assert rollout.text == "<think>let me see</think>\n\nHi!"
    assert rollout.response_ids == (10, 11, 12, 13, 2)


async def test_vllm_down_is_unavailable(core: ProxyCore, vllm: FakeVllm) -> None:
    vllm.up = False
    with pytest.raises(Unavailable, match="vLLM unreachable"):
        await core.inference.chat("acme", ask(BASE))
    with pytest.raises(Unavailable):
        await collect(core, "acme", ask(BASE))


async def test_vllm_errors_keep_their_meaning(core: ProxyCore, settings) -> None:
    core.inference._limits = replace(core.inference._limits, max_tokens_cap=10_000)
    with pytest.raises(InvalidArgument, match="max_tokens too large") as caught:
        await core.inference.chat("acme", ask(sampling=Sampling(max_tokens=5000)))
    assert caught.value.param == "max_tokens"


async def test_an_adapter_vllm_lost_is_loaded_again(core: ProxyCore, vllm: FakeVllm) -> None:
    await core.inference.chat("acme", ask())
    vllm.loaded.clear()  # vLLM restarted behind the proxy's back

    result = await core.inference.chat("acme", ask())
    vllm.loaded.clear()
    streamed = (await collect(core, "acme", ask()))[-1]

    assert (result.version, streamed.version) == (1, 1)
    assert [c for c in vllm.lora_calls if c[0] == "load"] == [("load", "acme+bot+v1")] * 3
