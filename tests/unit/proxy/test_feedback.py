"""Feedback: rollouts become training samples; tenancy and validation come first; wait serves the result."""

from __future__ import annotations

import pytest

from services.common.domain import Message
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest
from services.proxy.feedback import job_key
from services.storage.client import StorageClient
from services.trainer.domain import JobState
from tests.unit.proxy.fakes import BASE, FakeTrainer, FakeVllm, add, commit, head

MESSAGES = (Message("system", "Be brief."), Message("user", "Who are you?"))


async def chat(core: ProxyCore, tenant: str = "acme", model: str = "bot") -> str:
    return (await core.inference.chat(tenant, ChatRequest(model=model, messages=MESSAGES))).completion_id


async def test_feedback_submits_the_exact_rollouts_as_samples(core: ProxyCore, trainer: FakeTrainer) -> None:
    first, second = await chat(core), await chat(core)
    config = {"steps": 1, "learning_rate": 1e-4}

    job = await core.feedback.submit("acme", [first, second, first], "  Be concise.  ", config)

    assert (job.job_id, job.adapter, job.state) == ("job-1", "acme/bot", JobState.QUEUED)
    sent = trainer.submitted[0]
    assert sent.adapter == "acme/bot" and sent.config == config
    assert [s.completion_id for s in sent.samples] == [first, second]
    rollout = await core.rollouts.get("acme", first)
    sample = sent.samples[0]
    assert (tuple(sample.prompt_ids), tuple(sample.response_ids)) == (rollout.prompt_ids, rollout.response_ids)
    assert list(sample.sampled_logprobs) == pytest.approx(rollout.sampled_logprobs)
    assert (sample.feedback, sample.served_version) == ("Be concise.", 1)
    assert [(m.role, m.content) for m in sample.messages] == [(m.role, m.content) for m in MESSAGES]


async def test_feedback_with_wait_returns_the_new_version_and_vllm_serves_it(core: ProxyCore, vllm: FakeVllm) -> None:
    completion = await chat(core)

    job = await core.feedback.submit("acme", [completion], "Your name is Kuro.", wait=True)

    assert (job.state, job.new_version) == (JobState.SUCCEEDED, 2)
    assert list(vllm.loaded) == ["acme+bot+v2"]  # v1 is unloaded once v2 is ready
    assert (await core.inference.chat("acme", ChatRequest("bot", MESSAGES))).version == 2


async def test_feedback_on_an_older_versions_completion_is_allowed(core: ProxyCore, storage: StorageClient) -> None:
    completion = await chat(core)
    await commit(storage, "acme/bot")
    job = await core.feedback.submit("acme", [completion], "Shorter.", wait=True)
    assert (job.state, job.new_version) == (JobState.SUCCEEDED, 3)


async def test_a_failed_job_is_reported_and_the_head_stays(
    core: ProxyCore, trainer: FakeTrainer, storage: StorageClient
) -> None:
    trainer.fail = True
    job = await core.feedback.submit("acme", [await chat(core)], "Shorter.", wait=True)
    assert (job.state, job.error) == (JobState.FAILED, "injected failure")
    assert await head(storage, "acme/bot") == 1


async def test_a_trainer_lost_mid_job_is_followed_again_until_the_job_ends(
    core: ProxyCore, trainer: FakeTrainer, storage: StorageClient
) -> None:
    trainer.lost = 2  # the job's trainer goes away twice; the job resumes (its record is durable)
    job = await core.feedback.submit("acme", [await chat(core)], "Shorter.", wait=True)
    assert (job.state, job.new_version) == (JobState.SUCCEEDED, 2)
    assert await head(storage, "acme/bot") == 2


