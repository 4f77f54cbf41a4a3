"""Training jobs through the trainer's gRPC surface: life cycle, idempotency, queue, merging, cancellation.

The engine and teacher are doubles (no model); storage is the real service on a local folder.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from claas.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from services.common.domain import Lineage
from services.teacher.domain import TeacherMode
from services.trainer.server import build_server
from services.trainer.settings import TrainerSettings
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
from tests.unit.trainer.helpers import (
    ADAPTER,
    Trainer,
    events,
    init_adapter,
    job,
    sample,
    trainer_service,
    wait_for,
)

S = common_pb2


async def test_a_job_streams_its_life_and_commits_version_2_with_lineage(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    submitted = (await trainer.stub.SubmitJob(job(sample(1), sample(2), steps=3))).job
    assert submitted.state == S.JOB_STATE_QUEUED and submitted.total_steps == 3

    stream = await events(trainer.stub, submitted.job_id)

    states = [e.state for e in stream]
    assert states[-1] == S.JOB_STATE_SUCCEEDED, stream[-1].error
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]][-4:] == [
        S.JOB_STATE_SCORING,
        S.JOB_STATE_TRAINING,
        S.JOB_STATE_COMMITTING,
        S.JOB_STATE_SUCCEEDED,
    ]
    assert [e.step for e in stream if e.state == S.JOB_STATE_TRAINING][-3:] == [1, 2, 3]
    done = stream[-1]
    assert (done.base_version, done.new_version) == (1, 2)
    assert [m.step for m in done.metrics] == [1, 2, 3] and done.metrics[0].tokens == 6
    assert (await trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=submitted.job_id))).job == done

    adapter = await trainer.storage.get_adapter(ADAPTER)
    assert adapter.head_version == 2
    version, files = await trainer.storage.read_version(ADAPTER, 2, include_optimizer=True)
    assert version.parent_version == 1
    assert version.lineage.job_id == submitted.job_id
    assert list(version.lineage.completion_ids) == ["cmpl-1", "cmpl-2"]
    assert list(version.lineage.feedback) == ["Be more concise."] * 2
    assert [m.step for m in version.lineage.metrics] == [1, 2, 3]
    assert files["adapter_model.safetensors"] == b"init" + b"+step" * 3 and files["optimizer.safetensors"] == b"adam"


async def test_the_teacher_gets_the_conversation_feedback_response_and_mode(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    submitted = (await trainer.stub.SubmitJob(job(sample(1), teacher_mode=S.TEACHER_MODE_SELF, top_k=7))).job
    assert (await events(trainer.stub, submitted.job_id))[-1].state == S.JOB_STATE_SUCCEEDED

    (request,) = trainer.teacher.requests
    assert request.mode == TeacherMode.SELF and request.top_k == 7
    assert (request.adapter.name, request.adapter.version) == (ADAPTER, 1)
    item = request.items[0]
    assert [m.content for m in item.messages] == ["You are a helpful assistant.", "Question 1?"]
    assert (item.feedback, list(item.response_ids), item.support_k) == ("Be more concise.", [10, 11, 12], 0)
    assert not item.neutral_followup


async def test_guided_rollouts_are_scored_and_trained_beside_the_users_and_counted_in_the_lineage(
    trainer: Trainer,
) -> None:
    await init_adapter(trainer.stub)
    submitted = (await trainer.stub.SubmitJob(job(sample(1), sample(2), guided_rollouts=2))).job
    final = (await events(trainer.stub, submitted.job_id))[-1]
    assert final.state == S.JOB_STATE_SUCCEEDED, final.error

    (request,) = trainer.teacher.requests
    assert [list(i.response_ids) for i in request.items] == [[10, 11, 12]] * 2 + [[7, 8]] * 4
    assert [i.messages[-1].content for i in request.items] == ["Question 1?", "Question 2?"] + ["Question 1?"] * 2 + [
        "Question 2?"
    ] * 2
    assert [i.feedback for i in request.items] == ["Be more concise."] * 6
    assert final.metrics[0].tokens == 6 + 4 * 2
    version, _ = await trainer.storage.read_version(ADAPTER, 2)
    # The lineage names the user's completions only; the guided rollouts are counted.
    assert list(version.lineage.completion_ids) == ["cmpl-1", "cmpl-2"]
    assert version.lineage.extra["guided_rollouts"] == "4"


async def test_greedy_rollouts_are_one_per_distinct_prompt_scored_and_trained_and_counted_in_the_lineage(
    trainer: Trainer,
) -> None:
    await init_adapter(trainer.stub)
    twice = sample(1)
    twice.completion_id = "cmpl-1b"  # a second rollout of the same prompt
    other = sample(2)
    other.prompt_ids[:] = [1, 2, 3, 5]
    submitted = (await trainer.stub.SubmitJob(job(sample(1), twice, other, greedy_max_tokens=60))).job
    final = (await events(trainer.stub, submitted.job_id))[-1]
    assert final.state == S.JOB_STATE_SUCCEEDED, final.error

    (request,) = trainer.teacher.requests
    assert [list(i.response_ids) for i in request.items] == [[10, 11, 12]] * 3 + [[9]] * 2
    assert [i.messages[-1].content for i in request.items][3:] == ["Question 1?", "Question 2?"]
    assert final.metrics[0].tokens == 9 + 2
    version, _ = await trainer.storage.read_version(ADAPTER, 2)
    assert list(version.lineage.completion_ids) == ["cmpl-1", "cmpl-1b", "cmpl-2"]
    assert version.lineage.extra["greedy_rollouts"] == "2"


async def test_jobs_are_contrastive_by_default_with_an_hf_teacher(storage) -> None:
    engine, teacher = FakeEngine(), FakeTeacher(backend="hf")
    async with trainer_service(storage, engine=engine, teacher=teacher, default_contrastive=True) as (stub, _, _):
        await init_adapter(stub)
        submitted = (await stub.SubmitJob(job(sample(1)))).job
        assert (await events(stub, submitted.job_id))[-1].state == S.JOB_STATE_SUCCEEDED
    (request,) = teacher.requests
    assert request.items[0].neutral_followup == "By the way, what is 27*4?"
    (targets,) = engine.targets
    assert targets[0].neutral is not None


async def test_contrastive_with_teacher_support_scores_the_followup_on_the_feedbacks_ids(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    submitted = (await trainer.stub.SubmitJob(job(sample(1), contrastive=True, top_k=5))).job
    assert (await events(trainer.stub, submitted.job_id))[-1].state == S.JOB_STATE_SUCCEEDED

    (request,) = trainer.teacher.requests
    assert request.items[0].feedback == "Be more concise."
    assert request.items[0].neutral_followup == "By the way, what is 27*4?" and request.top_k == 5
    (targets,) = trainer.engine.targets
    assert targets[0].neutral is not None and targets[0].neutral.ids.tolist() == targets[0].teacher.ids.tolist()


async def test_student_support_sends_the_students_top_k_and_asks_for_the_neutral_once(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    request = job(sample(1), support="student", contrastive=True, top_k=4)
    submitted = (await trainer.stub.SubmitJob(request)).job
    assert (await events(trainer.stub, submitted.job_id))[-1].state == S.JOB_STATE_SUCCEEDED

    (scored,) = trainer.teacher.requests
    item = scored.items[0]
    assert item.support_k == 4 and list(item.support_ids) == [500, 501, 502, 503] * 3
    assert item.neutral_followup == "By the way, what is 27*4?"


async def test_the_same_idempotency_key_returns_the_same_job(trainer: Trainer) -> None:
    await init_adapter(trainer.stub)
    first = (await trainer.stub.SubmitJob(job(sample(1), key="k-1"))).job
    again = (await trainer.stub.SubmitJob(job(sample(1), key="k-1"))).job
    other = (await trainer.stub.SubmitJob(job(sample(1), key="k-2"))).job

    assert again.job_id == first.job_id and other.job_id != first.job_id
    final = (await events(trainer.stub, first.job_id))[-1]
    assert final.state == S.JOB_STATE_SUCCEEDED
    after = (await trainer.stub.SubmitJob(job(sample(1), key="k-1"))).job
    assert after == (await trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=first.job_id))).job


@pytest.fixture
async def held(storage) -> Trainer:
    """A trainer whose steps block until ``engine.hold`` is set, with a queue of three."""
    engine, teacher = FakeEngine(hold=threading.Event()), FakeTeacher()
    async with trainer_service(storage, engine=engine, teacher=teacher, max_queue=3) as (stub, server, _):
        trainer = Trainer(stub, server, storage, engine, teacher)
        try:
            yield trainer
        finally:
            engine.hold.set()


async def test_jobs_of_one_adapter_waiting_together_run_as_one_batch(held: Trainer) -> None:
    stub = held.stub
    await init_adapter(stub)
    await init_adapter(stub, "acme/other")
    running = (await stub.SubmitJob(job(sample(0)))).job
    await wait_for(stub, running.job_id, S.JOB_STATE_TRAINING)
    a = (await stub.SubmitJob(job(sample(1)))).job
    b = (await stub.SubmitJob(job(sample(2)))).job
    held.engine.hold.set()
    c = (await stub.SubmitJob(job(sample(3), adapter="acme/other"))).job

    first, end_a, end_b, end_c = [(await events(stub, j.job_id))[-1] for j in (running, a, b, c)]

    assert first.new_version == 2 and not first.merged_job_ids
    assert end_a.state == end_b.state == S.JOB_STATE_SUCCEEDED
    assert end_a.new_version == end_b.new_version == 3 and end_a.base_version == end_b.base_version == 2
    assert list(end_a.merged_job_ids) == [b.job_id] and list(end_b.merged_job_ids) == [a.job_id]
    assert (end_c.state, end_c.new_version, list(end_c.merged_job_ids)) == (S.JOB_STATE_SUCCEEDED, 2, [])
    version, _ = await held.storage.read_version(ADAPTER, 3)
    assert list(version.lineage.completion_ids) == ["cmpl-1", "cmpl-2"]
    assert version.lineage.extra["merged_job_ids"] == f"{a.job_id},{b.job_id}"
    assert [len(r.items) for r in held.teacher.requests] == [1, 2, 1]


async def test_jobs_with_different_configs_are_not_merged(held: Trainer) -> None:
    stub = held.stub
    await init_adapter(stub)
    running = (await stub.SubmitJob(job(sample(0)))).job
    await wait_for(stub, running.job_id, S.JOB_STATE_TRAINING)
    a = (await stub.SubmitJob(job(sample(1), learning_rate=1e-4))).job
    b = (await stub.SubmitJob(job(sample(2), learning_rate=3e-4))).job
    held.engine.hold.set()

    versions = sorted([(await events(stub, j.job_id))[-1].new_version for j in (running, a, b)])
    assert versions == [2, 3, 4]


async def test_a_full_queue_refuses_with_resource_exhausted(held: Trainer) -> None:
    stub = held.stub
    await init_adapter(stub)
    running = (await stub.SubmitJob(job(sample(0)))).job
    await wait_for(stub, running.job_id, S.JOB_STATE_TRAINING)
    for index in (1, 2):
        await stub.SubmitJob(job(sample(index)))
    await stub.SubmitJob(job(sample(3), key="queued"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitJob(job(sample(4)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "the training queue is full (3 jobs waiting); retry later"
    # A retry of a queued job is still answered: the key is known.
    assert (await stub.SubmitJob(job(sample(3), key="queued"))).job.state == S.JOB_STATE_QUEUED
    info = await stub.Info(trainer_pb2.TrainerServiceInfoRequest())
    assert (info.queue_depth, info.max_queue) == (3, 3)


async def test_cancelling_a_queued_job_ends_it_at_once_and_it_never_runs(held: Trainer) -> None:
    stub = held.stub
    await init_adapter(stub)
    running = (await stub.SubmitJob(job(sample(0)))).job
    await wait_for(stub, running.job_id, S.JOB_STATE_TRAINING)
    queued = (await stub.SubmitJob(job(sample(1)))).job

    cancelled = (await stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=queued.job_id))).job
    held.engine.hold.set()

    assert cancelled.state == S.JOB_STATE_CANCELLED and "before it started" in cancelled.error
    assert (await events(stub, running.job_id))[-1].new_version == 2
    assert [len(r.items) for r in held.teacher.requests] == [1]
    assert (await held.storage.get_adapter(ADAPTER)).head_version == 2


async def test_cancelling_a_running_job_stops_at_the_next_step_and_leaves_the_head(held: Trainer) -> None:
    stub = held.stub
    await init_adapter(stub)
    running = (await stub.SubmitJob(job(sample(0), steps=4))).job
    await wait_for(stub, running.job_id, S.JOB_STATE_TRAINING)

    answer = (await stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=running.job_id))).job
    held.engine.hold.set()
    final = (await events(stub, running.job_id))[-1]

    assert answer.state == S.JOB_STATE_TRAINING
    assert (final.state, final.error, final.new_version) == (S.JOB_STATE_CANCELLED, "cancelled", 0)
    assert final.step == 1 and held.engine.steps == 1
    assert (await held.storage.get_adapter(ADAPTER)).head_version == 1


async def test_a_failing_teacher_fails_the_job_and_leaves_the_head(trainer: Trainer) -> None:
    from services.common.errors import Unavailable

    await init_adapter(trainer.stub)
    trainer.teacher.fail_with = Unavailable("teacher is down")
    submitted = (await trainer.stub.SubmitJob(job(sample(1)))).job

    final = (await events(trainer.stub, submitted.job_id))[-1]

    assert (final.state, final.error) == (S.JOB_STATE_FAILED, "UNAVAILABLE: teacher is down")
    assert (await trainer.storage.get_adapter(ADAPTER)).head_version == 1


async def test_a_retry_of_a_failed_job_with_the_same_key_runs_again(trainer: Trainer) -> None:
    from services.common.errors import Unavailable

    await init_adapter(trainer.stub)
    trainer.teacher.fail_with = Unavailable("teacher is down")
    failed = (await trainer.stub.SubmitJob(job(sample(1), key="retry"))).job
    assert (await events(trainer.stub, failed.job_id))[-1].state == S.JOB_STATE_FAILED

    trainer.teacher.fail_with = None
    retried = (await trainer.stub.SubmitJob(job(sample(1), key="retry"))).job
    final = (await events(trainer.stub, retried.job_id))[-1]
    assert retried.job_id != failed.job_id
    assert (final.state, final.new_version) == (S.JOB_STATE_SUCCEEDED, 2)


class _RacingStorage:
    """Storage whose head another writer moves just before each of the first ``races`` job commits."""

    def __init__(self, client, races: int) -> None:
        self._client = client
        self.races = races

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    async def upload_version(self, name, parent_version, files, lineage, **options):
        if self.races > 0 and parent_version > 0:
            self.races -= 1
            other = Lineage(job_id=f"other-writer-{self.races}")
            await self._client.upload_version(name, parent_version, {"adapter_model.safetensors": b"x"}, other)
        return await self._client.upload_version(name, parent_version, files, lineage, **options)


async def test_a_lost_race_re_runs_the_job_on_the_new_head_and_keeps_both_updates(storage) -> None:
    engine, teacher = FakeEngine(), FakeTeacher()
    racing = _RacingStorage(storage, races=1)
    async with trainer_service(racing, engine=engine, teacher=teacher) as (stub, _, _):
        await init_adapter(stub)
        submitted = (await stub.SubmitJob(job(sample(1)))).job
        final = (await events(stub, submitted.job_id))[-1]

    assert (final.state, final.base_version, final.new_version) == (S.JOB_STATE_SUCCEEDED, 2, 3)
    history = await storage.list_versions(ADAPTER)
    assert [(v.version, v.parent_version, v.lineage.job_id) for v in history] == [
        (1, 0, ""),
        (2, 1, "other-writer-0"),
        (3, 2, submitted.job_id),
    ]
    assert [key.split("#")[0] for key, _ in engine.opened] == [f"{ADAPTER}@1", f"{ADAPTER}@2"]
    assert [len(r.items) for r in teacher.requests] == [1, 1]


async def test_a_head_that_keeps_moving_fails_the_job_after_bounded_retries(storage) -> None:
    engine, teacher = FakeEngine(), FakeTeacher()
    racing = _RacingStorage(storage, races=10)
    async with trainer_service(racing, engine=engine, teacher=teacher, commit_retries=2) as (stub, _, _):
        await init_adapter(stub)
        submitted = (await stub.SubmitJob(job(sample(1)))).job
        final = (await events(stub, submitted.job_id))[-1]

    assert final.state == S.JOB_STATE_FAILED
    assert final.error == f"ABORTED: the head of {ADAPTER} moved during each of 3 attempts; resubmit the job"
    assert len(engine.opened) == 3
    assert job_ids_in(await storage.list_versions(ADAPTER)).count(submitted.job_id) == 0


class _LostReplyStorage(_RacingStorage):
    """Storage that commits a job's first upload, then loses its answer (the caller sees UNAVAILABLE)."""

    async def upload_version(self, name, parent_version, files, lineage, **options):
        from services.common.errors import Unavailable

        version = await self._client.upload_version(name, parent_version, files, lineage, **options)
        if self.races > 0 and parent_version > 0:
            self.races -= 1
            raise Unavailable("storage went away before it answered")
        return version


