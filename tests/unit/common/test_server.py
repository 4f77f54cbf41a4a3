"""The shared gRPC bootstrap, on a real server over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from claas.v1 import teacher_pb2, teacher_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from services.common import errors
from services.common.client import open_channel
from services.common.settings import CommonSettings
from tests.unit.common.sample_server import build

TOKEN = "internal-secret"
SAMPLE = Path(__file__).with_name("sample_server.py")


@pytest.fixture
async def server():
    srv = build(CommonSettings(port=0, internal_token=TOKEN))
    port = await srv.start()
    yield srv, f"127.0.0.1:{port}"
    await srv.stop()


async def _health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        return reply.status


async def test_health_is_serving_only_once_ready(server):
    srv, target = server
    assert await _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
    await srv.set_serving(True)
    assert await _health(target) == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_streams_the_change_to_serving(server):
    srv, target = server
    async with grpc.aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        await srv.set_serving(True)
        second = await watch.read()
        watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert second.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(server):
    _, target = server
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            r async for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        ]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "claas.v1.TeacherService" in names
    assert "grpc.health.v1.Health" in names


async def test_call_without_token_is_unauthenticated(server):
    _, target = server
    async with open_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await teacher_pb2_grpc.TeacherServiceStub(channel).Info(teacher_pb2.TeacherServiceInfoRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "internal token" in err.value.details()
    async with open_channel(target, token=TOKEN) as channel:
        reply = await teacher_pb2_grpc.TeacherServiceStub(channel).Info(teacher_pb2.TeacherServiceInfoRequest())
    assert reply.model_id == "sample"


async def test_errors_map_to_status_codes_never_unknown(server):
    _, target = server
    async with open_channel(target, token=TOKEN) as channel:
        stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Score(teacher_pb2.ScoreRequest(top_k=-1))
        with pytest.raises(grpc.aio.AioRpcError) as bug:
            await stub.Score(teacher_pb2.ScoreRequest(top_k=5))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "top_k must be >= 1, got -1"
    assert bug.value.code() == grpc.StatusCode.INTERNAL
    # The bug's text stays in the log: the caller gets the method and the request id that finds it there.
    assert bug.value.details().startswith("internal error in /claas.v1.TeacherService/Score (request ")
    assert "a bug" not in bug.value.details()


def _rpc_count(method: str, code: str) -> float:
    labels = {"service": "claas.v1.TeacherService", "method": method, "code": code}
    return REGISTRY.get_sample_value("claas_rpc_seconds_count", labels) or 0.0


async def test_every_rpc_lands_in_the_latency_histogram_by_method_and_code(server):
    _, target = server
    before = {code: _rpc_count("Score", code) for code in ("INVALID_ARGUMENT", "INTERNAL")}
    info_before = _rpc_count("Info", "OK")
    async with open_channel(target, token=TOKEN) as channel:
        stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        await stub.Info(teacher_pb2.TeacherServiceInfoRequest())
        for top_k in (-1, 5):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Score(teacher_pb2.ScoreRequest(top_k=top_k))
    assert _rpc_count("Info", "OK") - info_before == 1
    assert _rpc_count("Score", "INVALID_ARGUMENT") - before["INVALID_ARGUMENT"] == 1
    assert _rpc_count("Score", "INTERNAL") - before["INTERNAL"] == 1


def _start_process(port_file: Path, **env: str) -> subprocess.Popen:
    environment = {
        **os.environ,
        "CLAAS_PORT": "0",
        "CLAAS_INTERNAL_TOKEN": TOKEN,
        "CLAAS_LOG_FORMAT": "json",
        "CLAAS_PORT_FILE": str(port_file),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(SAMPLE)], env=environment, stderr=subprocess.PIPE, text=True, cwd=Path.cwd()
    )


def _read_until(process: subprocess.Popen, event: str) -> dict:
    """Read the process's JSON log lines until one has this event name."""
    for line in process.stderr:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            return record
    raise AssertionError(f"process ended before logging {event!r}")


async def test_request_id_is_logged_and_sigterm_lets_in_flight_call_finish(tmp_path):
    port_file = tmp_path / "port"
    process = _start_process(port_file, CLAAS_TEST_WORK_S="1.5")
    try:
        _read_until(process, "serving")
        target = f"127.0.0.1:{port_file.read_text()}"
        async with open_channel(target, token=TOKEN) as channel:
            call = teacher_pb2_grpc.TeacherServiceStub(channel).Info(
                teacher_pb2.TeacherServiceInfoRequest(), metadata=(("x-request-id", "req-4242"),)
            )
            started = await asyncio.to_thread(_read_until, process, "info_started")
            process.send_signal(signal.SIGTERM)
            reply = await call
        assert reply.model_id == "sample"
        assert started["request_id"] == "req-4242"
        access = _read_until(process, "rpc")
        assert access["request_id"] == "req-4242"
        assert access["code"] == "OK"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_wrong_setting_fails_start_naming_the_variable(tmp_path):
    process = _start_process(tmp_path / "port", CLAAS_GRACE_PERIOD_S="soon")
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "CLAAS_GRACE_PERIOD_S" in err
    assert not (tmp_path / "port").exists()


async def test_a_request_over_the_message_limit_is_too_large_not_a_rate_limit(server):
    """Hole: an oversized SubmitJob came back as 429 "rate limit", inviting the same request again."""
    _, target = server
    async with open_channel(target, token=TOKEN, max_message_mb=64) as channel:
        stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        huge = teacher_pb2.ScoreItem(response_ids=[2**30] * 5_000_000)  # 25 MB, over the server's 16 MiB
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await stub.Score(teacher_pb2.ScoreRequest(top_k=1, items=[huge]))
    error = errors.from_rpc_error(big.value)
    assert isinstance(error, errors.RequestTooLarge) and error.http_status == 413
    assert error.message.startswith("the request is too large for the service: ")
