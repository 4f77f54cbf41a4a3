"""Score through the core: vLLM's tokenisation split into prompt and completion, versions, tenancy, limits,
and the engine gate that keeps a prompt_logprobs request alone in vLLM."""

from __future__ import annotations

import asyncio

import pytest

from services.common.domain import Message
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, RequestTooLarge
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest, CompletionRequest, ScoreRequest
from services.proxy.gate import EngineGate
from services.storage.client import StorageClient
from tests.unit.proxy.fakes import BASE, FakeVllm, add, commit

MESSAGES = (Message("system", "Be brief."), Message("user", "Hi"))


def score(model: str = "bot", completion: str = "Hey", **kwargs) -> ScoreRequest:
    return ScoreRequest(model=model, messages=kwargs.pop("messages", MESSAGES), completion=completion, **kwargs)


def expected(vllm: FakeVllm, model: str, completion: str) -> tuple[list[int], list[float]]:
    """The toy template's completion ids (characters, end of turn) and the fake model's log p of each."""
    messages = [{"role": m.role, "content": m.content} for m in MESSAGES]
    start = len(vllm.template(messages, True))
    ids = [*map(ord, completion), 2]
    return ids, [vllm.prompt_logprob(model, start + i, t) for i, t in enumerate(ids)]


async def test_score_of_the_head_is_vllms_prompt_logprobs_of_the_templates_completion_tokens(
    core: ProxyCore, vllm: FakeVllm
) -> None:
    result = await core.scoring.score("acme", score())

    ids, logprobs = expected(vllm, "acme+bot+v1", "Hey")
    assert (result.model, result.adapter, result.version) == ("acme/bot", "acme/bot", 1)
    assert result.token_ids == tuple(ids) and result.logprobs == pytest.approx(logprobs)
    assert result.tokens == ("H", "e", "y", "\x02")
    assert result.logprob_sum == pytest.approx(sum(logprobs))
    first, second = vllm.tokenized
    assert (result.prompt_tokens, result.completion_tokens) == (len(vllm.template(first["messages"], True)), 4)
    assert first["add_generation_prompt"] is True and second["add_generation_prompt"] is False
    assert second["messages"][-1] == {"role": "assistant", "content": "Hey"}
    sent = vllm.completions[-1]
    assert sent["model"] == "acme+bot+v1" and sent["prompt_logprobs"] == 0
    assert sent["prompt"][: result.prompt_tokens] == vllm.template(first["messages"], True)
    assert await core.rollouts._store.list("rollouts/") == []  # a read: nothing recorded


async def test_the_base_model_scores_differently_and_takes_no_version(core: ProxyCore, vllm: FakeVllm) -> None:
    base = await core.scoring.score("acme", score(BASE))
    adapter = await core.scoring.score("acme", score("bot"))

    assert (base.adapter, base.version, base.model) == ("", 0, BASE)
    assert base.token_ids == adapter.token_ids and base.logprobs != adapter.logprobs
    with pytest.raises(InvalidArgument) as caught:
        await core.scoring.score("acme", score(BASE, version=1))
    assert caught.value.param == "version"


async def test_an_older_version_is_scored_by_its_own_weights_and_the_head_stays_served(
    core: ProxyCore, vllm: FakeVllm, storage: StorageClient
) -> None:
    await commit(storage, "acme/bot")
    await core.inference.chat("acme", ChatRequest("bot", MESSAGES))  # v2 is served now

    old = await core.scoring.score("acme", score(version=1))
    head = await core.scoring.score("acme", score(version=2))

    assert (old.version, head.version) == (1, 2)
    assert [c["model"] for c in vllm.completions] == ["acme+bot+v1", "acme+bot+v2"]
    assert core.loras.loaded() == ["acme+bot+v2"]  # v1 was loaded for its score only
    assert (await core.inference.chat("acme", ChatRequest("bot", MESSAGES))).version == 2


@pytest.mark.parametrize(
    ("request_", "error", "param", "text"),
    [
        (score(version=7), NotFound, "version", "adapter 'bot' has no version 7"),
        (score("beta/secret"), NotFound, "model", "adapter 'beta/secret' not found"),
        (score("nothing"), NotFound, "model", "adapter 'nothing' not found"),
        (score(version=-1), InvalidArgument, "version", "version must be >= 0"),
        (score(""), InvalidArgument, "model", "'model' is required"),
        (score(messages=()), InvalidArgument, "messages", "at least one message"),
        (score(messages=(Message("tool", "x"),)), InvalidArgument, "messages", "role 'tool'"),
        (score(completion="x" * 5000), RequestTooLarge, "messages", "5011 bytes"),
        (score(completion="x" * 600), RequestTooLarge, "completion", "601 tokens, at most 512"),
    ],
)
async def test_bad_scores_are_refused_by_field_before_vllm_scores(
    core: ProxyCore, vllm: FakeVllm, request_: ScoreRequest, error: type, param: str, text: str
) -> None:
    with pytest.raises(error) as caught:
        await core.scoring.score("acme", request_)

    assert caught.value.param == param and text in caught.value.message
    assert vllm.completions == []


async def test_a_template_whose_prompt_is_no_prefix_is_refused_clearly(core: ProxyCore, vllm: FakeVllm) -> None:
    vllm.template_merges = True
    with pytest.raises(InvalidArgument, match="do not start with those of messages") as caught:
        await core.scoring.score("acme", score())
    assert caught.value.param == "completion" and vllm.completions == []


async def test_over_the_models_context_is_too_large(core: ProxyCore, vllm: FakeVllm) -> None:
    vllm.max_model_len = 16
    with pytest.raises(RequestTooLarge, match="over the model's context of 15"):
        await core.scoring.score("acme", score())


async def test_an_adapter_without_a_version_cannot_score(core: ProxyCore, storage: StorageClient) -> None:
    await add(storage, "acme/empty", versions=0)
    with pytest.raises(FailedPrecondition, match="no version yet"):
        await core.scoring.score("acme", score("empty"))


async def _mixed_load(core: ProxyCore) -> None:
    async def stream() -> None:
        async for _ in core.inference.chat_stream("acme", ChatRequest("bot", MESSAGES)):
            pass

    calls = [core.inference.chat("acme", ChatRequest("bot", MESSAGES)) for _ in range(4)]
    calls += [core.inference.complete("acme", CompletionRequest(BASE, "Once")) for _ in range(2)]
    calls += [stream() for _ in range(2)]
    calls += [core.scoring.score("acme", score(m)) for m in ("bot", BASE, "bot")]
    await asyncio.gather(*calls)


async def test_a_score_never_shares_vllms_engine_with_another_request(core: ProxyCore, vllm: FakeVllm) -> None:
    await _mixed_load(core)

    assert vllm.overlaps == 0 and len(vllm.completions) == 5
    assert core.gate.busy == (0, False)


async def test_without_the_gate_requests_do_overlap(core: ProxyCore, vllm: FakeVllm) -> None:
    """The control of the test above: the same load with the gate off does put scores beside generations."""
    core.gate.enabled = False
    await _mixed_load(core)

    assert vllm.overlaps > 0


async def test_a_cancelled_waiter_leaves_the_gate_usable() -> None:
    gate = EngineGate()
    async with gate.shared():
        waiting = asyncio.create_task(_hold(gate.exclusive()))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    async with asyncio.timeout(1):
        async with gate.shared(), gate.shared():
            assert gate.busy == (2, False)
        async with gate.exclusive():
            assert gate.busy == (0, True)


async def _hold(context) -> None:
    async with context:
        pass