async def test_a_commit_whose_answer_was_lost_trains_the_feedback_once(storage) -> None:
    """Hole: the head moved, the trainer saw UNAVAILABLE, and the user was told to resubmit (training twice)."""
    engine, teacher = FakeEngine(), FakeTeacher()
    async with trainer_service(_LostReplyStorage(storage, races=1), engine=engine, teacher=teacher) as (stub, _, _):
        await init_adapter(stub)
        submitted = (await stub.SubmitJob(job(sample(1)))).job
        final = (await events(stub, submitted.job_id))[-1]

    assert (final.state, final.new_version) == (S.JOB_STATE_SUCCEEDED, 2)
    assert job_ids_in(await storage.list_versions(ADAPTER)) == ["", submitted.job_id]
    assert len(teacher.requests) == 1  # trained once: only the upload was repeated


def job_ids_in(versions) -> list[str]:
    return [v.lineage.job_id for v in versions]


async def test_unknown_jobs_are_not_found(trainer: Trainer) -> None:
    for call, request in (
        (trainer.stub.GetJob, trainer_pb2.GetJobRequest(job_id="nope")),
        (trainer.stub.CancelJob, trainer_pb2.CancelJobRequest(job_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "job 'nope' not found" in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events(trainer.stub, "nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reload_model_per_job_loads_the_engine_for_every_job(storage, tmp_path: Path) -> None:
    loads: list[FakeEngine] = []

    def load() -> FakeEngine:
        loads.append(FakeEngine())
        return loads[-1]

    teacher = FakeTeacher()
    settings = TrainerSettings(
        port=0, grace_period_s=1, dependency_wait_s=0, reload_model_per_job=True, store_url=str(tmp_path)
    )
    server, start, stop = build_server(settings, engine=load, storage=storage, teacher=teacher)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        await start()
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        await init_adapter(stub)
        for index in (1, 2):
            submitted = (await stub.SubmitJob(job(sample(index), key=f"reload-{index}"))).job
            assert (await events(stub, submitted.job_id))[-1].state == S.JOB_STATE_SUCCEEDED
    finally:
        await channel.close()
        await server.stop()
        await stop()
    assert len(loads) == 3  # at start, then once per job
    assert loads[1].steps and loads[2].steps


async def test_one_tenant_cannot_fill_the_queue_for_the_others(storage) -> None:
    """Hole: one tenant could fill the trainer's global queue and starve every other tenant."""
    engine, teacher = FakeEngine(hold=threading.Event()), FakeTeacher()
    fields = {"max_queue": 4, "max_queue_per_tenant": 2}
    async with trainer_service(storage, engine=engine, teacher=teacher, **fields) as (stub, _, _):
        try:
            for name in (ADAPTER, "beta/bot"):
                await init_adapter(stub, name)
            running = (await stub.SubmitJob(job(sample(0)))).job
            await wait_for(stub, running.job_id, S.JOB_STATE_TRAINING)
            for index in (1, 2):
                await stub.SubmitJob(job(sample(index)))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SubmitJob(job(sample(3)))
            other = (await stub.SubmitJob(job(sample(4), adapter="beta/bot"))).job
        finally:
            engine.hold.set()

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == (
        "tenant 'acme' has 2 jobs waiting, its quota (CLAAS_MAX_QUEUE_PER_TENANT); retry once one has run"
    )
    assert other.state == S.JOB_STATE_QUEUED  # another tenant still gets in