async def test_no_trainer_answering_for_a_running_job_is_unavailable_not_a_failure(
    core: ProxyCore, trainer: FakeTrainer, storage: StorageClient
) -> None:
    trainer.lost = 100
    with pytest.raises(Unavailable, match="the job is kept and resumes when a trainer is back") as caught:
        await core.feedback.submit("acme", [await chat(core)], "Shorter.", wait=True)
    assert "follow it again with Watch" in caught.value.message
    assert await head(storage, "acme/bot") == 1
    (record,) = (await core.feedback.records("acme"))[0]
    assert record.state is JobState.TRAINING  # as last seen, not failed


async def test_a_retried_submit_is_the_same_job(core: ProxyCore, trainer: FakeTrainer) -> None:
    completion = await chat(core)
    first = await core.feedback.submit("acme", [completion], "Shorter.")
    again = await core.feedback.submit("acme", [completion], "Shorter.")
    keyed = await core.feedback.submit("acme", [completion], "Shorter.", idempotency_key="k1")
    assert first.job_id == again.job_id != keyed.job_id
    assert len(trainer.submitted) == 2


def test_job_keys_are_scoped_to_the_tenant_and_the_request() -> None:
    key = job_key("acme", "", ["c1", "c2"], "Shorter.", None)
    assert key == job_key("acme", "", ["c2", "c1"], "Shorter.", None)
    assert key != job_key("beta", "", ["c1", "c2"], "Shorter.", None)
    assert key != job_key("acme", "", ["c1", "c2"], "Longer.", None)
    assert key != job_key("acme", "", ["c1", "c2"], "Shorter.", {"steps": 2})
    assert job_key("acme", "k", [], "", None) != job_key("beta", "k", [], "", None)


@pytest.mark.parametrize(
    ("ids", "feedback", "error", "text"),
    [
        (["cmpl-20260101-" + "a" * 32], "Shorter.", NotFound, "not found"),
        (["garbage"], "Shorter.", NotFound, "completion 'garbage' not found"),
        ([], "Shorter.", InvalidArgument, "at least one completion"),
        (None, "   ", InvalidArgument, "'feedback' must not be empty"),
        (None, "x" * 2001, InvalidArgument, "at most 2000"),
    ],
)
async def test_bad_feedback_is_refused_and_nothing_is_submitted(
    core: ProxyCore, trainer: FakeTrainer, ids: list[str] | None, feedback: str, error: type, text: str
) -> None:
    ids = ids if ids is not None else [await chat(core)]
    with pytest.raises(error, match=text):
        await core.feedback.submit("acme", ids, feedback)
    assert trainer.submitted == []


async def test_feedback_on_another_tenants_completion_is_not_found(core: ProxyCore, trainer: FakeTrainer) -> None:
    theirs = await chat(core, "beta", "secret")
    with pytest.raises(NotFound) as caught:
        await core.feedback.submit("acme", [theirs], "Shorter.")
    assert caught.value.message == f"completion '{theirs}' not found"
    assert trainer.submitted == []


async def test_completions_of_two_adapters_or_of_the_base_model_are_refused(
    core: ProxyCore, storage: StorageClient, trainer: FakeTrainer
) -> None:
    await add(storage, "acme/other")
    with pytest.raises(InvalidArgument, match="one adapter only, got acme/bot, acme/other"):
        await core.feedback.submit("acme", [await chat(core), await chat(core, model="other")], "Shorter.")
    with pytest.raises(InvalidArgument, match="answered by the base model"):
        await core.feedback.submit("acme", [await chat(core, model=BASE)], "Shorter.")
    assert trainer.submitted == []


async def test_watch_follows_own_jobs_only(core: ProxyCore) -> None:
    job = await core.feedback.submit("acme", [await chat(core)], "Shorter.")

    states = [s.state async for s in core.feedback.watch("acme", job.job_id)]
    assert states == [JobState.QUEUED, JobState.SCORING, JobState.SUCCEEDED]
    with pytest.raises(NotFound, match=f"job '{job.job_id}' not found"):
        async for _ in core.feedback.watch("beta", job.job_id):
            pass
