"""The whole loop through `claas up` processes: chat -> feedback -> the new version is served; faults lose
nothing; the demo learns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.stack.e2e.conftest import claas

pytestmark = pytest.mark.stack

FAST = ("--steps", "1")


def _chat(stack, model: str, text: str = "Who are you?") -> dict:
    return claas("chat", text, "--model", model, "--max-tokens", "12", data_dir=stack["data_dir"])


def _wait_serving(stack, role: str, timeout_s: float = 300) -> None:
    """Block until the role's health check says SERVING again (health is the readiness signal)."""
    address = stack["addresses"][role]
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=timeout_s, wait_for_ready=True)
        for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    pytest.fail(f"{role} did not come back")


def _pid(stack, role: str) -> int:
    return json.loads((stack["data_dir"] / "stack.json").read_text())["pids"][role]


def test_feedback_makes_a_new_version_that_is_served_and_rollback_serves_the_old(stack):
    created = claas("adapters", "create", "e2e-main", data_dir=stack["data_dir"])
    assert created["name"] == "default/e2e-main"
    first = _chat(stack, "e2e-main")
    assert first["adapter"] == "default/e2e-main" and int(first["version"]) == 1

    job = claas("feedback", first["completion_id"], "Your name is Kuro.", "--wait", *FAST, data_dir=stack["data_dir"])
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert int(job["new_version"]) == 2

    assert int(_chat(stack, "e2e-main")["version"]) == 2
    versions = claas("adapters", "versions", "e2e-main", data_dir=stack["data_dir"])["versions"]
    assert [int(v["version"]) for v in versions] == [1, 2]
    assert versions[1]["lineage"]["completion_ids"] == [first["completion_id"]]

    rolled = claas("adapters", "rollback", "e2e-main", "1", data_dir=stack["data_dir"])
    assert int(rolled["head_version"]) == 1
    assert int(_chat(stack, "e2e-main")["version"]) == 1


def _metadata(stack) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack['api_key']}"),)


def _submit_and_kill_the_trainer(stack, completion_id: str) -> tuple[str, str]:
    """Submit an 8-step job, SIGKILL the trainer once it trains; the job id and how the proxy's watch ended."""
    with grpc.insecure_channel(stack["addresses"]["proxy"]) as channel:
        stub = proxy_pb2_grpc.FeedbackServiceStub(channel)
        config = common_pb2.SdpoConfig(steps=8)
        request = proxy_pb2.FeedbackServiceSubmitRequest(
            completion_ids=[completion_id], feedback="Be concise.", config=config
        )
        job = stub.Submit(request, metadata=_metadata(stack), timeout=60).job
        # Wait until the trainer is really working on it, then kill the trainer.
        watch = stub.Watch(
            proxy_pb2.FeedbackServiceWatchRequest(job_id=job.job_id), metadata=_metadata(stack), timeout=600
        )
        for event in watch:
            if event.job.state == common_pb2.JOB_STATE_TRAINING:
                os.kill(_pid(stack, "trainer"), signal.SIGKILL)
                break
        final = None
        try:
            for event in watch:
                final = event.job
        except grpc.RpcError as exc:
            return job.job_id, f"rpc:{exc.code().name}"
        return job.job_id, common_pb2.JobState.Name(final.state) if final else "none"


def _final(stack, job_id: str) -> common_pb2.JobStatus:
    with grpc.insecure_channel(stack["addresses"]["proxy"]) as channel:
        stub = proxy_pb2_grpc.FeedbackServiceStub(channel)
        request = proxy_pb2.FeedbackServiceWatchRequest(job_id=job_id)
        return list(stub.Watch(request, metadata=_metadata(stack), timeout=600))[-1].job


def test_killing_the_trainer_mid_job_resumes_the_job_after_its_restart_and_trains_it_once(stack):
    claas("adapters", "create", "e2e-crash", data_dir=stack["data_dir"])
    completion = _chat(stack, "e2e-crash")
    job_id, outcome = _submit_and_kill_the_trainer(stack, completion["completion_id"])
    # The proxy follows the job again for a moment; the trainer's restart (its model loading) takes longer,
    # so the watch ends UNAVAILABLE, never FAILED: the job is kept in the store.
    assert outcome in ("rpc:UNAVAILABLE", "JOB_STATE_SUCCEEDED"), outcome

    _wait_serving(stack, "trainer")  # `claas up` restarts it; it resumes its unfinished job
    final = _final(stack, job_id)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert (final.base_version, final.new_version) == (1, 2)
    versions = claas("adapters", "versions", "e2e-crash", data_dir=stack["data_dir"])["versions"]
    assert [int(v["version"]) for v in versions] == [1, 2]
    assert versions[1]["lineage"]["completion_ids"] == [completion["completion_id"]]


def test_a_completion_made_before_a_proxy_restart_still_takes_feedback(stack):
    claas("adapters", "create", "e2e-restart", data_dir=stack["data_dir"])
    completion = _chat(stack, "e2e-restart")
    os.kill(_pid(stack, "proxy"), signal.SIGKILL)
    _wait_serving(stack, "proxy")
    job = claas("feedback", completion["completion_id"], "Be concise.", "--wait", *FAST, data_dir=stack["data_dir"])
    assert job["state"] == "JOB_STATE_SUCCEEDED" and int(job["new_version"]) == 2


@pytest.mark.timeout(2700)  # the demo's 10 rounds (real and control) take about 20 minutes on 2 cores
def test_demo_learns_the_identity_preference(stack):
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--json", "--data-dir", str(stack["data_dir"])],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print("demo JSON:", json.dumps(summary))
    assert summary["preference"] == "identity"
    real, control = summary, summary["control"]
    # A round whose version the commit guard rejected leaves the head where it was.
    assert len(real["versions"]) + real["rejected_by_guard"] == 5
    assert len(control["versions"]) + control["rejected_by_guard"] == 5
    # The control never says the name; the whole name's probability after the name slot rises with the real
    # feedback, and more than under the control. (Exact-word passes and degenerate answers are printed, not
    # asserted: at 135M they vary from run to run, see the closing note of issue 14.)
    assert control["final"]["pass_rate"] == 0, summary
    assert real["final"]["signal"] >= 3 * real["baseline"]["signal"], summary
    assert control["real_minus_control"]["signal"] > 0, summary
