"""The files of a run and what they say about where it stopped.

``steps.jsonl`` is the record: one line per finished (preference, step), both arms measured, appended only
once complete and fsync'ed. A run resumes after its last line; a torn last line (the process died while
writing it) is dropped. Adapter names are fixed in ``metadata.json`` when the run starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.cli.eval.config import ConfigError, RunConfig
from services.common.eval_files import RUN_FILES

ARMS = ("real", "control")
#: Keys of the configuration a resumed run may change: more steps extend it.
RESUMABLE_CHANGES = frozenset({"steps"})


class RunDir:
    """One run's folder: metadata.json, baseline.json, steps.jsonl, summary.json and the plots."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def metadata_path(self) -> Path:
        return self.path / "metadata.json"

    @property
    def baseline_path(self) -> Path:
        return self.path / "baseline.json"

    @property
    def steps_path(self) -> Path:
        return self.path / "steps.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def read_json(self, path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Whole or not at all: a temporary file renamed over the old one."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        os.replace(tmp, path)

    def read_steps(self) -> list[dict[str, Any]]:
        """The finished steps, in order; a torn last line is dropped from the file."""
        if not self.steps_path.exists():
            return []
        lines = self.steps_path.read_text().splitlines(keepends=True)
        records, kept = [], []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # only the last line can be torn: nothing after it was written
            if not line.endswith("\n"):
                records.pop()
                break
            kept.append(line)
        if len(kept) != len(lines):
            self.steps_path.write_text("".join(kept))
        return records

    def run_files(self) -> list[Path]:
        """The run's files that exist, in the order a reader needs them (what ``--publish`` uploads)."""
        return [self.path / name for name in RUN_FILES if (self.path / name).is_file()]

    def append_step(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.steps_path.open("a") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())


def adapter_names(run_id: str, preferences: Iterable[str]) -> dict[str, dict[str, str]]:
    """The real and control adapter of each preference (storage names: lower case, at most 63 chars)."""
    names = {}
    for name in preferences:
        stem = f"eval-{run_id}-{name}".lower().replace("_", "-")[:54]
        names[name] = {"real": f"{stem}-real", "control": f"{stem}-control"}
    return names


def check_same_run(stored: dict[str, Any], config: RunConfig) -> None:
    """A run dir continues the run it holds: refuse a configuration that differs (except ``steps``)."""
    new = config.model_dump(mode="json")
    changed = sorted(k for k in set(stored) | set(new) if stored.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"the run folder holds a run with other settings ({', '.join(changed)}); "
            "use the same settings to resume it, or another --out for a new run"
        )


def pending(config: RunConfig, preferences: Iterable[str], records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (preference, step) pairs still to do, in order (steps count from 1)."""
    done = {(r["preference"], r["step"]) for r in records}
    return [(p, s) for p in preferences for s in range(1, config.steps + 1) if (p, s) not in done]


def last_versions(records: list[dict[str, Any]], preference: str) -> dict[str, int]:
    """The adapter version each arm was at after the preference's last finished step (1 before any)."""
    versions = {arm: 1 for arm in ARMS}
    for record in records:
        if record["preference"] == preference:
            versions = {arm: record[arm]["version"] for arm in ARMS}
    return versions
