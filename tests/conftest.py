"""Fixtures shared by every test folder."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.common.logs import configure_logging

configure_logging("console", "warning")


def free_port() -> int:
    """A port free right now on loopback (for processes that must be told their port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive ports that are all free right now."""
    for _ in range(200):
        first = free_port()
        if first + count > 65535:
            continue
        try:
            socks = []
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports found")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then cached)."""
    from services.common.model import prepare_packaged_model

    return prepare_packaged_model(progress=False)


@pytest.fixture(scope="session")
def vllm_url(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM (CPU build) serving the packaged model with runtime LoRA loading.

    Started once per test session and stopped at its end. ``CLAAS_TEST_VLLM_URL`` points the tests at a
    vLLM that is already running instead (it must serve ``smollm2-135m`` with LoRA enabled).
    """
    import os
    import signal

    from services.common.vllm_server import VllmOptions, start_vllm, wait_healthy

    existing = os.environ.get("CLAAS_TEST_VLLM_URL")
    if existing:
        wait_healthy(existing, None, timeout_s=30)
        yield existing
        return
    options = VllmOptions(model=str(model_dir), served_name="smollm2-135m", port=free_port())
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    process = start_vllm(options, log_path)
    try:
        wait_healthy(options.url, process)
        yield options.url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except Exception:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
