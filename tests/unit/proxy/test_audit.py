"""The feedback audit log: a durable record of every feedback and what it did, read newest first, scoped to
the caller's tenant, gone with its adapter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.domain import Message
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.objectstore import LocalFolderStore
from services.proxy.audit import AuditLog, FeedbackRecord, new_record_id
from services.proxy.client import ProxyClient
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest
from services.proxy.settings import ProxySettings
from services.proxy.vllm import VllmClient
from services.storage.client import StorageClient
from services.trainer.domain import JobState
from tests.unit.proxy.conftest import Proxy
from tests.unit.proxy.fakes import FakeTrainer, FakeVllm, add

MESSAGES = (Message("system", "Be brief."), Message("user", "Who are you?"))


async def chat(core: ProxyCore, tenant: str = "acme", model: str = "bot") -> str:
    return (await core.inference.chat(tenant, ChatRequest(model=model, messages=MESSAGES))).completion_id


async def test_a_feedback_is_recorded_with_its_samples_versions_metrics_and_phases(core: ProxyCore) -> None:
    completion = await chat(core)
    rollout = await core.rollouts.get("acme", completion)

    job = await core.feedback.submit("acme", [completion], "Your name is Kuro.", wait=True)
    [record], token = await core.feedback.records("acme")

    assert token == ""
    assert (record.adapter, record.feedback, record.job_id) == ("acme/bot", "Your name is Kuro.", job.job_id)
    assert (record.state, record.base_version, record.new_version) == (JobState.SUCCEEDED, 1, 2)
    [sample] = record.samples
    assert (sample.completion_id, sample.response, sample.served_version) == (completion, rollout.text, 1)
    assert sample.messages == MESSAGES
    assert sample.teacher_text == f"teacher read: Your name is Kuro. / {list(rollout.response_ids)}"
    assert set(record.phases) == {"queued", "scoring", "served"} and all(v >= 0 for v in record.phases.values())


async def test_a_failed_and_a_refused_feedback_are_recorded_with_their_error(
    core: ProxyCore, trainer: FakeTrainer
) -> None:
    trainer.fail = True
    await core.feedback.submit("acme", [await chat(core)], "Shorter.", wait=True)
    trainer.refuse = ResourceExhausted("tenant 'acme' has 16 queued jobs, its quota")
    with pytest.raises(ResourceExhausted):
        await core.feedback.submit("acme", [await chat(core)], "Longer.")

    refused, failed = (await core.feedback.records("acme"))[0]
    assert (refused.feedback, refused.state, refused.job_id) == ("Longer.", JobState.FAILED, "")
    assert refused.error == "tenant 'acme' has 16 queued jobs, its quota"
    assert (failed.feedback, failed.state, failed.error) == ("Shorter.", JobState.FAILED, "injected failure")


async def test_records_filter_by_adapter_and_state_and_stay_in_their_tenant(
    core: ProxyCore, storage: StorageClient, trainer: FakeTrainer
) -> None:
    await add(storage, "acme/other")
    await core.feedback.submit("acme", [await chat(core)], "One.", wait=True)
    await core.feedback.submit("acme", [await chat(core, model="other")], "Two.", wait=True)
    trainer.fail = True
    await core.feedback.submit("acme", [await chat(core)], "Three.", wait=True)

    assert [r.feedback for r in (await core.feedback.records("acme"))[0]] == ["Three.", "Two.", "One."]
    assert [r.feedback for r in (await core.feedback.records("acme", adapter="bot"))[0]] == ["Three.", "One."]
    failed = (await core.feedback.records("acme", state=JobState.FAILED))[0]
    assert [r.feedback for r in failed] == ["Three."]
    assert (await core.feedback.records("beta"))[0] == []
    with pytest.raises(NotFound):
        await core.feedback.records("beta", adapter="acme/bot")
    with pytest.raises(InvalidArgument, match="invalid adapter name"):
        await core.feedback.records("acme", adapter="Bot!")


async def test_an_unfinished_jobs_record_is_brought_up_to_date_when_read(core: ProxyCore, trainer: FakeTrainer) -> None:
    first = await core.feedback.submit("acme", [await chat(core)], "Shorter.")
    await core.feedback.submit("acme", [await chat(core)], "Longer.")
    assert {r.state for r in (await core.feedback.records("acme"))[0]} == {JobState.QUEUED}

    assert [s.state async for s in core.feedback.watch("acme", first.job_id)][-1] is JobState.SUCCEEDED
    del trainer.jobs["job-2"]  # its record expired on every trainer

    longer, shorter = (await core.feedback.records("acme"))[0]
    assert (shorter.state, shorter.new_version) == (JobState.SUCCEEDED, 2)
    assert longer.state is JobState.FAILED and "no longer know this job" in longer.error


async def test_deleting_an_adapter_deletes_its_records(core: ProxyCore, storage: StorageClient) -> None:
    await add(storage, "acme/other")
    await core.feedback.submit("acme", [await chat(core)], "One.")
    await core.feedback.submit("acme", [await chat(core, model="other")], "Two.")

    await core.adapters.delete("acme", "bot")

    assert [r.feedback for r in (await core.feedback.records("acme"))[0]] == ["Two."]


async def test_records_survive_a_proxy_restart(
    core: ProxyCore, settings: ProxySettings, storage: StorageClient, trainer: FakeTrainer, vllm: FakeVllm
) -> None:
    await core.feedback.submit("acme", [await chat(core)], "Your name is Kuro.", wait=True)
    await core.stop()

    client = VllmClient(settings.vllm_url, **vllm.client_kwargs())
    again = ProxyCore(
        settings, storage=storage, trainer=trainer, vllm=client, store=LocalFolderStore(Path(settings.store_url))
    )
    try:
        [record], _ = await again.feedback.records("acme")
        assert (record.feedback, record.state, record.new_version) == ("Your name is Kuro.", JobState.SUCCEEDED, 2)
    finally:
        await again.stop()
        await client.close()


async def test_records_come_in_pages_newest_first_and_expire_with_the_rollouts(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    audit = AuditLog(LocalFolderStore(tmp_path, fsync=False), retention_days=30, clock=lambda: now)
    for minutes in range(45):  # one every minute, the oldest 45 minutes ago
        when = now - timedelta(minutes=45 - minutes)
        await audit.put(FeedbackRecord(new_record_id(when), "acme", "acme/bot", f"f{minutes}", (), when))
    old = now - timedelta(days=31)
    await audit.put(FeedbackRecord(new_record_id(old), "acme", "acme/bot", "expired", (), old))

    seen, token = [], ""
    while True:
        page, token = await audit.list("acme", page_size=20, page_token=token)
        seen.append([r.feedback for r in page])
        if not token:
            break
    assert [len(p) for p in seen] == [20, 20, 5]
    assert [f for page in seen for f in page] == [f"f{m}" for m in reversed(range(45))]
    assert await audit.sweep() == 1
    with pytest.raises(InvalidArgument, match="invalid page_token"):
        await audit.list("acme", page_token="not-a-token")
    with pytest.raises(InvalidArgument, match="page_size"):
        await audit.list("acme", page_size=101)


async def test_records_over_http_and_grpc(proxy: Proxy) -> None:
    auth = proxy.auth("acme")
    answer = await proxy.http.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": "bot", "messages": [{"role": "user", "content": "<script>alert(1)</script>"}]},
    )
    completion = answer.json()["id"]
    await proxy.http.post(
        "/v1/feedback", headers=auth, json={"completion_ids": [completion], "feedback": "Be brief.", "wait": True}
    )

    listed = await proxy.http.get(
        "/v1/feedback", headers=auth, params={"adapter": "bot", "state": "JOB_STATE_SUCCEEDED"}
    )
    bad = await proxy.http.get("/v1/feedback", headers=auth, params={"state": "JOB_STATE_DONE"})
    other = await proxy.http.get("/v1/feedback", headers=proxy.auth("beta"))

    [record] = listed.json()["records"]
    assert (record["feedback"], record["state"], record["new_version"]) == ("Be brief.", "JOB_STATE_SUCCEEDED", 2)
    assert record["samples"][0]["messages"][-1]["content"] == "<script>alert(1)</script>"
    assert "next_page_token" not in listed.json() or listed.json()["next_page_token"] is None
    assert bad.status_code == 400 and "unknown state 'JOB_STATE_DONE'" in bad.json()["error"]["message"]
    assert other.json()["records"] == []

    client = ProxyClient.connect(proxy.target, token=proxy.keys["acme"])
    try:
        [via_grpc], token = await client.feedback.records(adapter="bot")
        assert (via_grpc.record_id, via_grpc.state, token) == (record["record_id"], JobState.SUCCEEDED, "")
        assert via_grpc.samples[0].messages[-1].content == "<script>alert(1)</script>"
    finally:
        await client.close()
