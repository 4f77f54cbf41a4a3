"""Runs of `claas eval` that a tenant can look at: those in the folder the proxy is configured with
(``<folder>/<tenant>/<run id>/``, laid there by the operator) and those published with ``claas eval
--publish`` (``evals/<tenant>/<run id>/`` in the object store). Only a run's known files (eval_files.py) are
kept or read, each checked on the way in: a published run can hold nothing a page could not show.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.errors import ClaasError, InvalidArgument, NotFound, RequestTooLarge, ResourceExhausted
from services.common.eval_files import DATA_FILES, PLOTS, PNG_SIGNATURE, RUN_FILES
from services.common.naming import NAME_PART, NAME_PART_RULE
from services.common.objectstore import ObjectStore
from services.proxy.eval_shapes import Metadata, Step, Summary, parse

log = structlog.get_logger("claas.proxy.evals")

PREFIX = "evals/"


class UnreadableRun(ClaasError):
    """A run whose files are there but not in the shape `claas eval` writes (the operator's folder may hold
    anything). HTTP 422: the request was right and the run exists, but its content cannot be shown; neither
    a 404 (it is listed) nor a 500 (nothing failed on our side, and retrying cannot help)."""

    http_status = 422
    kind = "invalid_request_error"


@dataclass(frozen=True)
class EvalRunInfo:
    """One line of the runs list; ``problem`` says why a run's metadata.json cannot be read ("" when it can)."""

    run_id: str
    started: str
    preferences: tuple[str, ...]
    published: bool
    problem: str = ""


@dataclass(frozen=True)
class EvalRun:
    """A whole run as its files say, each checked (eval_shapes.py): ``summary`` is None while it has none
    (a run still going)."""

    info: EvalRunInfo
    metadata: Metadata
    summary: Summary | None
    steps: tuple[Step, ...]
    plots: tuple[str, ...]


class _RunSource(Protocol):
    """Where runs are read from."""

    async def runs(self, tenant: str) -> list[str]: ...

    async def files(self, tenant: str, run_id: str) -> list[str]: ...

    async def read(self, tenant: str, run_id: str, name: str, *, max_bytes: int = 0) -> bytes: ...


class _Folder:
    """The operator's folder: ``<root>/<tenant>/<run id>/<file>``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def runs(self, tenant: str) -> list[str]:
        return await asyncio.to_thread(_entries, self._root / tenant, folders=True)

    async def files(self, tenant: str, run_id: str) -> list[str]:
        return await asyncio.to_thread(_entries, self._root / tenant / run_id, folders=False)

    async def read(self, tenant: str, run_id: str, name: str, *, max_bytes: int = 0) -> bytes:
        path = self._root / tenant / run_id / name

        def read() -> bytes:
            if not path.is_file():  # a folder, a pipe that would never end: not a file of a run
                raise OSError(f"{path.name} is not a file")
            with path.open("rb") as file:
                data = file.read(max_bytes + 1) if max_bytes else file.read()
            if max_bytes and len(data) > max_bytes:
                raise UnreadableRun(
                    f"{name} of eval run {run_id!r} is over {max_bytes} bytes (CLAAS_EVAL_MAX_FILE_BYTES)"
                )
            return data

        try:
            return await asyncio.to_thread(read)
        except OSError:
            raise NotFound(f"no file {name!r} in eval run {run_id!r}") from None


def _entries(folder: Path, *, folders: bool) -> list[str]:
    """The names in a folder of the operator's (its sub-folders only, or all); none where it cannot be read."""
    try:
        return [p.name for p in folder.iterdir() if p.is_dir() or not folders] if folder.is_dir() else []
    except OSError as exc:
        log.warning("eval_folder_unreadable", folder=str(folder), error=str(exc))
        return []


