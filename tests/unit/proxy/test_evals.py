"""Eval runs behind the dashboard: a published file is kept only when it is one of a run's files and is what
its name says, under the caller's tenant; runs from the configured folder and published ones are listed
newest first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound, RequestTooLarge, ResourceExhausted
from services.common.eval_files import PNG_SIGNATURE
from services.common.objectstore import LocalFolderStore
from services.proxy.evals import EvalRuns

PNG = PNG_SIGNATURE + b"rest of an image"


def _meta(run_id: str, started: str) -> bytes:
    return json.dumps({"run_id": run_id, "started": started, "adapters": {"identity": {}}}).encode()


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
    await runs.publish("acme", run_id, "steps.jsonl", b'{"step": 1}\n{"step": 2}\n')
    await runs.publish("acme", run_id, "margins.png", PNG)
    await runs.publish("acme", run_id, "metadata.json", _meta(run_id, "2026-12-01T00:00:00Z"))

    listed = await runs.list("acme")
    assert [(r.run_id, r.published) for r in listed] == [(run_id, True), ("20261101-000000-aaaa", False)]
    run = await runs.get("acme", run_id)
    assert (run.summary, [s["step"] for s in run.steps], run.plots) == ({"preferences": {}}, [1, 2], ("margins.png",))
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
