"""The proxy's public HTTP API as the harness calls it: chat, score, feedback, adapters. Nothing else.

Any deployment works: ``base_url`` is the proxy's OpenAI-compatible root (``http://host:8000``, with or
without ``/v1``) and the API key names the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

Messages = list[dict[str, str]]


class ApiError(RuntimeError):
    """A call the proxy refused or could not answer: the route, the HTTP status and the proxy's message."""

    def __init__(self, route: str, status: int, message: str) -> None:
        super().__init__(f"{route}: HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Reply:
    """One chat answer."""

    completion_id: str
    text: str
    version: int
    #: OpenAI-format ``choices[0].logprobs.content`` (empty unless asked for).
    logprobs: list[dict[str, Any]]


@dataclass(frozen=True)
class Score:
    """Teacher-forced log-probs of a completion's tokens (they end with the end-of-turn token)."""

    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float]
    logprob_sum: float
    version: int


class Api:
    """A synchronous client of one proxy for one tenant."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float = 900.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        root = base_url.rstrip("/").removesuffix("/v1")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=f"{root}/v1", headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _call(
        self, method: str, route: str, body: dict[str, Any] | None = None, *, content: bytes | None = None
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, route, json=body, content=content)
        except httpx.HTTPError as exc:
            raise ApiError(route, 0, f"{type(exc).__name__}: {exc} (is the proxy at {self._http.base_url}?)") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise ApiError(route, response.status_code, message)
        return response.json()

    def chat(
        self,
        model: str,
        messages: Messages,
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        top_logprobs: int | None = None,
    ) -> Reply:
        body: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        body["max_tokens"] = max_tokens
        if seed is not None:
            body["seed"] = seed
        if top_logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": top_logprobs}
        data = self._call("POST", "/chat/completions", body)
        choice = data["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        if top_logprobs is not None and not content and choice["message"]["content"]:
            raise ApiError("/chat/completions", 200, "asked for logprobs, the answer has none")
        return Reply(data["id"], choice["message"]["content"], int(data.get("adapter_version", 0)), content)

    def score(self, model: str, messages: Messages, completion: str) -> Score:
        data = self._call("POST", "/score", {"model": model, "messages": messages, "completion": completion})
        return Score(
            data["tokens"],
            data["token_ids"],
            data["logprobs"],
            data["logprob_sum"],
            int(data.get("adapter_version", 0)),
        )

    def create_adapter(self, name: str, lora: dict[str, int]) -> dict[str, Any]:
        return self._call("POST", "/adapters", {"name": name, "lora": lora})["adapter"]

    def list_adapters(self) -> list[dict[str, Any]]:
        return self._call("GET", "/adapters")["adapters"]

    def adapter(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/adapters/{quote(name)}")["adapter"]

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version, following the pages."""
        versions: list[dict[str, Any]] = []
        token = ""
        while True:
            query = f"?page_token={quote(token)}" if token else ""
            page = self._call("GET", f"/adapters/{quote(name)}/versions{query}")
            versions.extend(page["versions"])
            token = page.get("next_page_token") or ""
            if not token:
                return versions

    def rollback(self, name: str, version: int) -> dict[str, Any]:
        return self._call("POST", f"/adapters/{quote(name)}/rollback", {"version": version})["adapter"]

    def feedback(self, completion_ids: list[str], feedback: str, config: dict[str, Any]) -> dict[str, Any]:
        """Submit and wait until the job ended (and its version is served)."""
        body = {"completion_ids": completion_ids, "feedback": feedback, "config": config, "wait": True}
        return self._call("POST", "/feedback", body)["job"]

    def publish_file(self, run_id: str, name: str, data: bytes) -> dict[str, Any]:
        """Upload one file of a run for the dashboard (kept under the key's tenant)."""
        return self._call("PUT", f"/evals/{quote(run_id)}/{quote(name)}", content=data)
