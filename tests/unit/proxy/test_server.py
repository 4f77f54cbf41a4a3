"""The proxy's two transports on real sockets (gRPC and uvicorn in one loop) over test doubles: auth,
status codes and details, the OpenAI envelope, streaming, health."""

from __future__ import annotations

import asyncio
import io
import json
import random
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from services.common.domain import ADAPTER_WEIGHTS_FILE, OPTIMIZER_FILE, Lineage
from services.common.settings import SettingsError
from services.proxy.server import build_server
from services.proxy.settings import ProxySettings
from services.proxy.vllm import VllmClient
from services.storage.client import StorageClient
from services.storage.layout import CHUNK_BYTES
from tests.unit.proxy.conftest import Proxy
from tests.unit.proxy.fakes import PEFT, FakeVllm, commit

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def sse_events(body: str) -> list[dict | str]:
    events = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


# --- HTTP -------------------------------------------------------------------------------------------


async def test_openai_client_gets_plain_and_streamed_answers_from_an_adapter(proxy: Proxy) -> None:
    client = proxy.openai("acme")
    plain = await client.chat.completions.create(model="bot", messages=MESSAGES, temperature=0)
    stream = await client.chat.completions.create(
        model="bot", messages=MESSAGES, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert plain.choices[0].message.content == "Hello world!"
    assert (plain.model, plain.adapter, plain.adapter_version) == ("acme/bot", "acme/bot", 1)
    assert plain.usage.completion_tokens == 4
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != plain.id
    models = await client.models.list()
    assert [m.id for m in models.data] == ["smollm2-135m", "acme/bot"]
    await client.close()


async def test_every_route_needs_a_valid_key(proxy: Proxy) -> None:
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/adapters")]:
        for headers in ({}, {"authorization": "Bearer nope"}):
            response = await proxy.http.request(method, path, headers=headers, json={})
            assert response.status_code == 401, path
            assert response.json()["error"]["type"] == "authentication_error"
    response = await proxy.http.get("/v1/models", headers={"authorization": "Basic abc"})
    assert response.json()["error"] == {
        "message": "missing API key: send 'authorization: Bearer <key>'",
        "type": "authentication_error",
        "param": None,
        "code": "unauthenticated",
    }


async def test_malformed_json_and_invalid_fields_get_the_openai_envelope(proxy: Proxy) -> None:
    headers = {**proxy.auth("acme"), "content-type": "application/json"}
    broken = await proxy.http.post("/v1/chat/completions", headers=headers, content=b'{"model": "bot",')
    missing = await proxy.http.post("/v1/chat/completions", headers=headers, json={"model": "bot"})
    two = await proxy.http.post(
        "/v1/chat/completions", headers=headers, json={"model": "bot", "messages": MESSAGES, "n": 2}
    )

    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith("malformed JSON body")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    assert two.status_code == 400 and "only n=1" in two.json()["error"]["message"]


async def test_oversized_requests_get_413(proxy: Proxy, vllm: FakeVllm) -> None:
    big = {"model": "bot", "messages": [{"role": "user", "content": "x" * 5000}]}
    declared = await proxy.http.post("/v1/chat/completions", headers=proxy.auth("acme"), json=big)

    async def chunked() -> AsyncIterator[bytes]:
        yield json.dumps(big).encode()

    undeclared = await proxy.http.post("/v1/chat/completions", headers=proxy.auth("acme"), content=chunked())
    tokens = await proxy.http.post(
        "/v1/chat/completions",
        headers=proxy.auth("acme"),
        json={"model": "bot", "messages": MESSAGES, "max_tokens": 9999},
    )

    for response in (declared, undeclared, tokens):
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert "over the limit of 4096 bytes" in declared.json()["error"]["message"]
    assert tokens.json()["error"]["param"] == "max_tokens"
    assert vllm.chats == []


async def test_unknown_routes_and_foreign_models_are_404(proxy: Proxy, vllm: FakeVllm) -> None:
    route = await proxy.http.get("/v1/nothing", headers=proxy.auth("acme"))
    assert route.status_code == 404 and route.json()["error"]["type"] == "not_found_error"
    client = proxy.openai("acme")
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError, match="adapter 'beta/secret' not found"):
            await client.chat.completions.create(model="beta/secret", messages=MESSAGES, stream=stream)
    await client.close()
    assert vllm.chats == []


