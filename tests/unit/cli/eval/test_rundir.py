"""steps.jsonl is the record of a run: what it says is done is done, a torn last line is not."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.eval.config import load_config
from services.cli.eval.rundir import RunDir, adapter_names, last_versions, pending


def _record(step: int, real: int, control: int) -> dict:
    return {"preference": "identity", "step": step, "real": {"version": real}, "control": {"version": control}}


def test_a_torn_last_line_is_dropped_and_the_file_repaired(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.append_step(_record(1, 2, 2))
    with rundir.steps_path.open("a") as file:
        file.write(json.dumps(_record(2, 3, 3))[:25])  # the process died while writing
    assert [r["step"] for r in rundir.read_steps()] == [1]
    rundir.append_step(_record(2, 4, 3))
    assert [(r["step"], r["real"]["version"]) for r in rundir.read_steps()] == [(1, 2), (2, 4)]


def test_a_complete_line_without_its_newline_counts_as_torn(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.append_step(_record(1, 2, 2))
    with rundir.steps_path.open("a") as file:
        file.write(json.dumps(_record(2, 3, 3)))
    assert [r["step"] for r in rundir.read_steps()] == [1]


def test_pending_steps_and_the_versions_to_continue_from() -> None:
    config = load_config(None, ["steps=3"])
    records = [_record(1, 2, 2), _record(2, 3, 4)]
    assert pending(config, ["identity", "concise"], records) == [
        ("identity", 3),
        ("concise", 1),
        ("concise", 2),
        ("concise", 3),
    ]
    assert last_versions(records, "identity") == {"real": 3, "control": 4}
    assert last_versions(records, "concise") == {"real": 1, "control": 1}


def test_adapter_names_are_valid_storage_names() -> None:
    names = adapter_names("20261201-120000-abcd", ["no_emoji", "x" * 80])
    assert names["no_emoji"] == {
        "real": "eval-20261201-120000-abcd-no-emoji-real",
        "control": "eval-20261201-120000-abcd-no-emoji-control",
    }
    assert all(len(n) <= 63 and n == n.lower() for arms in names.values() for n in arms.values())
