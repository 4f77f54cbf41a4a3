"""Settings more than one service reads."""

from __future__ import annotations

import pytest

from services.proxy.settings import ProxySettings
from services.trainer.settings import TrainerSettings


def _limits(settings: ProxySettings | TrainerSettings) -> tuple[int, int]:
    return settings.max_feedback_chars, settings.max_feedback_completions


def test_proxy_and_trainer_read_one_feedback_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole: the proxy accepted 4000 characters and 64 completions, the trainer then refused past 2000 and 32."""
    assert _limits(ProxySettings()) == _limits(TrainerSettings()) == (2000, 32)
    monkeypatch.setenv("CLAAS_MAX_FEEDBACK_CHARS", "500")
    monkeypatch.setenv("CLAAS_MAX_FEEDBACK_COMPLETIONS", "8")
    assert _limits(ProxySettings()) == _limits(TrainerSettings()) == (500, 8)
