"""`claas eval` on the real stack, as a user runs it: one preference with its control, two short steps, the
local vLLM as the judge; killed after the first step is recorded, then the same command finishes the run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from services.common.eval_files import PLOTS

pytestmark = pytest.mark.stack

#: The local vLLM judges, so the judge presents its API key, read from this variable.
JUDGE_KEY_ENV = "CLAAS_TEST_JUDGE_API_KEY"
SHORT = ["steps=2", "rollouts_per_step=2", "rollout_max_tokens=16", "eval_max_tokens=24", "sdpo.steps=1",
         "collapse.max_tokens=24", "general.max_tokens=48"]  # fmt: skip


def _argv(stack, out: Path) -> list[str]:
    judge = ["judge.enabled=true", f"judge.base_url={stack['vllm_url']}", f"judge.model={stack['base_model']}",
             f"judge.api_key_env={JUDGE_KEY_ENV}"]  # fmt: skip
    return [sys.executable, "-m", "services.cli", "eval", "-p", "identity", *SHORT, *judge,
            "--out", str(out), "--data-dir", str(stack["data_dir"]), "--json"]  # fmt: skip


def _run_until_first_step_is_recorded(argv: list[str]) -> list[str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if "step 1/2 recorded in steps.jsonl" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before its first step was recorded:\n" + "".join(
        output
    )
    return output


def _not_blank_png(path: Path) -> None:
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, path
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1, f"{path.name} is blank"


@pytest.mark.timeout(1800)  # four feedback jobs, each with guided rollouts and the commit guard
def test_eval_writes_every_file_and_plot_and_resumes_after_a_kill(
    stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(JUDGE_KEY_ENV, stack["vllm_api_key"])  # the runs below inherit it
    out = tmp_path / "run"
    argv = _argv(stack, out)
    first = _run_until_first_step_is_recorded(argv)
    assert any(line.startswith("configuration:") for line in first)
    recorded = (out / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in recorded] == [1]
    meta = json.loads((out / "metadata.json").read_text())

    result = subprocess.run(argv, capture_output=True, text=True, timeout=1500)
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resuming the run" in result.stdout
    assert "step 1/2 recorded" not in result.stdout  # step 1 is not redone
    lines = (out / "steps.jsonl").read_text().splitlines()
    assert lines[0] == recorded[0] and [json.loads(line)["step"] for line in lines] == [1, 2]
    assert json.loads((out / "metadata.json").read_text())["adapters"] == meta["adapters"]

    for name in ("metadata.json", "baseline.json", "summary.json", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    for name in PLOTS:
        _not_blank_png(out / name)

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    identity = summary["preferences"]["identity"]
    assert identity["steps_done"] == 2
    for key in ("margin", "decision_p", "compliance", "general_score", "entropy", "self_rouge_l", "drift",
                "judge_win_rate", "sdpo_loss", "sdpo_grad_norm", "sdpo_is_ratio", "sdpo_gap"):  # fmt: skip
        row = identity["metrics"][key]
        assert row["real"] is not None and row["control"] is not None, key
        assert row["real_minus_control"] == pytest.approx(row["real"] - row["control"]), key
    assert 0.0 < identity["metrics"]["decision_p"]["baseline"] < 1.0
    last = json.loads(lines[-1])
    listed = subprocess.run(
        [sys.executable, "-m", "services.cli", "adapters", "list", "--data-dir", str(stack["data_dir"]), "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    heads = {a["name"].partition("/")[2]: a["head_version"] for a in json.loads(listed.stdout)["adapters"]}
    for arm in ("real", "control"):
        # A step the guard rejected stays on the head it started from; the record says which one is served.
        assert last[arm]["version"] == heads[meta["adapters"]["identity"][arm]]
