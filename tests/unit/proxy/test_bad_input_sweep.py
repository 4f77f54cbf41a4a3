"""Every public field of every proxy RPC and HTTP route, sent a bad value on real sockets (the real storage
service, a fake trainer and vLLM, as in conftest.py): each gets a clear client error that names the field
(gRPC: never INTERNAL or UNKNOWN; HTTP: a 4xx with OpenAI's envelope, never a 5xx), and nothing changed:
the same adapters, heads and versions, no job submitted, nothing asked of vLLM."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc

from services.common.server import serving
from services.proxy.keys import add_api_key
from services.storage.client import StorageClient
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from tests.unit.proxy.conftest import Proxy, proxy_settings, running_proxy
from tests.unit.proxy.fakes import FakeTrainer, FakeVllm, add
from tests.unit.sweep import BAD_NAMES, Case, assert_client_error, names, params, refused, values

USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "bot", "messages": USER}
TEXT = {"model": "bot", "prompt": "Once"}
SCORE = {"model": "bot", "messages": USER, "completion": "hello"}
FEEDBACK = {"completion_ids": ["cmpl-none"], "feedback": "Be brief."}
#: Adapter names as a caller types them (its own tenant implied, or "tenant/adapter").
BAD_ADAPTERS = {**{k: v for k, v in BAD_NAMES.items() if k != "oversized"}, "long": "x" * 1000, "three-parts": "a/b/c"}
#: The same in a URL path ("%00" for the NUL, which a URL cannot hold as it is).
BAD_PATH_NAMES = {
    "traversal": "..%2Fx",
    "nul": "a%00b",
    "unicode": "ad%C3%A4pter",
    "upper": "Bot",
    "space": "a%20b",
    "long": "x" * 1000,
    "three-parts": "a/b/c",
    "foreign": "beta/secret",
}
BAD_INT_JSON = {"negative": -1, "over-int64": 2**63, "huge": 10**30, "string": "ten", "float": 1.5}


# --- HTTP -------------------------------------------------------------------------------------------


def post(path: str, body: Any) -> dict[str, Any]:
    return {"method": "POST", "path": path, "json": body}


def raw(path: str, content: bytes, content_type: str = "application/json", method: str = "POST") -> dict[str, Any]:
    return {"method": method, "path": path, "content": content, "headers": {"content-type": content_type}}


def get(path: str, **query: Any) -> dict[str, Any]:
    return {"method": "GET", "path": path, "params": query}


def body_cases(route: str, path: str, base: dict[str, Any], fields: dict[str, dict[str, Any]]) -> list[Case]:
    """One case per bad value of each field of a JSON body; ``None`` as a value: the field left out."""
    cases = []
    for name, bad in fields.items():
        for label, value in bad.items():
            body = {k: v for k, v in base.items() if k != name} if value is None else {**base, name: value}
            cases.append(Case(f"http-{route}-{name}-{label}", post(path, body), MENTIONS.get((name, label), name)))
    return cases


def body_shape_cases(route: str, path: str, base: dict[str, Any], mentions: str = "") -> list[Case]:
    """A body that is not the route's JSON object at all, or carries a field the route does not take."""
    return [
        Case(f"http-{route}-malformed-json", raw(path, json.dumps(base).encode()[:-1]), "JSON"),
        Case(f"http-{route}-empty-body", raw(path, b""), mentions or "body"),
        Case(f"http-{route}-array-body", post(path, [base]), mentions or "body"),
        Case(f"http-{route}-string-body", post(path, "hello"), mentions or "body"),
        Case(f"http-{route}-text-content-type", raw(path, b"hello", "text/plain"), mentions or "body"),
        Case(f"http-{route}-unknown-field", post(path, {**base, "bogus_field": 1}), "bogus_field"),
    ]


