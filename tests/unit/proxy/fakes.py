"""Test doubles of the proxy's dependencies: storage and trainer in memory, vLLM behind an httpx mock
transport (so the real ``VllmClient`` is exercised too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from claas.v1 import common_pb2, storage_pb2, trainer_pb2

from services.common.errors import Aborted, NotFound, Unavailable

BASE = "smollm2-135m"
PEFT = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"weights"}


class FakeStorage:
    """Adapters with versions of PEFT files plus the private optimizer state."""

    def __init__(self) -> None:
        self.adapters: dict[str, storage_pb2.Adapter] = {}
        self.files: dict[tuple[str, int], dict[str, bytes]] = {}
        self.downloads: list[tuple[str, int]] = []
        self.heads: asyncio.Queue[storage_pb2.WatchHeadsResponse] = asyncio.Queue()

    def add(self, name: str, versions: int = 1) -> storage_pb2.Adapter:
        self.adapters[name] = storage_pb2.Adapter(name=name, base_model=BASE, lora=common_pb2.LoraSpec(rank=8))
        for _ in range(versions):
            self.commit(name)
        return self.adapters[name]

    def commit(self, name: str) -> int:
        version = max((v for n, v in self.files if n == name), default=0) + 1
        self.files[(name, version)] = {**PEFT, "adapter_model.safetensors": f"v{version}".encode()}
        self.files[(name, version)]["optimizer.safetensors"] = b"secret"
        previous = self.adapters[name].head_version
        self.adapters[name].head_version = version
        self.heads.put_nowait(storage_pb2.WatchHeadsResponse(name=name, head_version=version, previous_head=previous))
        return version

    def _adapter(self, name: str) -> storage_pb2.Adapter:
        if name not in self.adapters:
            raise NotFound(f"no adapter {name}")
        return self.adapters[name]

    async def get_adapter(self, name: str) -> storage_pb2.Adapter:
        copy = storage_pb2.Adapter()
        copy.CopyFrom(self._adapter(name))
        return copy

    async def list_adapters(self, prefix: str = "") -> list[storage_pb2.Adapter]:
        return [a for n, a in sorted(self.adapters.items()) if n.startswith(prefix)]

    async def list_versions(self, name: str) -> list[storage_pb2.Version]:
        self._adapter(name)
        return [storage_pb2.Version(name=name, version=v) for (n, v) in sorted(self.files) if n == name]

    async def set_head(self, name: str, expected: int, version: int) -> storage_pb2.Adapter:
        adapter = self._adapter(name)
        if adapter.head_version != expected:
            raise Aborted("head moved")
        if (name, version) not in self.files:
            raise NotFound(f"no version {version} of {name}")
        adapter.head_version = version
        return await self.get_adapter(name)

    async def delete_adapter(self, name: str) -> bool:
        return self.adapters.pop(name, None) is not None

    async def read_version(
        self, name: str, version: int = 0, *, include_optimizer: bool = False
    ) -> tuple[storage_pb2.Version, dict[str, bytes]]:
        version = version or self._adapter(name).head_version
        files = dict(self.files[(name, version)])
        if not include_optimizer:
            files.pop("optimizer.safetensors")
        entries = [common_pb2.FileEntry(path=p, size=len(d)) for p, d in files.items()]
        return storage_pb2.Version(name=name, version=version, files=entries), files

    async def download_version(self, name: str, version: int, dest: Path) -> storage_pb2.Version:
        self.downloads.append((name, version))
        header, files = await self.read_version(name, version)
        for path, data in files.items():
            (dest / path).write_bytes(data)
        return header

    async def watch_heads(
        self, prefix: str = "", *, send_initial: bool = True
    ) -> AsyncIterator[storage_pb2.WatchHeadsResponse]:
        while True:
            yield await self.heads.get()


class FakeTrainer:
    """Jobs succeed by committing the next version (or fail when ``fail`` is set)."""

    def __init__(self, storage: FakeStorage) -> None:
        self.storage = storage
        self.jobs: dict[str, common_pb2.JobStatus] = {}
        self.keys: dict[str, str] = {}
        self.submitted: list[trainer_pb2.SubmitJobRequest] = []
        self.fail = False
        #: The trainer process dies while a job runs: its event stream breaks with UNAVAILABLE.
        self.lost = False

    async def init_adapter(self, name: str, lora: common_pb2.LoraSpec) -> storage_pb2.Adapter:
        return self.storage.add(name)

    async def submit_job(
        self, adapter: str, samples: list[trainer_pb2.TrainSample], config: Any, idempotency_key: str
    ) -> common_pb2.JobStatus:
        if idempotency_key in self.keys:
            return self.jobs[self.keys[idempotency_key]]
        self.submitted.append(
            trainer_pb2.SubmitJobRequest(
                adapter=adapter, samples=samples, config=config, idempotency_key=idempotency_key
            )
        )
        job_id = f"job-{len(self.jobs) + 1}"
        head = self.storage.adapters[adapter].head_version
        self.jobs[job_id] = common_pb2.JobStatus(
            job_id=job_id, adapter=adapter, state=common_pb2.JOB_STATE_QUEUED, base_version=head, total_steps=1
        )
        self.keys[idempotency_key] = job_id
        return self.jobs[job_id]

    async def get_job(self, job_id: str) -> common_pb2.JobStatus:
        if job_id not in self.jobs:
            raise NotFound(f"no job {job_id}")
        return self.jobs[job_id]

    async def watch_job(self, job_id: str) -> AsyncIterator[common_pb2.JobStatus]:
        job = await self.get_job(job_id)
        yield job
        if job.state != common_pb2.JOB_STATE_QUEUED:
            return
        if self.lost:
            job.state = common_pb2.JOB_STATE_TRAINING
            yield job
            raise Unavailable("Socket closed")
        if self.fail:
            job.state, job.error = common_pb2.JOB_STATE_FAILED, "injected failure"
        else:
            job.new_version = self.storage.commit(job.adapter)
            job.state, job.step = common_pb2.JOB_STATE_SUCCEEDED, 1
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
