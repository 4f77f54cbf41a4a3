"""Run untrusted answer code in a separate Python process with CPU-time, memory and file-size limits.

The harness never ``exec``s model output itself: a child interpreter does, in an empty temporary folder,
in its own session (so a timeout kills everything it started) and with rlimits set before it reads the code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Runs in the child: set the limits, load the solution, call the function on each case, print one JSON line.
#: The limits are set here, after exec and before the solution is read, not in a ``preexec_fn``: Python code
#: between fork and exec is unsafe in a parent that runs threads (the test suite's does, and so can a caller
#: of the harness), and in one full test run such a child died of SIGSEGV instead of timing out.
_CHECKER = """
import json, resource, runpy, sys
cpu_s, memory = int(sys.argv[4]), int(sys.argv[5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
# No new processes (a fork bomb); ignored for root, where the session kill on timeout still reaps them.
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
cases = json.loads(sys.argv[2])
try:
    namespace = runpy.run_path(sys.argv[1])
    function = namespace[sys.argv[3]]
    results = [function(*args) == expected for args, expected in cases]
    print(json.dumps({"passed": sum(results), "total": len(results)}))
except MemoryError:
    print(json.dumps({"error": "memory"}))
except BaseException as exc:
    print(json.dumps({"error": type(exc).__name__ + ": " + str(exc)[:200]}))
"""


@dataclass(frozen=True)
class SandboxResult:
    """What the code did: ``ok`` only if every case returned its expected value."""

    ok: bool
    passed: int
    total: int
    #: "" when it ran; else "timeout", "memory", "killed by signal N" or the exception.
    failure: str = ""


def run_function(
    code: str, function: str, cases: list[tuple[list[Any], Any]], *, timeout_s: float = 5.0, memory_mb: int = 256
) -> SandboxResult:
    """Call ``function`` defined by ``code`` on each case's arguments in a limited child process."""
    total = len(cases)
    with tempfile.TemporaryDirectory(prefix="claas-sandbox-") as folder:
        solution = Path(folder) / "solution.py"
        solution.write_text(code)
        limits = [str(max(1, int(timeout_s))), str(memory_mb * 1024 * 1024)]
        argv = [sys.executable, "-I", "-S", "-c", _CHECKER, str(solution), json.dumps(cases), function, *limits]
        process = subprocess.Popen(
            argv,
            cwd=folder,
            env={"PATH": os.defpath},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=timeout_s + 1.0)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return SandboxResult(False, 0, total, "timeout")
    return _verdict(process.returncode, out.decode(errors="replace"), total)


def _verdict(returncode: int, out: str, total: int) -> SandboxResult:
    if returncode < 0:
        # SIGXCPU/SIGKILL from the CPU limit is a timeout; anything else is a crash of the child.
        if -returncode in (signal.SIGXCPU, signal.SIGKILL):
            return SandboxResult(False, 0, total, "timeout")
        return SandboxResult(False, 0, total, f"killed by signal {-returncode}")
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return SandboxResult(False, 0, total, f"no result (exit code {returncode})")
    if "error" in report:
        return SandboxResult(False, 0, total, report["error"])
    return SandboxResult(report["passed"] == total, report["passed"], total)