MESSAGES_BAD: dict[str, Any] = {
    "missing": None,
    "empty": [],
    "string": "hi",
    "not-objects": ["hi"],
    "no-role": [{"content": "hi"}],
    "unknown-role": [{"role": "wizard", "content": "hi"}],
    "nul-role": [{"role": "user\x00", "content": "hi"}],
    "content-number": [{"role": "user", "content": 123}],
    "content-no-parts": [{"role": "user", "content": []}],
    "content-image": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    "no-user": [{"role": "system", "content": "hi"}],
    "too-many": USER * 9,
}
#: Where a message names the field in other words: (field, case) -> the words.
MENTIONS = {
    ("messages", "no-user"): "user message",
    **{("model", k): "model|adapter" for k in ("traversal", "nul", "unicode", "long", "foreign", "unknown")},
    ("completion_ids", "unknown"): "completion",
    ("completion_ids", "traversal"): "completion",
    ("completion_ids", "nul"): "completion",
    ("completion_ids", "too-many"): "completion",
    ("max_completion_tokens", "over-int64"): "max_tokens",
    ("max_completion_tokens", "huge"): "max_tokens",
    ("max_completion_tokens", "over-cap"): "max_tokens",
    **{("name", k): "name|tenant" for k in ("foreign", "traversal", "three-parts")},
    ("version", "unknown"): "version",
}
VERSIONS_PAGE_SIZE = {"negative": -1, "string": "ten", "float": 1.5, "over-int32": 2**31, "over-int64": 2**63}
MODEL_BAD: dict[str, Any] = {
    "missing": None,
    "number": 123,
    "empty": "",
    "traversal": "../x",
    "nul": "a\x00b",
    "unicode": "ad\u00e4pter",
    "long": "x" * 1000,
    "foreign": "beta/secret",
    "unknown": "nobody",
}
SAMPLING_BAD: dict[str, dict[str, Any]] = {
    "max_tokens": BAD_INT_JSON | {"zero": 0, "over-cap": 9999},
    "temperature": {"negative": -1, "over": 3, "string": "hot"},
    "top_p": {"negative": -0.5, "zero": 0, "over": 1.5, "string": "all"},
    "seed": {"over-int64": 2**64, "string": "x", "float": 1.5},
    "stop": {"number": 123, "numbers": [1, 2], "object": {"a": 1}},
    "n": {"two": 2, "zero": 0, "string": "x"},
    "stream": {"string": "maybe", "number": 7},
    "user": {"number": 123},
}

