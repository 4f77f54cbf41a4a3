"""The proxy's only way to vLLM: its OpenAI HTTP API, with vLLM's failures turned into our errors.

vLLM is someone else's process: the proxy never starts or stops it. When it cannot be reached the
caller gets ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog

from services.common.auth import bearer_header
from services.common.errors import ClaasError, InvalidArgument, NotFound, Unavailable

log = structlog.get_logger("claas.proxy.vllm")

_ALREADY_LOADED = "has already been loaded"


class VllmClient:
    """One connection pool to one vLLM server, for the life of the process."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        api_key: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            # Sent on every request: vLLM checks it on /v1/* only (not /health, /tokenize), a vLLM that
            # checks more paths keeps working.
            headers=bearer_header(api_key),
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            transport=transport,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One JSON request, its JSON answer."""
        response = await self._send("POST", path, json=payload)
        return response.json()

    async def completions(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A text completion; with a token-id prompt and ``prompt_logprobs`` also the prompt's logprobs."""
        return await self.post("/v1/completions", payload)

    async def tokenize(self, payload: dict[str, Any]) -> dict[str, Any]:
        """vLLM's own tokenisation (``messages`` go through the model's chat template): ``tokens``,
        ``count`` and ``max_model_len``. Not an engine request: it runs in vLLM's API server."""
        return await self.post("/tokenize", payload)

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of a streamed answer. Errors before the first chunk raise at the first ``anext``;
        closing the iterator closes the connection, which makes vLLM abort the request."""
        request = self._http.build_request("POST", path, json=payload)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        try:
            if response.status_code != 200:
                await response.aread()
                raise _status_error(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise _error_from_body(chunk, 500)
                yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        finally:
            await response.aclose()

    async def load_lora(self, name: str, path: str) -> None:
        """Register ``name`` (one name is one immutable version) from ``path``.

        A name vLLM already serves from ``path`` is left as it is. One it serves from elsewhere (an earlier
        run whose store was wiped, say) may hold other weights: it is replaced by the files at ``path``.
        """
        body = {"lora_name": name, "lora_path": path}
        try:
            await self._send("POST", "/v1/load_lora_adapter", json=body)
        except InvalidArgument as exc:
            if _ALREADY_LOADED not in exc.message:
                raise
            if (await self.models()).get(name) == path:
                return
            log.warning("lora_replaced", vllm_name=name, path=path)
            await self.unload_lora(name)
            await self._send("POST", "/v1/load_lora_adapter", json=body)

    async def unload_lora(self, name: str) -> None:
        """Forget ``name``; a name vLLM does not know is already unloaded."""
        with contextlib.suppress(NotFound):
            await self._send("POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    async def models(self) -> dict[str, str | None]:
        """Served model names and the folder each was loaded from."""
        response = await self._send("GET", "/v1/models")
        return {card["id"]: card.get("root") for card in response.json().get("data", [])}

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code != 200:
            raise _status_error(response)
        return response


def _transport_error(exc: httpx.HTTPError) -> ClaasError:
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"vLLM did not answer in time: {type(exc).__name__}")
    return Unavailable(f"vLLM unreachable: {type(exc).__name__}: {exc}")


def _status_error(response: httpx.Response) -> ClaasError:
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:500]}}
    return _error_from_body(body, response.status_code)


def _error_from_body(body: dict[str, Any], status: int) -> ClaasError:
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    message = str(error.get("message") or f"vLLM answered HTTP {status}")
    param = error.get("param") if isinstance(error.get("param"), str) else None
    status = int(error.get("code") or status) if str(error.get("code") or "").isdigit() else status
    if status in (401, 403):
        # Our configuration, not the caller's request: the proxy's key and vLLM's differ.
        log.error("vllm_refused_key", status=status)
        return ClaasError("vLLM refused the proxy's API key: CLAAS_VLLM_API_KEY must be vLLM's --api-key")
    if status == 404:
        return NotFound(message, param=param)
    if 400 <= status < 500:
        return InvalidArgument(message, param=param)
    if status in (502, 503, 504):
        return Unavailable(f"vLLM unavailable: {message}")
    log.warning("vllm_error", status=status, error=message)
    return ClaasError(f"vLLM failed: {message}")
