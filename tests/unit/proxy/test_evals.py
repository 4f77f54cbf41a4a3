"""Eval runs behind the dashboard: a published file is kept only when it is one of a run's files and is what
its name says, under the caller's tenant; runs from the configured folder and published ones are listed
newest first."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound, RequestTooLarge, ResourceExhausted
from services.common.eval_files import PNG_SIGNATURE
from services.common.objectstore import LocalFolderStore
from services.proxy.evals import EvalRuns, UnreadableRun

PNG = PNG_SIGNATURE + b"rest of an image"


def _meta(run_id: str, started: str) -> bytes:
    return json.dumps({"run_id": run_id, "started": started, "adapters": {"identity": {}}}).encode()


def _step(number: int, **changes: object) -> bytes:
    """One line of steps.jsonl as `claas eval` writes it, with ``changes``."""
    arm = {"version": number + 1, "metrics": {"margin": 0.5}, "alerts": []}
    record = {"preference": "identity", "step": number, "real": arm, "control": arm} | changes
    return json.dumps(record).encode() + b"\n"


@pytest.fixture
def runs(tmp_path: Path) -> EvalRuns:
    folder = tmp_path / "runs" / "acme" / "20261101-000000-aaaa"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_bytes(_meta(folder.name, "2026-11-01T00:00:00Z"))
    (folder / "sdpo.png").write_bytes(PNG)
    (tmp_path / "runs" / "acme" / "Not A Run").mkdir()
    return EvalRuns(LocalFolderStore(tmp_path / "store", fsync=False), folder=tmp_path / "runs", max_file_bytes=2048)


async def test_published_and_folder_runs_are_listed_newest_first_per_tenant(runs: EvalRuns) -> None:
    run_id = "20261201-000000-bbbb"
    await runs.publish("acme", run_id, "summary.json", b'{"preferences": {}}')
    await runs.publish("acme", run_id, "steps.jsonl", _step(1) + _step(2))
    await runs.publish("acme", run_id, "margins.png", PNG)
    await runs.publish("acme", run_id, "metadata.json", _meta(run_id, "2026-12-01T00:00:00Z"))

    listed = await runs.list("acme")
    assert [(r.run_id, r.published) for r in listed] == [(run_id, True), ("20261101-000000-aaaa", False)]
    run = await runs.get("acme", run_id)
    assert run.summary is not None and run.summary.preferences == {}
    assert ([s.step for s in run.steps], run.plots) == ([1, 2], ("margins.png",))
    assert await runs.plot("acme", "20261101-000000-aaaa", "sdpo.png") == PNG
    assert await runs.list("beta") == []
    with pytest.raises(NotFound):
        await runs.get("beta", run_id)
    with pytest.raises(NotFound):
        await runs.plot("acme", run_id, "metadata.json")  # only plots are served as images


async def test_a_published_file_must_be_a_known_file_of_the_run_holding_what_its_name_says(
    runs: EvalRuns, tmp_path: Path
) -> None:
    run_id = "20261201-000000-bbbb"
    with pytest.raises(InvalidArgument, match="not a file of an eval run"):
        await runs.publish("acme", run_id, "index.html", b"<script>")
    with pytest.raises(InvalidArgument, match="not a PNG"):
        await runs.publish("acme", run_id, "sdpo.png", b"<svg onload=alert(1)>")
    with pytest.raises(InvalidArgument, match="not UTF-8 JSON"):
        await runs.publish("acme", run_id, "summary.json", b"<html>")
    with pytest.raises(InvalidArgument, match="JSON objects"):
        await runs.publish("acme", run_id, "steps.jsonl", b"[1]\n")
    with pytest.raises(InvalidArgument, match="names run"):
        await runs.publish("acme", run_id, "metadata.json", _meta("another-run", ""))
    with pytest.raises(RequestTooLarge, match="at most 2048"):
        await runs.publish("acme", run_id, "margins.png", PNG + bytes(2048))
    for bad in ("../beta", "Run", "a" * 64, ".hidden"):
        with pytest.raises(InvalidArgument, match="invalid run id"):
            await runs.publish("acme", bad, "summary.json", b"{}")
    assert not (tmp_path / "store").exists()  # nothing refused was kept


async def test_a_tenant_publishes_up_to_its_quota_of_runs_and_deletes_them(tmp_path: Path) -> None:
    runs = EvalRuns(LocalFolderStore(tmp_path, fsync=False), folder=None, max_file_bytes=2048, max_runs=1)
    await runs.publish("acme", "run-1", "metadata.json", _meta("run-1", ""))
    await runs.publish("acme", "run-1", "sdpo.png", PNG)  # more of the same run
    await runs.publish("beta", "run-2", "metadata.json", _meta("run-2", ""))  # another tenant's quota
    with pytest.raises(ResourceExhausted, match="CLAAS_MAX_EVAL_RUNS_PER_TENANT"):
        await runs.publish("acme", "run-2", "metadata.json", _meta("run-2", ""))

    assert not await runs.delete("beta", "run-1")
    assert await runs.delete("acme", "run-1")
    assert await runs.list("acme") == []
    await runs.publish("acme", "run-2", "metadata.json", _meta("run-2", ""))
    assert [r.run_id for r in await runs.list("acme")] == ["run-2"]


def _summary(**row: object) -> bytes:
    metrics = {"margin": {"baseline": 0.0, "real": 0.8, "control": 0.2, "real_minus_control": 0.6} | row}
    return json.dumps({"preferences": {"identity": {"steps_done": 2, "metrics": metrics}}}).encode()


def _meta_with(**fields: object) -> bytes:
    return json.dumps({"run_id": "r", "started": "", "adapters": {}} | fields).encode()


NUM = "expected a JSON number.*, not"


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("summary.json", b'{"preferences": []}', r"summary\.json .*: preferences: expected a JSON object, not an ar"),
        ("summary.json", _summary(real="0.8"), rf"summary\.json .*identity\.metrics\.margin\.real: {NUM} a str"),
        ("summary.json", _summary(real=10**400), rf"summary\.json .*margin\.real: {NUM} a number too large"),
        ("summary.json", _summary(real=True), rf"summary\.json .*margin\.real: {NUM} true"),
        ("summary.json", b"[" * 1500, r"summary\.json is not UTF-8 JSON: nested too deep"),
        ("steps.jsonl", _step(1) + _step(2, real="v3"), r"steps\.jsonl line 2 .*: real: expected a JSON object"),
        ("steps.jsonl", _step(1, step=1.5), r"steps\.jsonl line 1 .*: step: expected a whole number, not a number w"),
        ("steps.jsonl", _step(1, preference="\ud800"), r"steps\.jsonl line 1 .*preference: .*lone surrogate"),
        ("metadata.json", _meta_with(started=5), r"metadata\.json .*: started: expected a string, not a whole number"),
        ("metadata.json", _meta_with(adapters=[]), r"metadata\.json .*: adapters: expected a JSON object"),
        ("metadata.json", b'{"run_id": "r", "started": "\xff", "adapters": {}}', r"metadata\.json is not UTF-8"),
        ("baseline.json", b'{"identity": {"version": "1", "metrics": {}}}', r"baseline\.json .*identity\.version"),
    ],
)  # fmt: skip
async def test_a_published_data_file_not_in_the_shape_claas_eval_writes_is_refused_naming_the_file_and_field(
    runs: EvalRuns, tmp_path: Path, name: str, data: bytes, says: str
) -> None:
    with pytest.raises(InvalidArgument, match=says) as refused:
        await runs.publish("acme", "r", name, data)
    assert refused.value.http_status == 400  # what `claas eval --publish` gets, with the message
    assert not (tmp_path / "store").exists()  # nothing refused was kept


async def test_nan_and_infinity_metrics_are_kept_as_json_dumps_writes_them(runs: EvalRuns) -> None:
    await runs.publish("acme", "r", "summary.json", _summary(real=float("nan"), control=float("-inf")))
    await runs.publish("acme", "r", "metadata.json", _meta("r", ""))
    run = await runs.get("acme", "r")
    assert run.summary is not None
    row = run.summary.preferences["identity"].metrics["margin"]
    assert math.isnan(row.real or 0.0) and row.control == -math.inf


async def test_a_folder_run_not_in_shape_is_listed_with_its_problem_and_its_page_is_a_422(
    runs: EvalRuns, tmp_path: Path
) -> None:
    acme = tmp_path / "runs" / "acme"
    shapeless = acme / "20261102-000000-bad1"
    shapeless.mkdir()
    (shapeless / "metadata.json").write_bytes(_meta(shapeless.name, "2026-11-02T00:00:00Z"))
    (shapeless / "summary.json").write_bytes(b'{"preferences": []}')
    garbled = acme / "20261103-000000-bad2"
    garbled.mkdir()
    (garbled / "metadata.json").write_bytes(b"\xff\xfe not UTF-8")
    writing = acme / "20261104-000000-live"  # a run still going: its last line is half written
    writing.mkdir()
    (writing / "metadata.json").write_bytes(_meta(writing.name, "2026-11-04T00:00:00Z"))
    (writing / "steps.jsonl").write_bytes(_step(1) + _step(2)[:20])

    listed = {r.run_id: r for r in await runs.list("acme")}
    assert set(listed) == {"20261101-000000-aaaa", shapeless.name, garbled.name, writing.name}
    assert listed["20261101-000000-aaaa"].problem == ""
    assert listed[shapeless.name].problem == ""  # its metadata is fine: the page says what is not
    assert "metadata.json is not UTF-8" in listed[garbled.name].problem
    for bad, says in ((shapeless, r"summary\.json .*preferences"), (garbled, r"metadata\.json is not UTF-8")):
        with pytest.raises(UnreadableRun, match=says) as unreadable:
            await runs.get("acme", bad.name)
        assert unreadable.value.http_status == 422
    assert [s.step for s in (await runs.get("acme", writing.name)).steps] == [1]

    (writing / "steps.jsonl").write_bytes(_step(1) + _step(2, control=[]) + _step(3))  # a bad line mid-file
    with pytest.raises(UnreadableRun, match=r"steps\.jsonl line 2 .*control"):
        await runs.get("acme", writing.name)
    (writing / "steps.jsonl").write_bytes(_step(1) * 200)  # over CLAAS_EVAL_MAX_FILE_BYTES: never read whole
    with pytest.raises(UnreadableRun, match="over 2048 bytes"):
        await runs.get("acme", writing.name)


async def test_a_folder_plot_must_be_a_png_and_a_run_without_metadata_is_not_listed_yet(
    runs: EvalRuns, tmp_path: Path
) -> None:
    acme = tmp_path / "runs" / "acme"
    (acme / "20261101-000000-aaaa" / "margins.png").write_bytes(b"<svg onload=alert(1)>")
    with pytest.raises(UnreadableRun, match="not a PNG"):
        await runs.plot("acme", "20261101-000000-aaaa", "margins.png")
    (acme / "20261105-000000-new1").mkdir()  # just started: no metadata.json yet
    (acme / "20261105-000000-new1" / "steps.jsonl").write_bytes(_step(1))
    assert [r.run_id for r in await runs.list("acme")] == ["20261101-000000-aaaa"]
