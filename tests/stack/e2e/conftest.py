"""A whole local stack started by `claas up` as a separate process, as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.net import free_port, free_port_block


def claas(*args: str, data_dir: Path, timeout: float = 900) -> dict:
    """Run a `claas` command with --json against the stack; return its last JSON line."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *args, "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"claas {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, model_dir: Path):
    """`claas up` on free ports and a fresh data folder; stopped with SIGTERM at the end, leaving no process."""
    data_dir = tmp_path_factory.mktemp("stack")
    port_base = free_port_block(4)
    argv = [sys.executable, "-m", "services.cli", "up", "--data-dir", str(data_dir)]
    argv += ["--port-base", str(port_base), "--http-port", str(free_port()), "--vllm-port", str(free_port())]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("ready:"):
            break
    else:
        process.wait()
        pytest.fail("claas up did not become ready:\n" + "".join(output))
    info = json.loads((data_dir / "stack.json").read_text())
    info["data_dir"] = data_dir
    info["vllm_api_key"] = json.loads((data_dir / "secrets.json").read_text())["vllm_api_key"]
    info["process"] = process
    try:
        yield info
    finally:
        pids = json.loads((data_dir / "stack.json").read_text())["pids"]
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=180)
        assert process.returncode == 0, "".join(output) + rest
        left = {role: pid for role, pid in pids.items() if _alive(pid)}
        assert not left, f"processes left behind after claas up stopped: {left}"
        assert not (data_dir / "stack.json").exists()
