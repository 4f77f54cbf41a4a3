"""Services of the benchmarks as their own processes (``python -m services.<role>``), as in production."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The internal token every benchmark process shares.
TOKEN = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Role:
    """A running service: its gRPC address and its process id."""

    addr: str
    pid: int


@contextlib.contextmanager
def role(name: str, env: dict[str, str], workdir: Path, *, module: str = "") -> Iterator[Role]:
    """``python -m services.<name>`` (or ``module``, a benchmark's own server in bench/) until the block
    ends; yields it once it serves."""
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ, CLAAS_PORT="0", CLAAS_PORT_FILE=str(port_file), CLAAS_INTERNAL_TOKEN=TOKEN, **env)
    env.setdefault("CLAAS_LOG_LEVEL", "warning")
    if module:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), env.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", module or f"services.{name}"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.05)  # polling a child for its port file; it has no other way to say it serves
        yield Role(f"127.0.0.1:{port_file.read_text().strip()}", process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
