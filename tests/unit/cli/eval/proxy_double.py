"""A small in-memory stand-in of the proxy's public HTTP API (httpx transport), for the harness's own logic:
adapters with versions, chats whose text depends on the served version, scores, feedback that commits a
version. Its answers are made up; the real proxy is exercised by tests/stack/e2e/test_eval.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class ProxyDouble:
    heads: dict[str, int] = field(default_factory=dict)
    #: Every version of an adapter, as (version, the job that made it; "" for the first).
    versions: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    feedback_calls: list[tuple[str, str]] = field(default_factory=list)
    rollbacks: list[tuple[str, int]] = field(default_factory=list)
    completions: dict[str, str] = field(default_factory=dict)
    #: The max_tokens of every chat, in order.
    chat_max_tokens: list[int | None] = field(default_factory=list)
    #: Raise (as a dropped connection) on the chat after this many feedback calls: a run killed mid-step.
    die_after_feedback: int | None = None
    #: Feedback calls (1-based) whose job the commit guard rejects: FAILED, the head left where it was.
    rejected_calls: frozenset[int] = frozenset()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1")
        body = json.loads(request.content) if request.content else {}
        if path == "/adapters":
            if request.method == "POST":
                self.heads[body["name"]], self.versions[body["name"]] = 1, [(1, "")]
                return self._ok({"adapter": self._adapter(body["name"])})
            return self._ok({"adapters": [self._adapter(n) for n in self.heads]})
        if path.startswith("/adapters/"):
            return self._adapters(request, path.removeprefix("/adapters/"), body)
        if path == "/chat/completions":
            return self._chat(body)
        if path == "/score":
            return self._score(body)
        if path == "/feedback":
            return self._feedback(body)
        return httpx.Response(404, json={"error": {"message": "no route", "type": "not_found"}})

    def _ok(self, data: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json=data)

    def _adapter(self, name: str) -> dict[str, Any]:
        return {"name": f"default/{name}", "head_version": self.heads[name]}

    def _adapters(self, request: httpx.Request, rest: str, body: dict[str, Any]) -> httpx.Response:
        name, _, verb = rest.partition("/")
        if name not in self.heads:
            return httpx.Response(404, json={"error": {"message": "unknown", "type": "not_found"}})
        if verb == "versions":
            metrics = [{"loss": 0.5, "grad_norm": 2.0, "mean_is_ratio": 1.0, "teacher_student_gap": 0.1, "kl": 0.01}]
            return self._ok(
                {
                    "versions": [
                        {"version": v, "lineage": {"job_id": job_id, "metrics": metrics if job_id else []}}
                        for v, job_id in self.versions[name]
                    ]
                }
            )
        if verb == "rollback":
            self.heads[name] = body["version"]
            self.rollbacks.append((name, body["version"]))
        return self._ok({"adapter": self._adapter(name)})

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        if self.die_after_feedback is not None and len(self.feedback_calls) >= self.die_after_feedback:
            raise httpx.ConnectError("the double went away")
        self.chat_max_tokens.append(body.get("max_tokens"))
        model = body["model"]
        version = self.heads.get(model, 0)
        text = "I'm Kuro, here to help." if version > 1 and model.endswith("real") else "I'm an assistant. 😊"
        completion_id = f"c{len(self.completions)}"
        self.completions[completion_id] = model
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if body.get("logprobs"):
            top = [{"token": t, "logprob": lp} for t, lp in (("a", -0.1), ("b", -2.5), ("c", -3.0))]
            choice["logprobs"] = {"content": [{"token": w, "logprob": -0.1, "top_logprobs": top} for w in text.split()]}
        return self._ok({"id": completion_id, "choices": [choice], "adapter_version": version})

    def _score(self, body: dict[str, Any]) -> httpx.Response:
        tokens = [*body["completion"].split(" "), "<|im_end|>", "\n"]
        bonus = 0.5 * (self.heads.get(body["model"], 1) - 1)
        logprobs = [-1.0 + (bonus if "Kuro" in t else 0.0) for t in tokens[:-1]] + [-0.01]  # the newline: sure
        ids = [sum(map(ord, t)) for t in tokens]
        return self._ok(
            {
                "tokens": tokens,
                "token_ids": ids,
                "logprobs": logprobs,
                "logprob_sum": sum(logprobs),
                "adapter_version": 1,
            }
        )

    def _feedback(self, body: dict[str, Any]) -> httpx.Response:
        name = self.completions[body["completion_ids"][0]]
        self.feedback_calls.append((name, body["feedback"]))
        job_id = f"j{len(self.feedback_calls)}"
        new = max(v for v, _ in self.versions[name]) + 1
        self.versions[name].append((new, job_id))  # a rejected version is kept too, off the head
        if len(self.feedback_calls) in self.rejected_calls:
            error = f"FAILED_PRECONDITION: the commit guard kept version {new} off the head (drift 3 exceeds 0.2)"
            return self._ok({"job": {"job_id": job_id, "state": "JOB_STATE_FAILED", "error": error}})
        self.heads[name] = new
        job = {"job_id": job_id, "state": "JOB_STATE_SUCCEEDED", "new_version": new, "error": ""}
        return self._ok({"job": job})
