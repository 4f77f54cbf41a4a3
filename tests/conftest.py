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


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then cached)."""
    from services.common.model import prepare_packaged_model

    return prepare_packaged_model(progress=False)
