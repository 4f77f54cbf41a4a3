"""Runs of `claas eval` that a tenant can look at: those in the folder the proxy is configured with
(``<folder>/<tenant>/<run id>/``, laid there by the operator) and those published with ``claas eval
--publish`` (``evals/<tenant>/<run id>/`` in the object store). Only a run's known files (eval_files.py) are
kept or read, each checked on the way in: a published run can hold nothing a page could not show.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.errors import ClaasError, InvalidArgument, NotFound, RequestTooLarge, ResourceExhausted
from services.common.eval_files import DATA_FILES, PLOTS, PNG_SIGNATURE, RUN_FILES
from services.common.naming import NAME_PART, NAME_PART_RULE
from services.common.objectstore import ObjectStore

log = structlog.get_logger("claas.proxy.evals")

PREFIX = "evals/"


@dataclass(frozen=True)
class EvalRunInfo:
    """One line of the runs list."""

    run_id: str
    started: str
    preferences: tuple[str, ...]
    published: bool


@dataclass(frozen=True)
class EvalRun:
    """A whole run as its files say: ``summary`` is None while it has none (a run still going)."""

    info: EvalRunInfo
    metadata: dict[str, Any]
    summary: dict[str, Any] | None
    steps: tuple[dict[str, Any], ...]
    plots: tuple[str, ...]


class _RunSource(Protocol):
    """Where runs are read from."""

    async def runs(self, tenant: str) -> list[str]: ...

    async def files(self, tenant: str, run_id: str) -> list[str]: ...

    async def read(self, tenant: str, run_id: str, name: str) -> bytes: ...


class _Folder:
    """The operator's folder: ``<root>/<tenant>/<run id>/<file>``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def runs(self, tenant: str) -> list[str]:
        folder = self._root / tenant
        return await asyncio.to_thread(
            lambda: [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        )

    async def files(self, tenant: str, run_id: str) -> list[str]:
        folder = self._root / tenant / run_id
        return await asyncio.to_thread(lambda: [p.name for p in folder.iterdir()] if folder.is_dir() else [])

    async def read(self, tenant: str, run_id: str, name: str) -> bytes:
        try:
            return await asyncio.to_thread((self._root / tenant / run_id / name).read_bytes)
        except OSError:
            raise NotFound(f"no file {name!r} in eval run {run_id!r}") from None


class _Published:
    """Runs published through the proxy, in the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def runs(self, tenant: str) -> list[str]:
        return sorted({key.split("/")[2] for key in await self._store.list(f"{PREFIX}{tenant}/")})

    async def files(self, tenant: str, run_id: str) -> list[str]:
        return [key.rsplit("/", 1)[-1] for key in await self._store.list(f"{PREFIX}{tenant}/{run_id}/")]

    async def read(self, tenant: str, run_id: str, name: str) -> bytes:
        return await self._store.get(f"{PREFIX}{tenant}/{run_id}/{name}")

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
                infos.append(_info(run_id, await _json(source, tenant, run_id, "metadata.json"), source))
            except ClaasError as exc:
                log.warning("eval_run_unreadable", run=run_id, error=exc.message)
        return sorted(infos, key=lambda i: (i.started, i.run_id), reverse=True)

    async def get(self, tenant: str, run_id: str) -> EvalRun:
        source = await self._source_of(tenant, _check_run_id(run_id))
        present = set(await source.files(tenant, run_id))
        metadata = await _json(source, tenant, run_id, "metadata.json")
        summary = await _json(source, tenant, run_id, "summary.json") if "summary.json" in present else None
        steps = _steps(await source.read(tenant, run_id, "steps.jsonl")) if "steps.jsonl" in present else []
        plots = tuple(p for p in PLOTS if p in present)
        return EvalRun(_info(run_id, metadata, source), metadata, summary, tuple(steps), plots)

    async def plot(self, tenant: str, run_id: str, name: str) -> bytes:
        """One of the run's PNG plots."""
        if name not in PLOTS:
            raise NotFound(f"no plot {name!r}")
        source = await self._source_of(tenant, _check_run_id(run_id))
        return await source.read(tenant, run_id, name)

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


def _info(run_id: str, metadata: dict[str, Any], source: _RunSource) -> EvalRunInfo:
    adapters = metadata.get("adapters")
    names = tuple(str(n) for n in adapters) if isinstance(adapters, dict) else ()
    return EvalRunInfo(run_id, str(metadata.get("started", "")), names, isinstance(source, _Published))


async def _json(source: _RunSource, tenant: str, run_id: str, name: str) -> dict[str, Any]:
    try:
        body = json.loads(await source.read(tenant, run_id, name))
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{name} of eval run {run_id!r} is not a JSON object")
    return body


def _steps(data: bytes) -> list[dict[str, Any]]:
    """The finished steps (a torn last line of a run still writing is left out)."""
    steps = []
    for line in data.decode(errors="replace").splitlines():
        try:
            step = json.loads(line)
        except ValueError:
            break
        if isinstance(step, dict):
            steps.append(step)
    return steps


def _check_content(run_id: str, name: str, data: bytes) -> None:
    if name in PLOTS:
        if not data.startswith(PNG_SIGNATURE):
            raise InvalidArgument(f"{name} is not a PNG image", param="name")
        return
    assert name in DATA_FILES
    try:
        text = data.decode()
        bodies = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if name.endswith(".jsonl")
            else [json.loads(text)]
        )
    except ValueError:
        raise InvalidArgument(f"{name} is not UTF-8 JSON", param="name") from None
    if not all(isinstance(b, dict) for b in bodies):
        raise InvalidArgument(f"{name} must hold JSON objects", param="name")
    if name == "metadata.json" and bodies[0].get("run_id") != run_id:
        raise InvalidArgument(f"metadata.json names run {bodies[0].get('run_id')!r}, not {run_id!r}", param="run_id")