HTTP_CASES: list[Case] = [
    # POST /v1/chat/completions
    *body_shape_cases("chat", "/v1/chat/completions", CHAT),
    *body_cases("chat", "/v1/chat/completions", CHAT, {"model": MODEL_BAD, "messages": MESSAGES_BAD}),
    *body_cases(
        "chat",
        "/v1/chat/completions",
        CHAT,
        SAMPLING_BAD
        | {
            "max_completion_tokens": BAD_INT_JSON | {"zero": 0, "over-cap": 9999},
            "logprobs": {"string": "maybe"},
            "top_logprobs": {"negative": -1, "over": 21, "over-int64": 2**63, "without-logprobs": 2},
            "stream_options": {"string": "x", "bad-flag": {"include_usage": "maybe"}},
            "strip_thinking": {"string": "maybe"},
            "tools": {"one": [{"type": "function", "function": {"name": "f"}}]},
            "response_format": {"json": {"type": "json_object"}},
        },
    ),
    # POST /v1/completions
    *body_shape_cases("text", "/v1/completions", TEXT),
    *body_cases(
        "text",
        "/v1/completions",
        TEXT,
        {
            "model": MODEL_BAD,
            "prompt": {"missing": None, "empty": "", "number": 1, "list": ["a", "b"], "token-ids": [1, 2]},
            "logprobs": {"negative": -1, "over": 6, "string": "x", "over-int64": 2**63},
            "suffix": {"text": "end"},
            "echo": {"true": True},
        }
        | SAMPLING_BAD,
    ),
    # POST /v1/score
    *body_shape_cases("score", "/v1/score", SCORE),
    *body_cases(
        "score",
        "/v1/score",
        SCORE,
        {
            "model": MODEL_BAD,
            "messages": {k: v for k, v in MESSAGES_BAD.items() if k != "no-user"},
            "completion": {"missing": None, "number": 1, "list": ["a"]},
            "version": BAD_INT_JSON | {"unknown": 99},
        },
    ),
    # GET /v1/models/{model}
    *[Case(f"http-model-{k}", get(f"/v1/models/{v}"), "model") for k, v in BAD_PATH_NAMES.items()],
    # POST /v1/feedback, GET /v1/feedback/jobs/{job_id}
    *body_shape_cases("feedback", "/v1/feedback", FEEDBACK),
    *body_cases(
        "feedback",
        "/v1/feedback",
        FEEDBACK,
        {
            "completion_ids": {
                "missing": None,
                "empty": [],
                "string": "cmpl-1",
                "numbers": [1],
                "traversal": ["../x"],
                "nul": ["a\x00b"],
                "unknown": ["cmpl-none"],
                "too-many": [f"cmpl-{i}" for i in range(200)],
            },
            "feedback": {"missing": None, "empty": "", "blank": " \n", "number": 1, "oversized": "x" * 3000},
            "config": {
                "string": "x",
                "unknown-key": {"bogus": 1},
                "steps-over-int32": {"steps": 2**31},
                "learning_rate-string": {"learning_rate": "fast"},
                "teacher_mode-unknown": {"teacher_mode": "TEACHER_MODE_NOPE"},
            },
            "wait": {"string": "maybe"},
            "idempotency_key": {"number": 1},
        },
    ),
    *[
        Case(f"http-job-{k}", get(f"/v1/feedback/jobs/{v}"), "job|not found")
        for k, v in {"unknown": "job-none", "traversal": "..%2Fx", "nul": "a%00b", "long": "j" * 1000}.items()
    ],
    # POST /v1/adapters
    *body_shape_cases("create", "/v1/adapters", {"name": "new"}),
    *body_cases(
        "create",
        "/v1/adapters",
        {"name": "new"},
        {
            "name": {"missing": None, "number": 1, "foreign": "beta/new", **BAD_ADAPTERS},
            "lora": {
                "string": "x",
                "unknown-key": {"bogus": 1},
                "rank-negative": {"rank": -1},
                "rank-over-int32": {"rank": 2**31},
                "rank-over-limit": {"rank": 4096},
                "rank-string": {"rank": "eight"},
                "alpha-negative": {"rank": 8, "alpha": -1},
                "dropout-over": {"dropout": 2},
                "target_modules-string": {"target_modules": 5},
            },
        },
    ),
    # GET/DELETE /v1/adapters/{name}, versions, rollback, export
    *[Case(f"http-get-{k}", get(f"/v1/adapters/{v}"), "adapter") for k, v in BAD_PATH_NAMES.items()],
    *[
        Case(f"http-delete-{k}", {"method": "DELETE", "path": f"/v1/adapters/{v}"}, "adapter")
        for k, v in BAD_PATH_NAMES.items()
    ],
    *[Case(f"http-versions-{k}", get(f"/v1/adapters/{v}/versions"), "adapter") for k, v in BAD_PATH_NAMES.items()],
    *values(
        "http-feedback-list-adapter",
        {"foreign": "beta/secret", "upper": "Bot", "nul": "b\x00t", "long": "b" * 100},
        lambda v: get("/v1/feedback", adapter=v),
        "adapter",
    ),
    *values(
        "http-feedback-list-state",
        {"unknown": "JOB_STATE_DONE", "lower": "succeeded", "number": "5"},
        lambda v: get("/v1/feedback", state=v),
        "state",
    ),
    *values(
        "http-feedback-list-page_size",
        VERSIONS_PAGE_SIZE | {"over-max": 101},
        lambda v: get("/v1/feedback", page_size=v),
        "page_size",
    ),
    *values(
        "http-feedback-list-page_token",
        {"garbage": "not-a-token", "traversal": "../../x", "nul": "\x00"},
        lambda v: get("/v1/feedback", page_token=v),
        "page_token",
    ),
    *values(
        "http-versions-page_size",
        VERSIONS_PAGE_SIZE,
        lambda v: get("/v1/adapters/bot/versions", page_size=v),
        "page_size",
    ),
    *values(
        "http-versions-page_token",
        {"garbage": "not-a-token", "traversal": "../../x", "nul": "\x00"},
        lambda v: get("/v1/adapters/bot/versions", page_token=v),
        "page_token",
    ),
    *[
        Case(f"http-rollback-name-{k}", post(f"/v1/adapters/{v}/rollback", {"version": 1}), "adapter")
        for k, v in BAD_PATH_NAMES.items()
    ],
    *body_shape_cases("rollback", "/v1/adapters/bot/rollback", {"version": 1}),
    *body_cases(
        "rollback",
        "/v1/adapters/bot/rollback",
        {"version": 1},
        {"version": {"missing": None, "zero": 0, "unknown": 99, **BAD_INT_JSON}},
    ),
    *[Case(f"http-export-name-{k}", get(f"/v1/adapters/{v}/export"), "adapter") for k, v in BAD_PATH_NAMES.items()],
    *values(
        "http-export-version",
        {k: v for k, v in BAD_INT_JSON.items() if k != "bool"} | {"unknown": 99},
        lambda v: get("/v1/adapters/bot/export", version=v),
        "version",
    ),
]


