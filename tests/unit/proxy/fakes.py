"""Test doubles of the proxy's dependencies: a trainer that commits versions through the real storage,
and vLLM behind an httpx mock transport (so the real ``VllmClient`` is exercised too). Storage itself is
the real service in process (see conftest.py); ``add`` and ``commit`` put adapters and versions into it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from services.common.domain import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, OPTIMIZER_FILE, Lineage, LoraSpec
from services.common.errors import NotFound, Unavailable
from services.storage.client import StorageClient
from services.storage.domain import Adapter
from services.trainer.convert import config_to_proto
from services.trainer.domain import JobState, JobView, Sample

BASE = "smollm2-135m"
PEFT = {ADAPTER_CONFIG_FILE: b'{"r": 8}', ADAPTER_WEIGHTS_FILE: b"weights"}


async def add(storage: StorageClient, name: str, versions: int = 1) -> Adapter:
    """A new adapter of rank 8 with ``versions`` versions."""
    await storage.create_adapter(name, BASE, LoraSpec(rank=8, alpha=16))
    for _ in range(versions):
        await commit(storage, name)
    return await storage.get_adapter(name)


async def commit(storage: StorageClient, name: str, job_id: str = "") -> int:
    """The next version of ``name``, made head: PEFT files whose weights say which version they are,
    plus the private optimizer state."""
    head = (await storage.get_adapter(name)).head_version
    files = {**PEFT, ADAPTER_WEIGHTS_FILE: f"v{head + 1}".encode(), OPTIMIZER_FILE: b"secret"}
    return (await storage.upload_version(name, head, files, Lineage(job_id=job_id))).version


async def names(storage: StorageClient) -> list[str]:
    return [a.name for a in await storage.list_adapters()]


async def head(storage: StorageClient, name: str) -> int:
    return (await storage.get_adapter(name)).head_version


@dataclasses.dataclass(frozen=True)
class Submitted:
    """What the proxy asked of the trainer."""

    adapter: str
    samples: tuple[Sample, ...]
    config: Mapping[str, Any] | None
    idempotency_key: str


class FakeTrainer:
    """Jobs succeed by committing the next version to storage (or fail when ``fail`` is set). The config
    is checked by the trainer client's own conversion, as the real trainer client does before sending."""

    def __init__(self, storage: StorageClient) -> None:
        self.storage = storage
        self.jobs: dict[str, JobView] = {}
        self.keys: dict[str, str] = {}
        self.submitted: list[Submitted] = []
        self.fail = False
        #: The trainer process dies while a job runs: its event stream breaks with UNAVAILABLE.
        self.lost = False

    async def init_adapter(self, name: str, lora: LoraSpec) -> Adapter:
        # Storage keeps explicit shapes only; this stand-in fills the blanks with fixed values.
        rank = lora.rank or 8
        explicit = dataclasses.replace(lora, rank=rank, alpha=lora.alpha or 2 * rank)
        await self.storage.create_adapter(name, BASE, explicit)
        await commit(self.storage, name)
        return await self.storage.get_adapter(name)

    async def submit_job(
        self, adapter: str, samples: Sequence[Sample], config: Mapping[str, Any] | None, idempotency_key: str
    ) -> JobView:
        config_to_proto(config)
        if idempotency_key in self.keys:
            return self.jobs[self.keys[idempotency_key]]
        self.submitted.append(Submitted(adapter, tuple(samples), config, idempotency_key))
        job_id = f"job-{len(self.jobs) + 1}"
        base = await head(self.storage, adapter)
        self.jobs[job_id] = JobView(job_id, adapter, JobState.QUEUED, base_version=base, total_steps=1)
        self.keys[idempotency_key] = job_id
        return self.jobs[job_id]

    async def get_job(self, job_id: str) -> JobView:
        if job_id not in self.jobs:
            raise NotFound(f"no job {job_id}")
        return self.jobs[job_id]

    async def watch_job(self, job_id: str) -> AsyncIterator[JobView]:
        job = await self.get_job(job_id)
        yield job
        if job.state is not JobState.QUEUED:
            return
        if self.lost:
            self.jobs[job_id] = job = dataclasses.replace(job, state=JobState.TRAINING)
            yield job
            raise Unavailable("Socket closed")
        if self.fail:
            job = dataclasses.replace(job, state=JobState.FAILED, error="injected failure")
        else:
            version = await commit(self.storage, job.adapter, job_id)
            job = dataclasses.replace(job, state=JobState.SUCCEEDED, new_version=version, step=1)
        self.jobs[job_id] = job
        yield job


