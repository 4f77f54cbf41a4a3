"""Chats routed by adapter between two proxy processes, each with its own vLLM (issue 17), small:
`bench/routing_bench.py` with 12 chats of 4 adapters, 2 slots per vLLM.

The script's checks are what an operator would look at (every chat answered, loads bounded with routing on, a
forwarded answer equal to the owner's, a left stream ending on the owner, chats served once each after the
other proxy is SIGKILLed); this test runs it as a user would and reads what it printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "routing_bench.py"


def test_routing_keeps_each_adapter_in_one_vllm_and_survives_a_killed_replica(tmp_path: Path) -> None:
    argv = [sys.executable, str(SCRIPT), "--chats", "12", "--adapters", "4", "--max-loaded", "2", "--spill", "2",
            "--latency-rounds", "3", "--keep", str(tmp_path)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=840)
    output = result.stdout + result.stderr
    print(result.stdout)
    assert result.returncode == 0, output
    loads = re.search(r"^loads in 12 chats of 4 adapters, .*: routing on (\d+) \[.*\], off (\d+) ", result.stdout, re.M)
    assert loads, output
    assert int(loads[1]) <= 4, output
    assert "forwarded answer equals direct (stream, plain, 32 tokens, temperature 0): True" in result.stdout
    assert re.search(r"^spill: 4 chats of one adapter at once to its owner \(limit 2\): [12] spilled", result.stdout,
                     re.M), output  # fmt: skip
    killed = r"^other replica SIGKILLed: 12 chats answered \(10 after the kill\), 12 vLLM requests"
    assert re.search(killed, result.stdout, re.M), output
    assert "\nPASSED: " in result.stdout
