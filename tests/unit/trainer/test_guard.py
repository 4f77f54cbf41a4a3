"""The commit guard: how it judges a version, and what a rejected job leaves behind (fake engine, real storage)."""

from __future__ import annotations

import dataclasses
import math

from claas.v1 import common_pb2

from services.trainer.guard import GuardProbe, judge
from tests.unit.trainer.helpers import ADAPTER, Trainer, events, init_adapter, job, sample

S = common_pb2
CLEAN = ("Paris is the capital of France.", "A spider has eight legs.")
#: Clean on the four neutral questions, a loop on the job's one conversation: a name learned, then said on and on.
LOOPING = GuardProbe(0.02, ("Paris.",) * 4 + ("I'm Kuro, Kuro, Kuro, Kuro, Kuro, Kuro, Kuro.",),
                     ("Paris.",) * 4 + ("I'm SmolLM.",))  # fmt: skip


def test_a_clean_version_within_the_drift_limit_passes() -> None:
    verdict = judge(GuardProbe(0.05, CLEAN, CLEAN), questions=2, max_drift=0.2, max_degenerate=0, seconds=0.4)

    assert verdict.passed and verdict.reason == ""
    assert verdict.lineage_extra() == {"guard": "passed", "guard_drift": "0.05", "guard_seconds": "0.400"}


def test_drift_over_the_limit_or_not_a_number_is_rejected() -> None:
    over = judge(GuardProbe(0.35, CLEAN, CLEAN), questions=2, max_drift=0.2, max_degenerate=0, seconds=0.1)
    nan = judge(GuardProbe(math.nan, CLEAN, CLEAN), questions=2, max_drift=0.2, max_degenerate=0, seconds=0.1)

    assert not over.passed and "drift 0.35 nats/token from the base model exceeds the limit 0.2" in over.reason
    assert not nan.passed and "drift nan" in nan.reason
    assert over.lineage_extra()["guard"] == "rejected" and over.lineage_extra()["guard_reason"] == over.reason


def test_one_degenerate_answer_may_pass_when_the_settings_allow_one() -> None:
    spam = "Kuro Kuro Kuro Kuro Kuro Kuro Kuro"
    one = judge(GuardProbe(0.01, (CLEAN[0], spam), CLEAN), questions=2, max_drift=0.2, max_degenerate=1, seconds=0.1)
    two = judge(GuardProbe(0.01, (spam, spam), CLEAN), questions=2, max_drift=0.2, max_degenerate=1, seconds=0.1)

    assert one.passed and one.degenerate and not two.passed and "2 of 2 neutral answers degenerate" in two.reason


def test_any_degenerate_answer_to_the_jobs_own_conversations_is_rejected() -> None:
    spam = "I'm a cat-friendly cat. I'm a cat-friendly cat. I'm a cat-friendly cat."
    probe = GuardProbe(0.01, (*CLEAN, "I'm SmolLM.", spam), (*CLEAN, "I'm SmolLM.", "I'm SmolLM."))
    verdict = judge(probe, questions=2, max_drift=0.2, max_degenerate=1, seconds=0.1)

    assert not verdict.passed
    assert verdict.reason.startswith("1 of 2 answers to the job's conversations degenerate: \"I'm a cat-friendly")


def test_a_degenerate_answer_is_rejected_unless_the_base_model_gave_it_too() -> None:
    spam = "Kuro Kuro Kuro Kuro Kuro Kuro Kuro"
    broken = judge(GuardProbe(0.01, (CLEAN[0], spam), CLEAN), questions=2, max_drift=0.2, max_degenerate=0, seconds=0.1)
    inherited = judge(
        GuardProbe(0.01, (CLEAN[0], spam), (CLEAN[0], spam)), questions=2, max_drift=0.2, max_degenerate=0, seconds=0.1
    )
    symbols = judge(
        GuardProbe(0.01, ("Great!!!!!!!!!!!!", CLEAN[1]), CLEAN),
        questions=2,
        max_drift=0.2,
        max_degenerate=0,
        seconds=0.1,
    )

    assert not broken.passed and "1 of 2 neutral answers degenerate" in broken.reason
    assert "repeats 'kuro kuro kuro'" in broken.reason
    assert inherited.passed
    assert not symbols.passed and "a run of" in symbols.reason