class _Published:
    """Runs published through the proxy, in the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def runs(self, tenant: str) -> list[str]:
        return sorted({key.split("/")[2] for key in await self._store.list(f"{PREFIX}{tenant}/")})

    async def files(self, tenant: str, run_id: str) -> list[str]:
        return [key.rsplit("/", 1)[-1] for key in await self._store.list(f"{PREFIX}{tenant}/{run_id}/")]

    async def read(self, tenant: str, run_id: str, name: str, *, max_bytes: int = 0) -> bytes:
        return await self._store.get(f"{PREFIX}{tenant}/{run_id}/{name}")  # its size was checked when published

    async def put(self, tenant: str, run_id: str, name: str, data: bytes) -> None:
        await self._store.put(f"{PREFIX}{tenant}/{run_id}/{name}", data)

    async def delete(self, tenant: str, run_id: str) -> bool:
        existed = bool(await self.files(tenant, run_id))
        await self._store.delete_prefix(f"{PREFIX}{tenant}/{run_id}/")
        return existed


class EvalRuns:
    """The caller's eval runs, newest first; a run in both places is read from the published copy."""

    def __init__(self, store: ObjectStore, *, folder: Path | None, max_file_bytes: int, max_runs: int = 0) -> None:
        self._published = _Published(store)
        self._folder = _Folder(folder) if folder is not None else None
        self.max_file_bytes = max_file_bytes
        self._max_runs = max_runs

    async def list(self, tenant: str) -> list[EvalRunInfo]:
        found: dict[str, _RunSource] = {}
        for source in self._sources():
            for run_id in await source.runs(tenant):
                if NAME_PART.fullmatch(run_id):  # the operator's folder may hold anything
                    found[run_id] = source
        infos = []
        for run_id, source in found.items():
            try:
                infos.append(_info(run_id, await self._metadata(source, tenant, run_id), source))
            except NotFound:
                continue  # no metadata.json yet: a run being published (it comes last) or just started
            except UnreadableRun as exc:  # listed all the same, saying why: its page says it too
                log.warning("eval_run_unreadable", run=run_id, error=exc.message)
                infos.append(EvalRunInfo(run_id, "", (), isinstance(source, _Published), exc.message))
            except ClaasError as exc:  # storage did not answer for this one: the others are listed
                log.warning("eval_run_unreadable", run=run_id, error=exc.message)
        return sorted(infos, key=lambda i: (i.started, i.run_id), reverse=True)

    async def get(self, tenant: str, run_id: str) -> EvalRun:
        """The run, every file of it in shape; UnreadableRun (422) naming the first file and field that is not."""
        source = await self._source_of(tenant, _check_run_id(run_id))
        present = set(await source.files(tenant, run_id))
        metadata = await self._metadata(source, tenant, run_id)
        summary = None
        if "summary.json" in present:
            (summary,) = await self._read(source, tenant, run_id, "summary.json")
        steps: Sequence[Step] = ()
        if "steps.jsonl" in present:
            data = await source.read(tenant, run_id, "steps.jsonl", max_bytes=self.max_file_bytes)
            steps = await self._read(source, tenant, run_id, "steps.jsonl", _finished(data))
        plots = tuple(p for p in PLOTS if p in present)
        return EvalRun(_info(run_id, metadata, source), metadata, summary, tuple(steps), plots)

    async def _metadata(self, source: _RunSource, tenant: str, run_id: str) -> Metadata:
        (metadata,) = await self._read(source, tenant, run_id, "metadata.json")
        return metadata

    async def _read(
        self, source: _RunSource, tenant: str, run_id: str, name: str, data: bytes | None = None
    ) -> Sequence[Any]:
        """The file's objects in their model (eval_shapes.py)."""
        if data is None:
            data = await source.read(tenant, run_id, name, max_bytes=self.max_file_bytes)
        try:
            return parse(name, data)
        except InvalidArgument as exc:
            raise UnreadableRun(f"eval run {run_id!r} cannot be shown: {exc.message}") from None

    async def plot(self, tenant: str, run_id: str, name: str) -> bytes:
        """One of the run's PNG plots."""
        if name not in PLOTS:
            raise NotFound(f"no plot {name!r}")
        source = await self._source_of(tenant, _check_run_id(run_id))
        data = await source.read(tenant, run_id, name, max_bytes=self.max_file_bytes)
        if not data.startswith(PNG_SIGNATURE):  # the operator's folder may hold anything under the name
            raise UnreadableRun(f"{name} of eval run {run_id!r} is not a PNG image")
        return data

    async def publish(self, tenant: str, run_id: str, name: str, data: bytes) -> None:
        """Keep one file of a run under the caller's tenant, once it is known to be what its name says."""
        if not NAME_PART.fullmatch(run_id) or ".." in run_id:
            raise InvalidArgument(f"invalid run id {run_id!r}: {NAME_PART_RULE}", param="run_id")
        if name not in RUN_FILES:
            raise InvalidArgument(f"{name!r} is not a file of an eval run: one of {', '.join(RUN_FILES)}", param="name")
        if len(data) > self.max_file_bytes:
            raise RequestTooLarge(
                f"{name} is {len(data)} bytes, at most {self.max_file_bytes} (CLAAS_EVAL_MAX_FILE_BYTES)"
            )
        _check_content(run_id, name, data)
        published = await self._published.runs(tenant)
        # A quota, not a lock: two new runs published at once may pass it by one each.
        if self._max_runs and run_id not in published and len(published) >= self._max_runs:
            raise ResourceExhausted(
                f"tenant {tenant!r} has published {self._max_runs} eval runs, its quota "
                "(CLAAS_MAX_EVAL_RUNS_PER_TENANT); delete one first (DELETE /v1/evals/{run_id})"
            )
        await self._published.put(tenant, run_id, name, data)
        log.info("eval_file_published", run=run_id, file=name, bytes=len(data))

    async def delete(self, tenant: str, run_id: str) -> bool:
        """Delete a published run (a run of the operator's folder stays); whether there was one."""
        deleted = await self._published.delete(tenant, _check_run_id(run_id))
        log.info("eval_run_deleted", run=run_id, deleted=deleted)
        return deleted

    def _sources(self) -> list[_RunSource]:
        return [s for s in (self._folder, self._published) if s is not None]

    async def _source_of(self, tenant: str, run_id: str) -> _RunSource:
        for source in reversed(self._sources()):
            if "metadata.json" in await source.files(tenant, run_id):
                return source
        raise NotFound(f"eval run '{run_id}' not found", param="run_id")


