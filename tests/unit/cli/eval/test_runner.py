"""The run's loop and its files: both arms every step, real - control in the summary, resumption after a
run died mid-step (no finished step redone, the unrecorded version rolled back)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from services.cli.eval.api import Api
from services.cli.eval.config import load_config
from services.cli.eval.preferences import builtin
from services.cli.eval.report import summarize
from services.cli.eval.rundir import RunDir
from services.cli.eval.runner import Runner
from tests.unit.cli.eval.proxy_double import ProxyDouble

FAST = ["steps=2", "rollouts_per_step=2", "general.enabled=false", "collapse.samples=2"]


def _runner(double: ProxyDouble, folder: Path, overrides: list[str] = FAST) -> Runner:
    api = Api("http://proxy.test", "key", transport=double.transport())
    config = load_config(None, overrides)
    return Runner(api, config, [builtin()["identity"]], RunDir(folder), proxy="http://proxy.test", say=lambda _: None)


def test_each_step_runs_both_arms_and_the_summary_reports_real_minus_control(tmp_path: Path) -> None:
    double = ProxyDouble()
    meta = _runner(double, tmp_path).run()
    adapters = meta["adapters"]["identity"]
    assert [name for name, _ in double.feedback_calls] == [adapters["real"], adapters["control"]] * 2
    assert {text for _, text in double.feedback_calls} == {
        builtin()["identity"].feedback,
        "Thanks! Can you also tell me a joke about cats?",
    }
    rundir = RunDir(tmp_path)
    records = rundir.read_steps()
    assert [(r["preference"], r["step"]) for r in records] == [("identity", 1), ("identity", 2)]
    assert records[-1]["real"]["version"] == 3 and records[-1]["real"]["metrics"]["sdpo_loss"] == 0.5
    summary = summarize(meta, rundir.read_json(rundir.baseline_path), records)
    compliance = summary["preferences"]["identity"]["metrics"]["compliance"]
    assert compliance == {"baseline": 0.0, "real": 1.0, "control": 0.0, "real_minus_control": 1.0}
    margin = summary["preferences"]["identity"]["metrics"]["margin"]
    assert margin["real_minus_control"] == pytest.approx(margin["real"] - margin["control"]) and margin["real"] > 0


def test_a_step_the_commit_guard_rejected_is_recorded_on_the_unchanged_head(tmp_path: Path) -> None:
    double = ProxyDouble(rejected_calls=frozenset({2}))  # step 1's control job
    _runner(double, tmp_path).run()

    first, second = RunDir(tmp_path).read_steps()
    assert first["control"]["version"] == 1 and first["control"]["metrics"]["guard_rejected"] == 1.0
    # The rejected version's training steps ran: their metrics are the step's, read from that version.
    assert first["control"]["metrics"]["sdpo_loss"] == 0.5
    assert first["real"]["metrics"]["guard_rejected"] == 0.0 and first["real"]["version"] == 2
    assert second["control"]["version"] == 3  # taught from the head it had; v2 is the rejected one


def test_a_run_killed_mid_step_resumes_without_redoing_finished_steps(tmp_path: Path) -> None:
    double = ProxyDouble(die_after_feedback=3)  # step 2's real feedback committed, then the run dies
    with pytest.raises(Exception, match="went away"):
        _runner(double, tmp_path).run()
    records = RunDir(tmp_path).read_steps()
    assert [r["step"] for r in records] == [1]
    meta = json.loads((tmp_path / "metadata.json").read_text())
    real = meta["adapters"]["identity"]["real"]
    assert double.heads[real] == 3  # committed by the feedback, never recorded

    double.die_after_feedback = None
    calls_before = len(double.feedback_calls)
    _runner(double, tmp_path).run()
    assert double.rollbacks == [(real, 2)]  # the unrecorded version is not built upon
    assert len(double.feedback_calls) - calls_before == 2  # step 2 only, both arms
    records = RunDir(tmp_path).read_steps()
    assert [r["step"] for r in records] == [1, 2]
    assert (
        records[1]["real"]["version"] == 4
        and json.loads((tmp_path / "metadata.json").read_text())["adapters"] == meta["adapters"]
    )


def test_a_finished_run_does_nothing_again_and_more_steps_extend_it(tmp_path: Path) -> None:
    double = ProxyDouble()
    _runner(double, tmp_path).run()
    calls = len(double.feedback_calls)
    _runner(double, tmp_path).run()
    assert len(double.feedback_calls) == calls
    _runner(double, tmp_path, [*FAST[1:], "steps=3"]).run()
    assert len(double.feedback_calls) == calls + 2
    assert [r["step"] for r in RunDir(tmp_path).read_steps()] == [1, 2, 3]


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    _runner(ProxyDouble(), tmp_path).run()
    with pytest.raises(Exception, match="rollouts_per_step"):
        _runner(ProxyDouble(), tmp_path, [*FAST, "rollouts_per_step=3"]).run()


def test_an_api_error_names_the_route_and_the_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "completion is empty", "type": "invalid_request_error"}})

    api = Api("http://proxy.test/v1", "key", transport=httpx.MockTransport(refuse))
    with pytest.raises(Exception, match=r"/score: HTTP 400: completion is empty"):
        api.score("m", [], "")
