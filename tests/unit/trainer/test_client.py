"""``TrainerClient`` against the real trainer servicer (fake model and teacher, real storage) in process."""

from __future__ import annotations

import pytest

from services.common.domain import LoraSpec, Message
from services.common.errors import InvalidArgument, NotFound
from services.storage.domain import Adapter
from services.trainer.client import TrainerClient
from services.trainer.domain import JobState, Sample, TrainerInfo
from tests.unit.trainer.helpers import ADAPTER, Trainer

SAMPLE = Sample(
    completion_id="cmpl-1",
    messages=(Message("system", "You are a helpful assistant."), Message("user", "Question 1?")),
    prompt_ids=(1, 2, 3, 4),
    response_ids=(10, 11, 12),
    sampled_logprobs=(-1.0, -1.0, -1.0),
    feedback="Be more concise.",
    served_version=1,
)


@pytest.fixture
async def client(trainer: Trainer):
    client = TrainerClient.connect(f"127.0.0.1:{trainer.server.port}")
    try:
        yield client
    finally:
        await client.close()


async def test_init_submit_watch_get_and_cancel_speak_domain_types(trainer: Trainer, client: TrainerClient) -> None:
    adapter = await client.init_adapter(ADAPTER, LoraSpec(rank=4, alpha=8))
    assert isinstance(adapter, Adapter) and adapter.head_version == 1
    assert adapter.lora == LoraSpec(rank=4, alpha=8, target_modules=("k_proj", "o_proj", "q_proj", "v_proj"))

    submitted = await client.submit_job(ADAPTER, [SAMPLE], {"steps": 2, "topK": 7}, "key-1")
    assert submitted.adapter == ADAPTER and submitted.state is JobState.QUEUED
    views = [view async for view in client.watch_job(submitted.job_id)]
    final = views[-1]
    assert (final.state, final.base_version, final.new_version) == (JobState.SUCCEEDED, 1, 2)
    # 3 response tokens, and 2 of the one guided rollout the default config adds.
    assert [m.step for m in final.metrics] == [1, 2] and final.metrics[0].tokens == 3 + 2
    assert await client.get_job(submitted.job_id) == final
    assert await client.cancel_job(submitted.job_id) == final  # a finished job is returned as it is
    (request,) = trainer.teacher.requests
    assert request.top_k == 7 and request.items[0].messages == SAMPLE.messages
    assert await client.submit_job(ADAPTER, [SAMPLE], None, "key-1") == final

    info = await client.info()
    assert info == TrainerInfo("fake-model", trainer.engine.fingerprint, "cpu", 0, info.max_queue, 16)


async def test_a_config_that_does_not_parse_is_refused_before_any_call(client: TrainerClient) -> None:
    with pytest.raises(InvalidArgument, match="invalid config") as caught:
        await client.submit_job(ADAPTER, [SAMPLE], {"no_such_field": 1}, "")
    assert caught.value.param == "config"


async def test_failures_arrive_as_our_errors(client: TrainerClient) -> None:
    with pytest.raises(NotFound):
        await client.get_job("nope")
    with pytest.raises(InvalidArgument, match="LoRA rank must be in"):
        await client.init_adapter(ADAPTER, LoraSpec(rank=64, alpha=8))


async def test_a_running_job_tells_what_the_teacher_scored_and_a_finished_one_forgets_it(
    trainer: Trainer, client: TrainerClient
) -> None:
    await client.init_adapter(ADAPTER, LoraSpec(rank=4, alpha=8))
    submitted = await client.submit_job(ADAPTER, [SAMPLE], {"steps": 1}, "key-texts")

    views = [view async for view in client.watch_job(submitted.job_id)]

    scoring = next(v for v in views if v.state is JobState.SCORING)
    expected = trainer.engine.teacher_text(SAMPLE, "hindsight")
    assert scoring.teacher_texts == {SAMPLE.completion_id: expected}
    assert views[-1].state is JobState.SUCCEEDED and views[-1].teacher_texts == {}
    assert (await client.get_job(submitted.job_id)).teacher_texts == {}  # tenant text is not kept
    assert all(not v.teacher_texts for v in [view async for view in client.watch_job(submitted.job_id)])
