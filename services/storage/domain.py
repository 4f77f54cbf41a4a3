"""Storage's own types and their JSON form in the object store (no gRPC here). ``Adapter`` and ``Version``
are also what ``services.storage.client`` hands its callers."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from services.common.domain import Lineage, LoraSpec

#: Version of the JSON layout of records and manifests.
FORMAT = 1
#: How many of the latest committing jobs an adapter's record remembers (a retry comes within minutes; each
#: entry is about 50 bytes of the record).
JOBS_REMEMBERED = 64


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AdapterRecord:
    """``adapter.json``. ``last_version`` is the highest number ever handed out (never handed out again);
    ``pending`` is the version a write has reserved but not committed yet (0: none). The record is the commit
    point: a version is visible only once a record write has cleared ``pending`` for it."""

    name: str
    base_model: str
    lora: LoraSpec
    created_at: datetime
    head: int = 0
    tags: dict[str, int] = field(default_factory=dict)
    last_version: int = 0
    pending: int = 0
    #: The storage replica that reserved ``pending``, and when (seconds since the epoch): another replica
    #: clears the reservation only once that one is gone or the write is older than any commit takes.
    pending_by: str = ""
    pending_at: float = 0.0
    #: The versions the latest jobs committed, by job id (at most ``JOBS_REMEMBERED``, oldest first): a
    #: commit retried after an ambiguous failure finds the version it already made instead of making another.
    jobs: dict[str, int] = field(default_factory=dict)
    #: Versions the retention policy is deleting: hidden at once, their folders removed next (by recovery
    #: if the process dies first).
    retiring: tuple[int, ...] = ()
    #: The committed versions still stored, and the bytes of their files: the tenant's quotas count these.
    kept_versions: int = 0
    kept_bytes: int = 0
    #: 1 for the first adapter of this name, one more for each one created again after a delete.
    generation: int = 1
    #: What the versions deleted by retention were made of (``versions``, ``feedback``, ``completions``,
    #: ``steps``, ``through``: the highest number deleted).
    retired: dict[str, int] = field(default_factory=dict)

    def unreserved(self) -> AdapterRecord:
        """The record with no version reserved."""
        return dataclasses.replace(self, pending=0, pending_by="", pending_at=0.0)

    def public(self) -> Adapter:
        """The record as callers see it."""
        committed = {job: v for job, v in self.jobs.items() if self.is_committed(v)}
        return Adapter(
            self.name,
            self.base_model,
            self.lora,
            self.head,
            dict(self.tags),
            self.created_at,
            self.generation,
            committed,
        )

    def is_committed(self, version: int) -> bool:
        return 1 <= version <= self.last_version and version != self.pending and version not in self.retiring

    def kept(self, keep_latest: int) -> set[int]:
        """The versions retention never deletes: the head, the tagged ones and the latest ``keep_latest``."""
        latest = range(max(1, self.last_version - keep_latest + 1), self.last_version + 1)
        return {self.head, *self.tags.values(), *latest} - {0}

    def retire(self, versions: list[Version]) -> AdapterRecord:
        """The record with ``versions`` hidden as ``retiring`` (beside any still there) and their lineage summed
        into ``retired``."""
        summary = dict.fromkeys(("versions", "feedback", "completions", "steps", "through"), 0) | self.retired
        for v in versions:
            summary["versions"] += 1
            summary["feedback"] += len(v.lineage.feedback)
            summary["completions"] += len(v.lineage.completion_ids)
            summary["steps"] += len(v.lineage.metrics)
            summary["through"] = max(summary["through"], v.version)
        return dataclasses.replace(
            self,
            retiring=tuple(sorted({*self.retiring, *(v.version for v in versions)})),
            kept_versions=max(0, self.kept_versions - len(versions)),
            kept_bytes=max(0, self.kept_bytes - sum(v.size for v in versions)),
            retired=summary,
        )

    def committed_by(self, job_id: str) -> int:
        """The version job ``job_id`` committed (0: none remembered)."""
        version = self.jobs.get(job_id, 0) if job_id else 0
        return version if self.is_committed(version) else 0

    def with_jobs(self, job_ids: tuple[str, ...], version: int) -> dict[str, int]:
        """``jobs`` with each of ``job_ids`` -> ``version`` added, the oldest entries dropped past the bound."""
        jobs = {k: v for k, v in self.jobs.items() if k not in job_ids} | dict.fromkeys(job_ids, version)
        return dict(list(jobs.items())[-JOBS_REMEMBERED:])

    def to_json(self) -> bytes:
        body = asdict(self)
        body["created_at"] = self.created_at.isoformat()
        return json.dumps({"format": FORMAT, **body}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AdapterRecord:
        body = json.loads(data)
        body.pop("format", None)
        lora = body.pop("lora")
        return cls(
            **body
            | {"created_at": datetime.fromisoformat(body["created_at"]), "retiring": tuple(body.get("retiring", ()))},
            lora=LoraSpec(**lora | {"target_modules": tuple(lora["target_modules"])}),
        )


@dataclass(frozen=True)
class Adapter:
    """An adapter as callers see it (the record without its write bookkeeping)."""

    name: str
    base_model: str
    lora: LoraSpec
    head_version: int
    tags: dict[str, int]
    created_at: datetime
    #: Which adapter of this name (``AdapterRecord.generation``): part of the names its versions are loaded as.
    generation: int = 1
    #: The versions the latest jobs committed, by job id: a job resumed after a crash finds it already ran.
    committed_jobs: dict[str, int] = field(default_factory=dict)

    @property
    def incarnation(self) -> str:
        """Which adapter of this name: one deleted and created again is another (its creation time)."""
        return self.created_at.isoformat()


@dataclass(frozen=True)
class Version:
    """``manifest.json``: a committed version's files and what made it."""

    name: str
    version: int
    parent_version: int
    files: tuple[FileEntry, ...]
    lineage: Lineage
    created_at: datetime

    @property
    def size(self) -> int:
        """Bytes of all its files (private ones too)."""
        return sum(f.size for f in self.files)

    def public(self, include_private: bool, private: frozenset[str]) -> Version:
        """The manifest as a caller may see it: private files only when asked for."""
        if include_private:
            return self
        files = tuple(f for f in self.files if f.path not in private)
        return dataclasses.replace(self, files=files)

    def to_json(self) -> bytes:
        body = asdict(self)
        body["created_at"] = self.created_at.isoformat()
        return json.dumps({"format": FORMAT, **body}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Version:
        body = json.loads(data)
        body.pop("format", None)
        files = tuple(FileEntry(**f) for f in body.pop("files"))
        lineage = Lineage.from_json(body.pop("lineage"))
        created = datetime.fromisoformat(body.pop("created_at"))
        return cls(**body, files=files, lineage=lineage, created_at=created)


@dataclass(frozen=True)
class UploadHeader:
    """First item of a version upload."""

    name: str
    parent_version: int
    files: tuple[FileEntry, ...]
    lineage: Lineage
    set_head: bool = True
    #: ``Adapter.incarnation`` of the adapter the writer built on ("" = not checked).
    incarnation: str = ""


@dataclass(frozen=True)
class Chunk:
    path: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class HeadEvent:
    name: str
    head: int
    previous: int
    deleted: bool = False
    #: The end of the initial heads (``name`` empty): adapters not named among them do not exist.
    synced: bool = False
    generation: int = 1
