"""`claas up` refuses to start over another process's port (whose health checks would pass for ours), and
starts vLLM behind a key that only the stack's callers of vLLM get."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from services.cli.stack import Stack, StackConfig, StackError, _load_or_create_secrets, _service_env
from services.common.files import write_atomically


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


def test_vllm_is_started_with_the_key_the_proxy_and_teacher_send(tmp_path: Path) -> None:
    # A model folder of its own: the packaged model would be prepared first.
    stack = Stack(StackConfig(data_dir=tmp_path, base_model=str(tmp_path / "model")))
    stack.secrets = _load_or_create_secrets(stack.config)
    options = stack._vllm_options()
    key = stack.secrets.vllm_api_key
    assert key and options.environment()["VLLM_API_KEY"] == key
    assert key not in " ".join(options.command())  # a command line is readable by every local user
    for role in ("proxy", "teacher"):
        assert _service_env(stack.config, role, stack.secrets)["CLAAS_VLLM_API_KEY"] == key
    for role in ("storage", "trainer"):
        assert "CLAAS_VLLM_API_KEY" not in _service_env(stack.config, role, stack.secrets)
    with pytest.raises(ValueError, match="API key"):
        replace(options, api_key="")


def test_a_data_dir_from_before_the_vllm_key_keeps_its_tokens_and_gains_one(tmp_path: Path) -> None:
    old = {"internal_token": "token-of-old", "api_key": "key-of-old"}
    write_atomically(tmp_path / "secrets.json", json.dumps(old))
    secrets = _load_or_create_secrets(StackConfig(data_dir=tmp_path))
    assert (secrets.internal_token, secrets.api_key) == ("token-of-old", "key-of-old")
    assert secrets.vllm_api_key
    assert _load_or_create_secrets(StackConfig(data_dir=tmp_path)) == secrets
