"""An optional LLM judge: any OpenAI-compatible endpoint picks the better of the baseline's and the current
answer to each held-out prompt, for the preference's feedback. The win-rate is how often "after" wins."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import httpx

from services.cli.eval.config import JudgeConfig

_PROMPT = (
    "A user asked an assistant to follow this instruction: {feedback!r}\n\n"
    "Question: {question}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Which answer follows the instruction better? Reply with the single letter A or B."
)
_LETTER = re.compile(r"\b([AB])\b")


class JudgeError(RuntimeError):
    """The judge endpoint could not be called."""


class Judge:
    """Pairwise comparisons by a chat model; the order of the two answers alternates to cancel position bias."""

    def __init__(self, config: JudgeConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.api_key_env and not key:
            raise JudgeError(f"judge.api_key_env names {config.api_key_env}, which is not set")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        root = config.base_url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(base_url=f"{root}/v1", headers=headers, timeout=300.0, transport=transport)

    def close(self) -> None:
        self._http.close()

    def prefers_first(self, feedback: str, question: str, a: str, b: str) -> float:
        """1.0 if the judge picks answer ``a``, 0.0 for ``b``, 0.5 if it names neither."""
        body = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": _PROMPT.format(feedback=feedback, question=question, a=a, b=b)}],
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
        }
        try:
            response = self._http.post("/chat/completions", json=body)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"] or ""
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise JudgeError(f"judge at {self.config.base_url}: {exc}") from None
        found = _LETTER.search(text.strip().upper())
        if not found:
            return 0.5
        return 1.0 if found.group(1) == "A" else 0.0

    def win_rate(self, feedback: str, questions: Sequence[str], before: Sequence[str], after: Sequence[str]) -> float:
        """How often the current answer beats the baseline's (ties count half)."""
        wins = []
        for index, (question, old, new) in enumerate(zip(questions, before, after, strict=True)):
            if index % 2 == 0:
                wins.append(self.prefers_first(feedback, question, new, old))
            else:
                wins.append(1.0 - self.prefers_first(feedback, question, old, new))
        return sum(wins) / len(wins) if wins else 0.0
