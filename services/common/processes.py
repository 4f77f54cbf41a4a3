"""Child processes that end with the process that started them.

A launcher (``claas up``, or ``claas demo``/``claas eval`` starting a stack for one run) starts storage,
teacher, trainer, vLLM and the proxy in their own sessions, so that Ctrl-C reaches the launcher only and it
stops them in order. If the launcher itself is killed (SIGKILL, a timeout), nothing would stop them: each child
asks the kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a no-op).

The child asks itself, through this module run as a program in front of the real command
(``ending_with_parent``), which then replaces itself with that command (the setting survives ``exec``). Not
in a ``Popen(preexec_fn=...)``: that runs Python in the child between fork and exec, and a launcher with gRPC's
threads running (health checks, clients) saw such a child crash there with SIGSEGV before it ever ran.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def ending_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when this process (its parent) dies."""
    return [sys.executable, "-m", "services.common.processes", str(os.getpid()), *argv]


def _link_and_exec(parent: int, argv: list[str]) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody is left to stop the command
            sys.exit(f"not starting {argv[0]}: the process that started it is gone")
    os.execvp(argv[0], argv)


def alive(pid: int) -> bool:
    """Is process ``pid`` running (a zombie, dead but not yet reaped, is not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/<pid>/stat: "pid (name) state ..."; the name may hold spaces, the state follows its ")".
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


if __name__ == "__main__":
    _link_and_exec(int(sys.argv[1]), sys.argv[2:])