# --- gRPC -------------------------------------------------------------------------------------------


def chat(method: str = "Chat", **fields: Any) -> tuple[str, str, Any]:
    kind = proxy_pb2.ChatStreamRequest if method == "ChatStream" else proxy_pb2.ChatRequest
    defaults: dict[str, Any] = {"model": "bot", "messages": [common_pb2.ChatMessage(role="user", content="hi")]}
    return "inference", method, kind(**(defaults | fields))


def sampling(method: str, **fields: Any) -> tuple[str, str, Any]:
    return chat(method, sampling=proxy_pb2.SamplingParams(**fields))


def grpc_messages(method: str) -> dict[str, Any]:
    def msgs(*pairs: tuple[str, str]) -> list[common_pb2.ChatMessage]:
        return [common_pb2.ChatMessage(role=r, content=c) for r, c in pairs]

    return {
        "empty": [],
        "unknown-role": msgs(("wizard", "hi")),
        "empty-role": msgs(("", "hi")),
        "nul-role": msgs(("user\x00", "hi")),
        "no-user": msgs(("system", "hi")),
        "too-many": msgs(*[("user", "hi")] * 9),
        "oversized": msgs(("user", "x" * 5000)),
    }


def grpc_chat_cases(method: str) -> list[Case]:
    label = method.lower()
    return [
        *values(f"grpc-{label}-model", MODEL_GRPC, lambda v: chat(method, model=v), "model|adapter"),
        *values(
            f"grpc-{label}-messages", grpc_messages(method), lambda v: chat(method, messages=v), "messages|user message"
        ),
        *values(
            f"grpc-{label}-max_tokens",
            {"negative": -1, "min": -(2**31), "max": 2**31 - 1, "over-cap": 9999},
            lambda v: sampling(method, max_tokens=v),
            "max_tokens",
        ),
        *values(
            f"grpc-{label}-temperature",
            {"negative": -1.0, "over": 3.0, "nan": float("nan"), "inf": float("inf")},
            lambda v: sampling(method, temperature=v),
            "temperature",
        ),
        *values(
            f"grpc-{label}-top_p",
            {"negative": -0.5, "zero": 0.0, "over": 1.5, "nan": float("nan")},
            lambda v: sampling(method, top_p=v),
            "top_p",
        ),
        *values(f"grpc-{label}-stop", {"too-many": ["s"] * 100}, lambda v: sampling(method, stop=v), "stop"),
    ]


MODEL_GRPC = {k: v for k, v in MODEL_BAD.items() if isinstance(v, str)}


def score_rpc(**fields: Any) -> tuple[str, str, Any]:
    defaults: dict[str, Any] = {
        "model": "bot",
        "messages": [common_pb2.ChatMessage(role="user", content="hi")],
        "completion": "hello",
    }
    return "inference", "Score", proxy_pb2.InferenceServiceScoreRequest(**(defaults | fields))


def submit(**fields: Any) -> tuple[str, str, Any]:
    defaults: dict[str, Any] = {"completion_ids": ["cmpl-none"], "feedback": "Be brief."}
    return "feedback", "Submit", proxy_pb2.FeedbackServiceSubmitRequest(**(defaults | fields))


def submit_config(**fields: Any) -> tuple[str, str, Any]:
    return submit(config=common_pb2.SdpoConfig(**fields))


def adapters(method: str, kind: type, **fields: Any) -> tuple[str, str, Any]:
    return "adapters", method, kind(**fields)


def create(**fields: Any) -> tuple[str, str, Any]:
    return adapters("Create", proxy_pb2.AdaptersServiceCreateRequest, **({"name": "new"} | fields))


GRPC_NAMES = BAD_ADAPTERS | {"foreign": "beta/secret", "dot-dot": "acme/.."}

