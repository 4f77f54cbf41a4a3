"""A launcher's children end with it, even when it is SIGKILLed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.stack import STACK_FILE, read_stack_file, stack_running

# A launcher that starts one long-lived child as the stack starts its services, then waits to be killed.
LAUNCHER = """
import subprocess, sys
from services.common.processes import ending_with_parent
child = subprocess.Popen(ending_with_parent([sys.executable, "-c", "import time; time.sleep(3600)"]),
                         pass_fds=(int(sys.argv[1]),), start_new_session=True)
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_ends_when_its_launcher_is_killed() -> None:
    """Hole: a `claas demo` that started its own stack and was then SIGKILLed left every service running."""
    read_end, write_end = os.pipe()
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(write_end)], pass_fds=(write_end,), stdout=subprocess.PIPE, text=True
    )
    os.close(write_end)
    try:
        assert int(launcher.stdout.readline()) > 0  # the child's pid: it started
        launcher.kill()
        launcher.wait()
        # The child holds the pipe's other end: the read sees end-of-file once the child ended (killed by the
        # SIGTERM its parent's death sent; without it the read would outlast the test's time limit).
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.read() == b""
    finally:
        launcher.stdout.close()


def test_a_stack_file_left_by_a_killed_launcher_is_not_trusted(tmp_path: Path) -> None:
    """Hole: a stale stack.json was trusted by the next command (which then talked to nothing, or to others)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / STACK_FILE).write_text(json.dumps({"pids": {"proxy": gone.pid}, "api_key": "k"}))

    assert not stack_running(tmp_path)
    assert not (tmp_path / STACK_FILE).exists()
    (tmp_path / STACK_FILE).write_text(json.dumps({"pids": {"proxy": os.getpid()}, "api_key": "k"}))
    assert read_stack_file(tmp_path)["api_key"] == "k"  # a live one is
