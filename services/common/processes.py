"""Child processes that end with the process that started them.

A launcher (``claas up``, or ``claas demo``/``claas eval`` starting a stack for one run) starts storage,
teacher, trainer, vLLM and the proxy in their own sessions, so that Ctrl-C reaches the launcher only and it
stops them in order. If the launcher itself is killed (SIGKILL, a timeout), nothing would stop them: each child
asks the kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a no-op).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: between fork and exec the child only makes the one call.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def end_with_parent() -> Callable[[], None]:
    """A ``Popen(preexec_fn=...)`` that links the child to this process: it runs in the child, between fork
    and exec."""
    parent = os.getpid()

    def link() -> None:
        if _LIBC is None:
            return
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody is left to stop us
            os.kill(os.getpid(), signal.SIGTERM)

    return link


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