GRPC_CASES: list[Case] = [
    *grpc_chat_cases("Chat"),
    *grpc_chat_cases("ChatStream"),
    *values("grpc-score-model", MODEL_GRPC, lambda v: score_rpc(model=v), "model|adapter"),
    *values(
        "grpc-score-messages",
        {k: v for k, v in grpc_messages("Score").items() if k != "no-user"},
        lambda v: score_rpc(messages=v),
        "messages",
    ),
    *values(
        "grpc-score-version",
        {"negative": -1, "min": -(2**63), "unknown": 99},
        lambda v: score_rpc(version=v),
        "version",
    ),
    *values(
        "grpc-submit-completion_ids",
        {"empty": [], "traversal": ["../x"], "nul": ["a\x00b"], "unknown": ["cmpl-none"], "too-many": ["c"] * 200},
        lambda v: submit(completion_ids=v),
        "completion",
    ),
    *values(
        "grpc-submit-feedback",
        {"empty": "", "blank": " \n", "oversized": "x" * 5000},
        lambda v: submit(feedback=v),
        "feedback",
    ),
    # The config's ranges are the trainer's to check (its own sweep); here: non-finite floats, which proto JSON
    # spells as strings, reach that check instead of failing in the proxy (they used to be INTERNAL).
    *[
        Case(f"grpc-submit-config.{name}-{label}", submit_config(**{name: value}), "completion")
        for name in ("learning_rate", "alpha", "trust_region_mu")
        for label, value in {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}.items()
    ],
    *values(
        "grpc-watch-job_id",
        {"empty": "", "unknown": "job-none", "traversal": "../x", "nul": "a\x00b", "oversized": "j" * 5000},
        lambda v: ("feedback", "Watch", proxy_pb2.FeedbackServiceWatchRequest(job_id=v)),
        "job",
    ),
    *values("grpc-create-name", GRPC_NAMES | {"foreign": "beta/new"}, lambda v: create(name=v), "name|tenant"),
    *values(
        "grpc-create-lora",
        {
            "rank-negative": common_pb2.LoraSpec(rank=-1),
            "rank-over-limit": common_pb2.LoraSpec(rank=4096),
            "alpha-negative": common_pb2.LoraSpec(rank=8, alpha=-1),
            "dropout-over": common_pb2.LoraSpec(rank=8, dropout=2.0),
            "dropout-nan": common_pb2.LoraSpec(rank=8, dropout=float("nan")),
        },
        lambda v: create(lora=v),
        "lora",
    ),
    *values(
        "grpc-get-name", GRPC_NAMES, lambda v: adapters("Get", proxy_pb2.AdaptersServiceGetRequest, name=v), "adapter"
    ),
    *values(
        "grpc-delete-name",
        GRPC_NAMES,
        lambda v: adapters("Delete", proxy_pb2.AdaptersServiceDeleteRequest, name=v),
        "adapter",
    ),
    *values(
        "grpc-versions-name",
        GRPC_NAMES,
        lambda v: adapters("Versions", proxy_pb2.AdaptersServiceVersionsRequest, name=v),
        "adapter",
    ),
    *values(
        "grpc-feedback-list-adapter",
        {"foreign": "beta/secret", "upper": "Bot", "nul": "b\x00t"},
        lambda v: ("feedback", "List", proxy_pb2.FeedbackServiceListRequest(adapter=v)),
        "adapter",
    ),
    Case(
        "grpc-feedback-list-state-unknown",
        ("feedback", "List", proxy_pb2.FeedbackServiceListRequest(state=99)),
        "state",
    ),
    *values(
        "grpc-feedback-list-page_size",
        {"negative": -1, "over-max": 101, "min": -(2**31)},
        lambda v: ("feedback", "List", proxy_pb2.FeedbackServiceListRequest(page_size=v)),
        "page_size",
    ),
    *values(
        "grpc-feedback-list-page_token",
        {"garbage": "not-a-token", "nul": "\x00"},
        lambda v: ("feedback", "List", proxy_pb2.FeedbackServiceListRequest(page_token=v)),
        "page_token",
    ),
    *values(
        "grpc-versions-page_size",
        {"negative": -1, "min": -(2**31)},
        lambda v: adapters("Versions", proxy_pb2.AdaptersServiceVersionsRequest, name="bot", page_size=v),
        "page_size",
    ),
    *values(
        "grpc-versions-page_token",
        {"garbage": "not-a-token", "traversal": "../../x", "nul": "\x00"},
        lambda v: adapters("Versions", proxy_pb2.AdaptersServiceVersionsRequest, name="bot", page_token=v),
        "page_token",
    ),
    *values(
        "grpc-rollback-name",
        GRPC_NAMES,
        lambda v: adapters("Rollback", proxy_pb2.AdaptersServiceRollbackRequest, name=v, version=1),
        "adapter",
    ),
    *values(
        "grpc-rollback-version",
        {"zero": 0, "negative": -1, "min": -(2**63), "unknown": 99, "max": 2**63 - 1},
        lambda v: adapters("Rollback", proxy_pb2.AdaptersServiceRollbackRequest, name="bot", version=v),
        "version",
    ),
    *values(
        "grpc-export-name",
        GRPC_NAMES,
        lambda v: adapters("Export", proxy_pb2.AdaptersServiceExportRequest, name=v),
        "adapter",
    ),
    *values(
        "grpc-export-version",
        {"negative": -1, "min": -(2**63), "unknown": 99, "max": 2**63 - 1},
        lambda v: adapters("Export", proxy_pb2.AdaptersServiceExportRequest, name="bot", version=v),
        "version",
    ),
]