async def test_a_failure_mid_stream_ends_it_with_an_error_event(proxy: Proxy, vllm: FakeVllm) -> None:
    vllm.break_stream_after = 1
    body = {"model": "bot", "messages": MESSAGES, "stream": True}
    response = await proxy.http.post("/v1/chat/completions", headers=proxy.auth("acme"), json=body)

    events = sse_events(response.text)
    assert response.status_code == 200
    assert events[1]["choices"][0]["delta"] == {"content": "Hello"}
    assert events[-2]["error"]["code"] == "unavailable" and "vLLM unreachable" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]"


async def test_vllm_down_gives_503_and_not_serving(proxy: Proxy, vllm: FakeVllm) -> None:
    health = health_pb2_grpc.HealthStub(proxy.channel)
    assert (await proxy.http.get("/healthz")).status_code == 200
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING

    vllm.up = False
    assert await proxy.server.core.check_vllm() is False

    chat = await proxy.http.post(
        "/v1/chat/completions", headers=proxy.auth("acme"), json={"model": "bot", "messages": MESSAGES}
    )
    assert chat.status_code == 503 and chat.json()["error"]["type"] == "service_unavailable"
    assert (await proxy.http.get("/healthz")).status_code == 503
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.NOT_SERVING

    vllm.up = True
    assert await proxy.server.core.check_vllm() is True
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


async def test_feedback_over_http(proxy: Proxy) -> None:
    client = proxy.openai("acme")
    completion = await client.chat.completions.create(model="bot", messages=MESSAGES)
    await client.close()
    body = {"completion_ids": [completion.id], "feedback": "Shorter.", "config": {"steps": 1}, "wait": True}

    done = await proxy.http.post("/v1/feedback", headers=proxy.auth("acme"), json=body)
    job = done.json()["job"]
    status = await proxy.http.get(f"/v1/feedback/jobs/{job['job_id']}", headers=proxy.auth("acme"))
    foreign = await proxy.http.post("/v1/feedback", headers=proxy.auth("beta"), json=body)
    bad_config = await proxy.http.post("/v1/feedback", headers=proxy.auth("acme"), json={**body, "config": {"nope": 1}})
    empty = await proxy.http.post("/v1/feedback", headers=proxy.auth("acme"), json={**body, "feedback": ""})

    assert done.status_code == 200
    assert (job["state"], job["new_version"], job["adapter"]) == ("JOB_STATE_SUCCEEDED", 2, "acme/bot")
    assert status.json()["job"]["job_id"] == job["job_id"]
    assert (
        foreign.status_code == 404 and foreign.json()["error"]["message"] == f"completion '{completion.id}' not found"
    )
    assert bad_config.status_code == 400 and bad_config.json()["error"]["param"] == "config"
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "feedback"


