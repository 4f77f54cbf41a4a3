"""The feedback audit log: one record per feedback submitted, kept durably under its tenant.

A record holds what a person needs to see what a feedback did: the feedback, each sample's prompt and answer
(from its rollout), the job, its versions, step metrics, how long each phase took, the outcome and its error.
It is written before the job is submitted (a feedback the trainer refuses is recorded with its error), then
whenever the proxy sees the job move: while it follows a feedback submitted with ``wait``, and when a record
of an unfinished job is read (the trainer is asked then). Phase times are those the proxy saw: exact while it
followed the job, else the time until the state was first read.

``audit/<tenant>/<adapter>/<newest-first stamp>-<id>.json``: a tenant's key prefix is part of every lookup,
an adapter's records go with it, and listing a prefix gives the newest first. Like rollouts, records are
tenant data, deleted after the rollouts' retention.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from services.common.domain import Message, StepMetrics
from services.common.errors import InvalidArgument, NotFound
from services.common.objectstore import ObjectStore
from services.common.pages import next_page_token, read_page_token
from services.trainer.domain import JobState, JobView

log = structlog.get_logger("claas.proxy.audit")

PREFIX = "audit/"
#: Records of one page when the caller asks for none, and the most a page holds.
PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: Stamps count down from here (milliseconds): later records sort first.
_STAMP_TOP = 10**13


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditSample:
    """One completion the feedback was about, as the rollout recorded it."""

    completion_id: str
    messages: tuple[Message, ...]
    response: str
    served_version: int
    #: What the teacher scored (the rendered hindsight prompt, then the response), once the trainer told it.
    teacher_text: str = ""


@dataclass(frozen=True)
class FeedbackRecord:
    """What one feedback did. ``state`` is the job's (``failed`` with ``error`` when the trainer refused it);
    ``phases`` are seconds spent in each state a follower saw, ``served`` the time from the job's end until
    vLLM served the new version."""

    record_id: str
    tenant: str
    adapter: str
    feedback: str
    samples: tuple[AuditSample, ...]
    submitted_at: datetime
    job_id: str = ""
    state: JobState = JobState.QUEUED
    base_version: int = 0
    new_version: int = 0
    metrics: tuple[StepMetrics, ...] = ()
    error: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    #: When the state was last seen to change (phase times are measured from it).
    changed_at: datetime | None = None

    def observe(self, job: JobView, now: datetime) -> FeedbackRecord:
        """The record after seeing ``job`` at ``now``: the time since the last change goes to the state left."""
        phases = dict(self.phases)
        if job.state is not self.state:
            since = self.changed_at or self.submitted_at
            phases[self.state.value] = phases.get(self.state.value, 0.0) + (now - since).total_seconds()
        texts = job.teacher_texts
        samples = tuple(
            dataclasses.replace(s, teacher_text=texts.get(s.completion_id, s.teacher_text)) for s in self.samples
        )
        return dataclasses.replace(
            self,
            samples=samples,
            job_id=job.job_id or self.job_id,
            state=job.state,
            base_version=job.base_version or self.base_version,
            new_version=job.new_version or self.new_version,
            metrics=job.metrics or self.metrics,
            error=job.error or self.error,
            phases=phases,
            changed_at=now if job.state is not self.state else self.changed_at,
        )

    def served(self, now: datetime) -> FeedbackRecord:
        """vLLM serves the new version from ``now``."""
        since = self.changed_at or self.submitted_at
        return dataclasses.replace(self, phases=self.phases | {"served": (now - since).total_seconds()})

    def to_json(self) -> bytes:
        body = asdict(self)
        body["state"] = self.state.value
        body["submitted_at"] = self.submitted_at.isoformat()
        body["changed_at"] = self.changed_at.isoformat() if self.changed_at else None
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FeedbackRecord:
        """The record; ValueError, TypeError or KeyError for a body not in the shape ``to_json`` writes."""
        body: dict[str, Any] = json.loads(data)
        samples = tuple(
            AuditSample(**s | {"messages": tuple(Message(**m) for m in s["messages"])}) for s in body.pop("samples")
        )
        changed = body.pop("changed_at")
        record = cls(
            **body
            | {
                "samples": samples,
                "state": JobState(body["state"]),
                "metrics": tuple(StepMetrics(**m) for m in body["metrics"]),
                "submitted_at": datetime.fromisoformat(body["submitted_at"]),
                "changed_at": datetime.fromisoformat(changed) if changed else None,
            }
        )
        # The values pages and the API use as they are (a job id as a key, a version in a URL).
        _typed(record, str, "record_id", "tenant", "adapter", "feedback", "job_id", "error")
        _typed(record, int, "base_version", "new_version")
        if not isinstance(record.phases, dict) or not all(_number(v) for v in record.phases.values()):
            raise TypeError("phases is not an object of seconds")
        for sample in record.samples:
            _typed(sample, str, "completion_id", "response", "teacher_text")
            _typed(sample, int, "served_version")
            for message in sample.messages:
                _typed(message, str, "role", "content")
        for metrics in record.metrics:
            if not all(_number(v) for v in dataclasses.astuple(metrics)):
                raise TypeError("a step's metrics are not numbers")
        return record


def _typed(obj: object, kind: type, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{name} is a {type(value).__name__}, not a {kind.__name__}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def new_record_id(now: datetime) -> str:
    """Sorts newest first: a stamp counting down, then a random part."""
    return f"{_STAMP_TOP - int(now.timestamp() * 1000):013d}-{uuid.uuid4().hex[:12]}"


def record_time(record_id: str) -> datetime | None:
    stamp, _, _ = record_id.partition("-")
    if not stamp.isdigit():
        return None
    return datetime.fromtimestamp((_STAMP_TOP - int(stamp)) / 1000, UTC)


def _folder(tenant: str, adapter: str = "") -> str:
    """Where ``tenant``'s records are, or those of its ``adapter`` ("tenant/name")."""
    return f"{PREFIX}{tenant}/{adapter.partition('/')[2]}/" if adapter else f"{PREFIX}{tenant}/"


