"""`claas up` refuses to start over another process's port (whose health checks would pass for ours)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.cli.stack import Stack, StackConfig, StackError


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _busy_port() -> socket.socket:
    """A listening socket whose two lower neighbours (the proxy's and storage's ports) are free."""
    while True:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        if _free(busy.getsockname()[1] - 2) and _free(busy.getsockname()[1] - 1):
            busy.listen()
            return busy
        busy.close()


def test_a_busy_port_stops_the_start_before_any_process(tmp_path: Path) -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        stack = Stack(StackConfig(data_dir=tmp_path, port_base=port - 2))  # the teacher's port is taken
        with pytest.raises(StackError) as caught:
            stack.up()
    assert caught.value.role == "teacher"
    assert f"port {port} is already in use" in str(caught.value)
    assert stack.processes == {}
