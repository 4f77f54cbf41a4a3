"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.logs import configure_logging
from services.common.net import free_port, free_port_block

configure_logging("console", "warning")

__all__ = ["free_port", "free_port_block"]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then cached)."""
    from services.common.model import prepare_packaged_model

    return prepare_packaged_model(progress=False)


@pytest.fixture(scope="session")
def vllm_api_key() -> str:
    """The API key of the ``vllm_url`` server: ``CLAAS_TEST_VLLM_API_KEY`` for one already running, else a
    fresh one."""
    import os
    import secrets

    return os.environ.get("CLAAS_TEST_VLLM_API_KEY") or secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def vllm_url(model_dir: Path, vllm_api_key: str, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM (CPU build) serving the packaged model with runtime LoRA loading, behind ``vllm_api_key``.

    Started once per test session and stopped at its end. ``CLAAS_TEST_VLLM_URL`` points the tests at a
    vLLM that is already running instead (it must serve ``smollm2-135m`` with LoRA enabled, with the key
    ``CLAAS_TEST_VLLM_API_KEY``).
    """
    import os
    import signal

    from services.common.vllm_server import VllmOptions, start_vllm, wait_healthy

    existing = os.environ.get("CLAAS_TEST_VLLM_URL")
    if existing:
        wait_healthy(existing, None, timeout_s=30)
        yield existing
        return
    options = VllmOptions(model=str(model_dir), served_name="smollm2-135m", port=free_port(), api_key=vllm_api_key)
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
