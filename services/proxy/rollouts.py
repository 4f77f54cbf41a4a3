"""Rollouts: the proxy's record of each completion, exactly as vLLM produced it, kept for feedback.

One JSON object per completion at ``rollouts/<tenant>/<yyyy-mm-dd>/<completion_id>.json``. The completion
id carries its date, so a rollout is found by id alone, and a tenant's key prefix is part of every lookup,
so one tenant's id never opens another tenant's record. Prompts and answers are tenant data: they are
deleted after ``retention_days``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog

from services.common.domain import Message
from services.common.errors import NotFound
from services.common.objectstore import ObjectStore
from services.proxy.domain import Sampling

log = structlog.get_logger("claas.proxy.rollouts")

PREFIX = "rollouts/"
_ID = re.compile(r"cmpl-(\d{8})-[0-9a-f]{32}")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_completion_id(now: datetime) -> str:
    return f"cmpl-{now:%Y%m%d}-{uuid.uuid4().hex}"


def completion_date(completion_id: str) -> date | None:
    """The day a completion id was made, or None if it is not one of ours."""
    match = _ID.fullmatch(completion_id)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class Rollout:
    """One completion exactly as vLLM produced it: what feedback on it trains from."""

    completion_id: str
    tenant: str
    #: Full adapter name; empty for the base model.
    adapter: str
    version: int
    messages: tuple[Message, ...]
    #: Exactly the token ids vLLM saw and sampled; ``sampled_logprobs`` has one entry per response id.
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    sampled_logprobs: tuple[float, ...]
    sampling: Sampling
    text: str
    finish_reason: str
    created_at: datetime = field(default_factory=utcnow)

    def to_json(self) -> bytes:
        body = asdict(self)
        body["created_at"] = self.created_at.isoformat()
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Rollout:
        body: dict[str, Any] = json.loads(data)
        sampling = body["sampling"]
        return cls(
            completion_id=body["completion_id"],
            tenant=body["tenant"],
            adapter=body["adapter"],
            version=body["version"],
            messages=tuple(Message(**m) for m in body["messages"]),
            prompt_ids=tuple(body["prompt_ids"]),
            response_ids=tuple(body["response_ids"]),
            # Rollouts written before the rename keep their behaviour log-probs under "logprobs".
            sampled_logprobs=tuple(body["sampled_logprobs"] if "sampled_logprobs" in body else body["logprobs"]),
            sampling=Sampling(**{**sampling, "stop": tuple(sampling["stop"])}),
            text=body["text"],
            finish_reason=body["finish_reason"],
            created_at=datetime.fromisoformat(body["created_at"]),
        )


def rollout_key(tenant: str, completion_id: str, day: date) -> str:
    return f"{PREFIX}{tenant}/{day.isoformat()}/{completion_id}.json"


class RolloutStore:
    """Rollouts in the object store, with the most recent ones in memory in front of it."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        cache_size: int,
        retention_days: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._cache: OrderedDict[tuple[str, str], Rollout] = OrderedDict()
        self._cache_size = cache_size
        self._retention = timedelta(days=retention_days)
        self._clock = clock

    async def put(self, rollout: Rollout) -> None:
        """Write the rollout durably; returns only once a later ``get`` anywhere will find it."""
        day = completion_date(rollout.completion_id)
        if day is None:
            raise ValueError(f"not a completion id: {rollout.completion_id!r}")
        await self._store.put(rollout_key(rollout.tenant, rollout.completion_id, day), rollout.to_json())
        self._remember(rollout)

    async def get(self, tenant: str, completion_id: str) -> Rollout:
        """The caller's rollout; another tenant's, an expired or an unknown one is ``NotFound`` alike."""
        day = completion_date(completion_id)
        if day is None or day < self._cutoff():
            raise NotFound(f"completion '{completion_id}' not found", param="completion_ids")
        cached = self._cache.get((tenant, completion_id))
        if cached is not None:
            self._cache.move_to_end((tenant, completion_id))
            return cached
        try:
            data = await self._store.get(rollout_key(tenant, completion_id, day))
        except NotFound:
            raise NotFound(f"completion '{completion_id}' not found", param="completion_ids") from None
        rollout = Rollout.from_json(data)
        self._remember(rollout)
        return rollout

    async def sweep(self) -> int:
        """Delete every day folder older than the retention period; the number of rollouts deleted."""
        cutoff = self._cutoff()
        expired: dict[str, int] = {}
        for key in await self._store.list(PREFIX):
            parts = key.split("/")
            if len(parts) != 4:
                continue
            try:
                day = date.fromisoformat(parts[2])
            except ValueError:
                continue
            if day < cutoff:
                folder = f"{PREFIX}{parts[1]}/{parts[2]}/"
                expired[folder] = expired.get(folder, 0) + 1
        for folder in expired:
            await self._store.delete_prefix(folder)
        for key in [k for k, r in self._cache.items() if r.created_at.date() < cutoff]:
            del self._cache[key]
        deleted = sum(expired.values())
        if deleted:
            log.info("rollouts_swept", deleted=deleted, folders=len(expired), before=cutoff.isoformat())
        return deleted

    def _cutoff(self) -> date:
        return (self._clock() - self._retention).date()

    def _remember(self, rollout: Rollout) -> None:
        if self._cache_size == 0:
            return
        self._cache[(rollout.tenant, rollout.completion_id)] = rollout
        self._cache.move_to_end((rollout.tenant, rollout.completion_id))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