async def test_export_streams_a_large_version_as_a_whole_zip(
    proxy: Proxy, storage: StorageClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    weights = random.Random(7).randbytes(5 * CHUNK_BYTES + 123)  # six chunks on every hop
    files = {**PEFT, "README.md": b"", ADAPTER_WEIGHTS_FILE: weights, OPTIMIZER_FILE: b"secret"}
    await storage.upload_version("acme/bot", 1, files, Lineage(job_id="big"))

    export = await proxy.http.get("/v1/adapters/bot/export", headers=proxy.auth("acme"))

    assert export.status_code == 200 and export.headers["content-disposition"].endswith('acme+bot+v2.zip"')
    archive = zipfile.ZipFile(io.BytesIO(export.content))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert archive.read(ADAPTER_WEIGHTS_FILE) == weights
    assert list((tmp_path / "temp").iterdir()) == []  # the downloaded copy is gone once sent


async def test_export_of_a_corrupt_stored_file_fails_before_any_byte_and_leaves_no_temporary_file(
    proxy: Proxy, storage: StorageClient, storage_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    await storage.upload_version("acme/bot", 1, {**PEFT, ADAPTER_WEIGHTS_FILE: b"w" * 3 * CHUNK_BYTES}, Lineage())
    stored = storage_folder / "adapters/acme/bot/versions/2" / ADAPTER_WEIGHTS_FILE
    stored.write_bytes(b"x" * stored.stat().st_size)  # same size, other bytes: found only at the file's end

    export = await proxy.http.get("/v1/adapters/bot/export", headers=proxy.auth("acme"))

    assert export.status_code == 500 and export.headers["content-type"] == "application/json"
    assert "is corrupt" in export.json()["error"]["message"]
    assert list((tmp_path / "temp").iterdir()) == []


async def test_adapters_over_http(proxy: Proxy, storage: StorageClient) -> None:
    auth = proxy.auth("acme")
    created = await proxy.http.post("/v1/adapters", headers=auth, json={"name": "helper", "lora": {"rank": 4}})
    await commit(storage, "acme/helper")
    listed = await proxy.http.get("/v1/adapters", headers=auth)
    got = await proxy.http.get("/v1/adapters/acme/helper", headers=auth)
    versions = await proxy.http.get("/v1/adapters/helper/versions", headers=auth)
    rolled = await proxy.http.post("/v1/adapters/helper/rollback", headers=auth, json={"version": 1})
    export = await proxy.http.get("/v1/adapters/helper/export", headers=auth, params={"version": 2})
    foreign = await proxy.http.get("/v1/adapters/beta/secret/export", headers=auth)
    deleted = await proxy.http.delete("/v1/adapters/helper", headers=auth)

    assert created.json()["adapter"]["name"] == "acme/helper"
    assert [a["name"] for a in listed.json()["adapters"]] == ["acme/bot", "acme/helper"]
    assert got.json()["adapter"]["head_version"] == 2
    assert [v["version"] for v in versions.json()["versions"]] == [1, 2]
    assert rolled.json()["adapter"]["head_version"] == 1
    assert export.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(export.content))
    assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert archive.read("adapter_model.safetensors") == b"v2"
    assert foreign.status_code == 404 and foreign.json()["error"]["message"] == "adapter 'beta/secret' not found"
    assert deleted.json() == {"deleted": True}


async def test_the_json_of_adapters_versions_and_jobs_is_documented(proxy: Proxy) -> None:
    schema = (await proxy.http.get("/openapi.json", headers=proxy.auth("acme"))).json()
    objects = schema["components"]["schemas"]
    assert {"AdapterObject", "VersionObject", "LineageObject", "JobObject", "StepMetricsObject"} <= set(objects)
    assert "JOB_STATE_SUCCEEDED" in objects["JobObject"]["properties"]["state"]["enum"]
    versions = schema["paths"]["/v1/adapters/{name}/versions"]["get"]["responses"]["200"]
    assert versions["content"]["application/json"]["schema"]["$ref"].endswith("/VersionListResponse")


async def test_adapter_and_version_json_has_every_field(proxy: Proxy, storage: StorageClient) -> None:
    auth = proxy.auth("acme")
    adapter = (await proxy.http.get("/v1/adapters/bot", headers=auth)).json()["adapter"]
    version = (await proxy.http.get("/v1/adapters/bot/versions", headers=auth)).json()["versions"][0]

    assert adapter["lora"] == {"rank": 8, "alpha": 16, "target_modules": [], "dropout": 0.0}
    assert (adapter["head_version"], adapter["tags"]) == (1, {})
    assert adapter["created_at"].endswith("Z") and adapter["created_at"][:4].isdigit()
    assert (version["version"], version["parent_version"]) == (1, 0)
    assert set(version["lineage"]) == {"job_id", "completion_ids", "feedback", "metrics", "extra"}
    assert sorted(f["path"] for f in version["files"]) == ["adapter_config.json", "adapter_model.safetensors"]


async def test_metrics_and_request_ids(proxy: Proxy) -> None:
    response = await proxy.http.get("/v1/models", headers={**proxy.auth("acme"), "x-request-id": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert 'claas_proxy_http_requests_total{code="200",method="GET"}' in generate_latest().decode()


async def test_metrics_and_the_schema_are_not_public_on_the_http_port(proxy: Proxy) -> None:
    """Hole: /metrics and /openapi.json answered anyone on the public port."""
    metrics = await proxy.http.get("/metrics", headers=proxy.auth("acme"))
    anonymous = await proxy.http.get("/openapi.json")
    assert metrics.status_code == 404  # Prometheus reads CLAAS_METRICS_PORT
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"


# --- gRPC -------------------------------------------------------------------------------------------


async def test_grpc_calls_without_a_key_are_unauthenticated(proxy: Proxy) -> None:
    calls = [
        proxy_pb2_grpc.InferenceServiceStub(proxy.channel).Chat(proxy_pb2.ChatRequest(model="bot")),
        proxy_pb2_grpc.FeedbackServiceStub(proxy.channel).Submit(proxy_pb2.FeedbackServiceSubmitRequest()),
        proxy_pb2_grpc.AdaptersServiceStub(proxy.channel).List(proxy_pb2.AdaptersServiceListRequest()),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_chat_and_stream(proxy: Proxy) -> None:
    stub = proxy_pb2_grpc.InferenceServiceStub(proxy.channel)
    messages = [common_pb2.ChatMessage(**m) for m in MESSAGES]
    sampling = proxy_pb2.SamplingParams(max_tokens=16, temperature=0)

    plain = await stub.Chat(
        proxy_pb2.ChatRequest(model="bot", messages=messages, sampling=sampling), metadata=proxy.metadata("acme")
    )
    stream = stub.ChatStream(
        proxy_pb2.ChatStreamRequest(model="bot", messages=messages, sampling=sampling), metadata=proxy.metadata("acme")
    )
    events = [event async for event in stream]

    assert (plain.text, plain.adapter, plain.version, plain.usage.completion_tokens) == (
        "Hello world!",
        "acme/bot",
        1,
        4,
    )
    assert [e.delta for e in events[:-1]] == ["Hello", " world", "!"]
    assert events[-1].final.text == plain.text and events[-1].final.completion_id.startswith("cmpl-")


async def test_grpc_errors_carry_their_status_and_details(proxy: Proxy, vllm: FakeVllm) -> None:
    inference = proxy_pb2_grpc.InferenceServiceStub(proxy.channel)
    feedback = proxy_pb2_grpc.FeedbackServiceStub(proxy.channel)
    messages = [common_pb2.ChatMessage(**m) for m in MESSAGES]
    too_long = proxy_pb2.SamplingParams(max_tokens=9999)
    chats = [
        (proxy_pb2.ChatRequest(model="beta/secret", messages=messages), "NOT_FOUND", "adapter 'beta/secret' not found"),
        (proxy_pb2.ChatRequest(model="bot"), "INVALID_ARGUMENT", "'messages' must hold at least one message"),
        (
            proxy_pb2.ChatRequest(model="bot", messages=messages, sampling=too_long),
            "INVALID_ARGUMENT",
            "max_tokens 9999 is over the limit of 512",
        ),
    ]
    submit = proxy_pb2.FeedbackServiceSubmitRequest
    feedbacks = [
        (["cmpl-x"], "f", "NOT_FOUND", "completion 'cmpl-x' not found"),
        (["cmpl-x"], " ", "INVALID_ARGUMENT", "'feedback' must not be empty"),
    ]
    calls = [(inference.Chat(r, metadata=proxy.metadata("acme")), code, text) for r, code, text in chats]
    calls += [
        (feedback.Submit(submit(completion_ids=ids, feedback=f), metadata=proxy.metadata("acme")), code, text)
        for ids, f, code, text in feedbacks
    ]
    for call, code, details in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (caught.value.code().name, caught.value.details()) == (code, details)
    vllm.up = False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.Chat(proxy_pb2.ChatRequest(model="bot", messages=messages), metadata=proxy.metadata("acme"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_grpc_feedback_and_adapters(proxy: Proxy, storage: StorageClient) -> None:
    meta = proxy.metadata("acme")
    inference = proxy_pb2_grpc.InferenceServiceStub(proxy.channel)
    feedback = proxy_pb2_grpc.FeedbackServiceStub(proxy.channel)
    adapters = proxy_pb2_grpc.AdaptersServiceStub(proxy.channel)
    messages = [common_pb2.ChatMessage(**m) for m in MESSAGES]
    answer = await inference.Chat(proxy_pb2.ChatRequest(model="bot", messages=messages), metadata=meta)

    submitted = await feedback.Submit(
        proxy_pb2.FeedbackServiceSubmitRequest(completion_ids=[answer.completion_id], feedback="Shorter.", wait=True),
        metadata=meta,
    )
    assert (submitted.job.state, submitted.job.new_version) == (common_pb2.JOB_STATE_SUCCEEDED, 2)
    watched = [
        e.job
        async for e in feedback.Watch(proxy_pb2.FeedbackServiceWatchRequest(job_id=submitted.job.job_id), metadata=meta)
    ]
    assert watched[-1].state == common_pb2.JOB_STATE_SUCCEEDED and watched[-1].new_version == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in feedback.Watch(
            proxy_pb2.FeedbackServiceWatchRequest(job_id=submitted.job.job_id), metadata=proxy.metadata("beta")
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    export = [m async for m in adapters.Export(proxy_pb2.AdaptersServiceExportRequest(name="bot"), metadata=meta)]
    assert export[0].header.version == 2
    assert sorted(f.path for f in export[0].header.files) == ["adapter_config.json", "adapter_model.safetensors"]
    assert {m.chunk.path: m.chunk.data for m in export[1:]}["adapter_model.safetensors"] == b"v2"
    listed = await adapters.List(proxy_pb2.AdaptersServiceListRequest(), metadata=proxy.metadata("beta"))
    assert [a.name for a in listed.adapters] == ["beta/secret"]
    rolled = await adapters.Rollback(proxy_pb2.AdaptersServiceRollbackRequest(name="bot", version=1), metadata=meta)
    assert rolled.adapter.head_version == 1
    again = await inference.Chat(proxy_pb2.ChatRequest(model="bot", messages=messages), metadata=meta)
    assert again.version == 1


def test_a_server_built_before_its_event_loop_runs_works_in_it(settings: ProxySettings, vllm: FakeVllm, keys) -> None:
    """As ``python -m services.proxy`` does: build first, then ``asyncio.run``. The gRPC clients must belong
    to the loop that serves (a storage that is down is then UNAVAILABLE, not an INTERNAL loop error)."""
    dead = settings.model_copy(update={"storage_addr": "127.0.0.1:9", "trainer_addr": "127.0.0.1:9"})
    server, ready, stop = build_server(dead, vllm=VllmClient(dead.vllm_url, **vllm.client_kwargs()))

    async def scenario() -> httpx.Response:
        await server.start()
        try:
            await ready()
            await server.set_serving(True)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as http:
                body = {"model": "bot", "messages": MESSAGES}
                return await http.post(
                    "/v1/chat/completions", headers={"authorization": f"Bearer {keys['acme']}"}, json=body
                )
        finally:
            await server.stop()
            await stop()

    response = asyncio.run(scenario())
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"


async def test_a_client_leaving_mid_stream_cancels_the_vllm_request(proxy: Proxy, vllm: FakeVllm) -> None:
    vllm.hold = asyncio.Event()  # generation stalls after "Hello" until the client is gone
    body = {"model": "bot", "messages": MESSAGES, "stream": True}
    async with proxy.http.stream("POST", "/v1/chat/completions", headers=proxy.auth("acme"), json=body) as response:
        async for line in response.aiter_lines():
            if "Hello" in line:
                break
    await asyncio.wait_for(vllm.stream_cancelled.wait(), timeout=10)

    vllm.stream_cancelled.clear()
    stub = proxy_pb2_grpc.InferenceServiceStub(proxy.channel)
    request = proxy_pb2.ChatStreamRequest(model="bot", messages=[common_pb2.ChatMessage(**m) for m in MESSAGES])
    call = stub.ChatStream(request, metadata=proxy.metadata("acme"))
    assert (await call.read()).delta == "Hello"
    call.cancel()
    await asyncio.wait_for(vllm.stream_cancelled.wait(), timeout=10)


SCORE_BODY = {"model": "helper", "messages": [{"role": "user", "content": "hi"}], "completion": "hello"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "param"),
    [
        ("post", "/v1/adapters/helper/rollback", {"json": {"version": 2**63}}, "version"),
        ("post", "/v1/adapters/helper/rollback", {"json": {"version": 0}}, "version"),
        ("post", "/v1/adapters/helper/rollback", {"json": {"version": -1}}, "version"),
        ("get", "/v1/adapters/helper/export", {"params": {"version": 2**63}}, "version"),
        ("get", "/v1/adapters/helper/export", {"params": {"version": -1}}, "version"),
        ("post", "/v1/score", {"json": {**SCORE_BODY, "version": 2**63}}, "version"),
    ],
)
async def test_versions_out_of_range_are_400_not_500(
    proxy: Proxy, storage: StorageClient, method: str, path: str, kwargs: dict, param: str
) -> None:
    """Hole: a version past int64 reached protobuf, whose range error came back as HTTP 500."""
    auth = proxy.auth("acme")
    await proxy.http.post("/v1/adapters", headers=auth, json={"name": "helper", "lora": {"rank": 4}})
    await commit(storage, "acme/helper")

    response = await getattr(proxy.http, method)(path, headers=auth, **kwargs)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert (await proxy.http.get("/v1/adapters/acme/helper", headers=auth)).json()["adapter"]["head_version"] == 2


def test_the_proxy_refuses_the_example_key_where_others_can_connect(tmp_path: Path) -> None:
    """Hole: the manifests' example keys file let "change-me" in as tenant demo."""
    example = json.loads(
        (Path(__file__).resolve().parents[3] / "k8s" / "base" / "secrets" / "api-keys.json").read_text()
    )
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_text(json.dumps(example))
    exposed = ProxySettings(
        api_keys_file=keys_file,
        http_host="0.0.0.0",
        internal_token="a-token-of-our-own",
        vllm_api_key="a-key-of-our-own",
        store_url=str(tmp_path),
    )

    with pytest.raises(
        SettingsError, match=r"lets the example key 'change-me' in while the proxy listens on 0\.0\.0\.0"
    ):
        build_server(exposed)
    build_server(exposed.model_copy(update={"http_host": "127.0.0.1"}))  # on loopback: the local stack's choice


async def test_versions_over_http_come_in_pages(proxy: Proxy, storage: StorageClient) -> None:
    auth = proxy.auth("acme")
    await proxy.http.post("/v1/adapters", headers=auth, json={"name": "paged", "lora": {"rank": 4}})
    for _ in range(2):
        await commit(storage, "acme/paged")

    seen, token, pages = [], None, 0
    while True:
        params = {"page_size": 2} | ({"page_token": token} if token else {})
        page = (await proxy.http.get("/v1/adapters/paged/versions", headers=auth, params=params)).json()
        seen += [v["version"] for v in page["versions"]]
        pages += 1
        token = page.get("next_page_token")
        if not token:
            break
    bad = await proxy.http.get("/v1/adapters/paged/versions", headers=auth, params={"page_size": -1})

    assert (seen, pages) == ([1, 2, 3], 2)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "page_size"