def record_key(record: FeedbackRecord) -> str:
    return f"{_folder(record.tenant, record.adapter)}{record.record_id}.json"


class AuditLog:
    """Feedback records in the object store. ``list`` pages through a tenant's, newest first."""

    def __init__(self, store: ObjectStore, *, retention_days: int, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._retention = timedelta(days=retention_days)
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    async def put(self, record: FeedbackRecord) -> None:
        await self._store.put(record_key(record), record.to_json())

    async def list(
        self, tenant: str, *, adapter: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[FeedbackRecord], str]:
        """A page of ``tenant``'s records (of ``adapter`` only, if given), newest first, and the next page's
        token ("" after the last)."""
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be in 0..{MAX_PAGE_SIZE}, got {page_size}", param="page_size")
        after = read_page_token(page_token, _check_record_id, "")
        prefix = _folder(tenant, adapter)
        cutoff = self._clock() - self._retention
        ids = {}
        for key in await self._store.list(prefix):
            record_id = key.rsplit("/", 1)[-1].removesuffix(".json")
            when = record_time(record_id)
            if when is not None and when >= cutoff and record_id > after:
                ids[record_id] = key
        ordered = sorted(ids)
        size = page_size or PAGE_SIZE
        page = ordered[:size]
        loaded = await asyncio.gather(*(self._load(ids[i]) for i in page))
        records = [r for r in loaded if r is not None]
        return records, next_page_token(page[-1]) if len(ordered) > size else ""

    async def _load(self, key: str) -> FeedbackRecord | None:
        """A stored record, or None (logged) for one that went (swept meanwhile) or cannot be read: written
        torn, edited by hand or by another version of the proxy. One such record leaves the others readable."""
        try:
            return FeedbackRecord.from_json(await self._store.get(key))
        except NotFound:
            return None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            log.warning("audit_record_unreadable", key=key, error=f"{type(exc).__name__}: {exc}"[:300])
            return None

    async def delete_adapter(self, tenant: str, adapter: str) -> None:
        """Every record of the adapter (``tenant/name``) goes with it."""
        await self._store.delete_prefix(_folder(tenant, adapter))

    async def sweep(self) -> int:
        """Delete the records older than the retention period; how many."""
        cutoff = self._clock() - self._retention
        expired = []
        for key in await self._store.list(PREFIX):
            when = record_time(key.rsplit("/", 1)[-1].removesuffix(".json"))
            if when is not None and when < cutoff:
                expired.append(key)
        for key in expired:
            await self._store.delete(key)
        if expired:
            log.info("audit_records_swept", deleted=len(expired))
        return len(expired)


def _check_record_id(record_id: str) -> str:
    if record_time(record_id) is None:
        raise ValueError(record_id)
    return record_id
