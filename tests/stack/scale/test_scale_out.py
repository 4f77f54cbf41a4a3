"""The system scaled out (issue 16), small: `scripts/scale_check.py` with 2 clients × 3 adapters × 3 rounds.

Real processes on loopback: an S3 server, 2 storage replicas, the teacher, 3 trainers, 2 proxies with a vLLM
each; a trainer and a storage replica SIGKILLed in round 2 and started again. The script's own checks are what
an operator would look at (every job succeeded, each completion in exactly one version, versions contiguous,
one trainer per adapter while all were up); this test runs it as a user would and reads what it printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "scale_check.py"


def test_feedback_survives_a_killed_trainer_and_storage_replica(tmp_path: Path) -> None:
    argv = [sys.executable, str(SCRIPT), "--clients", "2", "--adapters", "3", "--rounds", "3", "--down-s", "15"]
    result = subprocess.run([*argv, "--keep", str(tmp_path)], capture_output=True, text=True, timeout=840)
    output = result.stdout + result.stderr
    print(result.stdout)
    assert result.returncode == 0, output
    assert re.search(r"^fault: killed trainer-\d \(running \['\w+'\], holding \d+ unfinished jobs\) and storage-1$",
                     result.stdout, re.M), output  # fmt: skip
    assert re.search(r"^fault: restarted trainer-\d and storage-1 after 15 s$", result.stdout, re.M), output
    assert re.findall(r"^round (\d): 6 jobs in \d+ s: \{'SUCCEEDED': 6\}$", result.stdout, re.M) == ["1", "2", "3"]
    assert "versions committed: 18 " in result.stdout
    assert "\nPASSED: " in result.stdout