class FakeVllm:
    """vLLM's OpenAI API as the proxy uses it: chat (plain and streamed, with token ids and logprobs),
    runtime LoRA loading, health. Every answer is the tokens of ``pieces``."""

    def __init__(self) -> None:
        self.up = True
        self.loaded: dict[str, str] = {}
        self.chats: list[dict[str, Any]] = []
        self.lora_calls: list[tuple[str, str]] = []
        #: Names as they are loaded, for tests that wait on background loads.
        self.loads: asyncio.Queue[str] = asyncio.Queue()
        self.pieces = ["Hello", " world", "!"]
        self.ids = [19556, 905, 17, 2]
        #: Stop a stream with a broken connection after this many content chunks.
        self.break_stream_after: int | None = None
        #: When set, streams wait for it after their first content chunk (a slow generation).
        self.hold: asyncio.Event | None = None
        #: Set when a stream's generation ended early because its connection was dropped.
        self.stream_cancelled = asyncio.Event()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client_kwargs(self) -> dict[str, Any]:
        return {"timeout_s": 5.0, "transport": self.transport()}

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content) if request.content else {}
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            cards = [{"id": BASE, "root": "/models/base"}] + [{"id": n, "root": p} for n, p in self.loaded.items()]
            return httpx.Response(200, json={"data": cards})
        if path == "/v1/load_lora_adapter":
            return self._load(body)
        if path == "/v1/unload_lora_adapter":
            self.lora_calls.append(("unload", body["lora_name"]))
            if self.loaded.pop(body["lora_name"], None) is None:
                return _error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
            return httpx.Response(200, text="Success")
        if path == "/v1/chat/completions":
            return self._chat(body)
        return _error(404, "no route")

    def _load(self, body: dict[str, Any]) -> httpx.Response:
        name, lora_path = body["lora_name"], body["lora_path"]
        self.lora_calls.append(("load", name))
        if name in self.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if not (Path(lora_path) / "adapter_config.json").is_file():
            return _error(404, f"Loading lora {name} failed: No adapter found for {lora_path}")
        self.loaded[name] = lora_path
        self.loads.put_nowait(name)
        return httpx.Response(200, text="Success")

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return [1, *(len(m["content"]) for m in messages), 198]

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        self.chats.append(body)
        if body["model"] != BASE and body["model"] not in self.loaded:
            return _error(404, f"The model `{body['model']}` does not exist.", param="model")
        if body.get("max_tokens", 0) > 2048:
            return _error(400, "max_tokens too large", param="max_tokens")
        prompt = self.prompt_ids(body["messages"])
        logprobs = [{"token": p, "logprob": -0.5 - i} for i, p in enumerate([*self.pieces, "<|im_end|>"])]
        if body.get("stream"):
            return httpx.Response(
                200, content=self._stream(prompt, logprobs), headers={"content-type": "text/event-stream"}
            )
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(self.pieces)},
            "logprobs": {"content": logprobs},
            "finish_reason": "stop",
            "token_ids": self.ids,
        }
        return httpx.Response(200, json={"id": "chatcmpl-x", "choices": [choice], "prompt_token_ids": prompt})

    async def _stream(self, prompt: list[int], logprobs: list[dict[str, Any]]) -> AsyncIterator[bytes]:
        head = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "prompt_token_ids": prompt}
        yield _sse(head)
        texts = [*self.pieces, ""]
        for index, (text, token, logprob) in enumerate(zip(texts, self.ids, logprobs, strict=True)):
            if self.break_stream_after is not None and index >= self.break_stream_after:
                raise httpx.ReadError("connection reset")
            if self.hold is not None and index == 1:
                try:
                    await self.hold.wait()
                except asyncio.CancelledError:
                    self.stream_cancelled.set()
                    raise
            finish = "stop" if index == len(texts) - 1 else None
            choice = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": {"content": [logprob]},
                "finish_reason": finish,
                "token_ids": [token],
            }
            yield _sse({"choices": [choice]})
        yield _sse({"choices": [], "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(self.ids)}})
        yield b"data: [DONE]\n\n"


def _sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


def _error(status: int, message: str, param: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "Error", "param": param, "code": status}})