async def test_a_rejected_version_is_kept_off_the_head_and_its_job_fails_with_the_reason(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    trainer.engine.probe = GuardProbe(3.2, ("!!!!!!!!!!!!!!!!", "?????????????"), ("Paris.", "Eight."))
    submitted = (await trainer.stub.SubmitJob(job(sample(1), steps=2))).job

    final = (await events(trainer.stub, submitted.job_id))[-1]

    assert final.state == S.JOB_STATE_FAILED
    assert final.error.startswith("FAILED_PRECONDITION: the commit guard kept version 2 off the head (drift 3.2")
    assert "the head stays at 1" in final.error and [m.step for m in final.metrics] == [1, 2]
    assert "step 2 of 2 was rejected (drift 3.2" in final.error and "step 1 was read instead" in final.error
    assert (await trainer.storage.get_adapter(ADAPTER)).head_version == 1
    versions = {v.version: v for v in await trainer.storage.list_versions(ADAPTER)}
    assert sorted(versions) == [1, 2]
    extra = versions[2].lineage.extra
    assert extra["guard"] == "rejected" and "answers degenerate" in extra["guard_reason"]
    assert versions[2].lineage.job_id == submitted.job_id
    assert len(trainer.engine.guarded) == 2  # the last step, then the halfway one


async def test_a_job_that_went_too_far_commits_its_halfway_step_when_that_passes(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    trainer.engine.probe_after = {4: LOOPING}
    submitted = (await trainer.stub.SubmitJob(job(sample(1), steps=4))).job

    final = (await events(trainer.stub, submitted.job_id))[-1]

    assert (final.state, final.new_version) == (S.JOB_STATE_SUCCEEDED, 2), final.error
    assert (await trainer.storage.get_adapter(ADAPTER)).head_version == 2
    version, files = await trainer.storage.read_version(ADAPTER, 2)
    assert files["adapter_model.safetensors"] == b"init+step+step"  # the state after step 2, not after step 4
    assert [m.step for m in version.lineage.metrics] == [1, 2]
    extra = version.lineage.extra
    assert extra["guard"] == "passed" and "guard_reason" not in extra
    assert extra["guard_fallback"].startswith(
        "step 4 of 4 was rejected (1 of 1 answers to the job's conversations degenerate"
    )
    assert extra["guard_fallback"].endswith("step 2 was read instead")


async def test_without_the_fallback_a_job_that_went_too_far_fails(storage) -> None:
    from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
    from tests.unit.trainer.helpers import trainer_service

    engine = FakeEngine(probe_after={4: LOOPING})
    async with trainer_service(storage, engine=engine, teacher=FakeTeacher(), guard_fallback=False) as (stub, _, _):
        await init_adapter(stub)
        final = (await events(stub, (await stub.SubmitJob(job(sample(1), steps=4))).job.job_id))[-1]

    assert final.state == S.JOB_STATE_FAILED and "1 of 1 answers to the job's conversations degenerate" in final.error
    assert "read instead" not in final.error and len(engine.guarded) == 1
    assert (await storage.get_adapter(ADAPTER)).head_version == 1


async def test_a_passing_version_becomes_the_head_with_the_guards_figures(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    submitted = (await trainer.stub.SubmitJob(job(sample(1)))).job

    final = (await events(trainer.stub, submitted.job_id))[-1]

    assert (final.state, final.new_version) == (S.JOB_STATE_SUCCEEDED, 2), final.error
    version, _ = await trainer.storage.read_version(ADAPTER, 2)
    assert version.lineage.extra["guard"] == "passed" and float(version.lineage.extra["guard_drift"]) == 0.001
    assert trainer.engine.guarded == [[[1, 2, 3, 4]]]  # the job's one conversation, read once


async def test_with_the_guard_off_nothing_is_measured_and_the_version_commits(storage) -> None:
    from tests.unit.trainer.fakes import CLEAN_PROBE, FakeEngine, FakeTeacher
    from tests.unit.trainer.helpers import trainer_service

    engine = FakeEngine(probe=dataclasses.replace(CLEAN_PROBE, drift=9.0))
    async with trainer_service(storage, engine=engine, teacher=FakeTeacher(), commit_guard=False) as (stub, _, _):
        await init_adapter(stub)
        final = (await events(stub, (await stub.SubmitJob(job(sample(1)))).job.job_id))[-1]
    assert (final.state, final.new_version) == (S.JOB_STATE_SUCCEEDED, 2), final.error
    version, _ = await storage.read_version(ADAPTER, 2)
    assert "guard" not in version.lineage.extra
