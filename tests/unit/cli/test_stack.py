"""`claas up` refuses to start over another process's port (whose health checks would pass for ours)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.cli.stack import Stack, StackConfig, StackError


def test_a_busy_port_stops_the_start_before_any_process(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = Stack(StackConfig(data_dir=tmp_path, port_base=port - 2))  # the teacher's port is taken
        with pytest.raises(StackError) as caught:
            stack.up()
    assert caught.value.role == "teacher"
    assert f"port {port} is already in use" in str(caught.value)
    assert stack.processes == {}