# --- the proxy, once for the sweep ------------------------------------------------------------------


class Sweep:
    """The proxy on loopback with its doubles, for the whole module: a refused request changes nothing."""

    def __init__(self, proxy: Proxy, storage: StorageClient, trainer: FakeTrainer, vllm: FakeVllm) -> None:
        self.proxy, self.storage, self.trainer, self.vllm = proxy, storage, trainer, vllm
        self.stubs = {
            "inference": proxy_pb2_grpc.InferenceServiceStub(proxy.channel),
            "feedback": proxy_pb2_grpc.FeedbackServiceStub(proxy.channel),
            "adapters": proxy_pb2_grpc.AdaptersServiceStub(proxy.channel),
        }

    async def snapshot(self) -> tuple:
        adapters = [(a.name, a.head_version, dict(a.tags)) for a in await self.storage.list_adapters()]
        versions = [[v.version for v in await self.storage.list_versions(name)] for name, _, _ in adapters]
        vllm = (len(self.vllm.chats), len(self.vllm.completions), len(self.vllm.tokenized))
        return adapters, versions, len(self.trainer.submitted), vllm


@pytest.fixture(scope="module")
async def sweep(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sweep]:
    folder: Path = tmp_path_factory.mktemp("sweep-proxy")
    keys_file = folder / "keys.json"
    keys = {tenant: add_api_key(keys_file, tenant) for tenant in ("acme", "beta")}
    settings = proxy_settings(folder, keys_file)
    store = StorageSettings(port=0, store_url=str(folder / "adapter-store"), store_fsync=False, grace_period_s=1)
    async with serving(build_storage(store)) as storage_server:
        storage = StorageClient.connect(f"127.0.0.1:{storage_server.port}")
        await add(storage, "acme/bot", versions=2)
        await add(storage, "beta/secret")
        trainer, vllm = FakeTrainer(storage), FakeVllm()
        try:
            async with running_proxy(settings, storage, trainer, vllm, keys) as proxy:
                yield Sweep(proxy, storage, trainer, vllm)
        finally:
            await storage.close()


@pytest.mark.parametrize("case", params(HTTP_CASES))
async def test_bad_http_input_is_a_4xx_naming_the_field_and_changes_nothing(sweep: Sweep, case: Case) -> None:
    before = await sweep.snapshot()
    spec = dict(case.request)
    headers = {**sweep.proxy.auth("acme"), **spec.pop("headers", {})}

    response = await sweep.proxy.http.request(spec.pop("method"), spec.pop("path"), headers=headers, **spec)

    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text}"
    error = response.json()["error"]
    assert names(error["message"], case.mentions), error
    assert error["type"] != "internal_error", error
    assert await sweep.snapshot() == before


@pytest.mark.parametrize("case", params(GRPC_CASES))
async def test_bad_grpc_input_is_a_client_error_naming_the_field_and_changes_nothing(sweep: Sweep, case: Case) -> None:
    before = await sweep.snapshot()
    service, method, request = case.request
    call = getattr(sweep.stubs[service], method)(request, metadata=sweep.proxy.metadata("acme"), timeout=10)

    error = await refused(call)

    assert_client_error(error, case.mentions)
    assert await sweep.snapshot() == before