def _check_run_id(run_id: str) -> str:
    if not NAME_PART.fullmatch(run_id) or ".." in run_id:
        raise NotFound(f"eval run '{run_id}' not found", param="run_id")
    return run_id


def _info(run_id: str, metadata: Metadata, source: _RunSource) -> EvalRunInfo:
    return EvalRunInfo(run_id, metadata.started, tuple(metadata.adapters), isinstance(source, _Published))


def _finished(data: bytes) -> bytes:
    """steps.jsonl without a torn last line (a run still writing it): one with no newline that does not parse."""
    head, newline, last = data.rpartition(b"\n")
    if not last.strip():
        return data
    try:
        json.loads(last)
    except (ValueError, RecursionError):
        return head + newline
    return data


def _check_content(run_id: str, name: str, data: bytes) -> None:
    """The file is what its name says: a PNG, or JSON in the shape `claas eval` writes (eval_shapes.py)."""
    if name in PLOTS:
        if not data.startswith(PNG_SIGNATURE):
            raise InvalidArgument(f"{name} is not a PNG image", param="name")
        return
    assert name in DATA_FILES
    bodies = parse(name, data)
    if isinstance(bodies[0], Metadata) and bodies[0].run_id != run_id:
        raise InvalidArgument(f"metadata.json names run {bodies[0].run_id[:80]!r}, not {run_id!r}", param="run_id")
