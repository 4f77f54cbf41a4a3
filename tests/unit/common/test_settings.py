"""Settings more than one service reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.proxy.settings import ProxySettings
from services.teacher.settings import TeacherSettings
from services.trainer.settings import TrainerSettings


def _limits(settings: ProxySettings | TrainerSettings) -> tuple[int, int]:
    return settings.max_feedback_chars, settings.max_feedback_completions


def test_proxy_and_trainer_read_one_feedback_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole: the proxy accepted 4000 characters and 64 completions, the trainer then refused past 2000 and 32."""
    assert _limits(ProxySettings()) == _limits(TrainerSettings()) == (2000, 32)
    monkeypatch.setenv("CLAAS_MAX_FEEDBACK_CHARS", "500")
    monkeypatch.setenv("CLAAS_MAX_FEEDBACK_COMPLETIONS", "8")
    assert _limits(ProxySettings()) == _limits(TrainerSettings()) == (500, 8)


@pytest.mark.parametrize("key", ["", "change-me-vllm-api-key"])
def test_the_proxy_refuses_an_empty_or_example_vllm_key_beyond_loopback(key: str) -> None:
    """Hole: vLLM took runtime LoRA loads (a path it then reads) from anyone who reached its port."""
    with pytest.raises(ValidationError, match="CLAAS_VLLM_API_KEY is"):
        ProxySettings(http_host="0.0.0.0", internal_token="own-token", vllm_api_key=key)
    assert ProxySettings(internal_token="own-token", vllm_api_key=key).vllm_api_key.get_secret_value() == key
    assert ProxySettings(http_host="0.0.0.0", internal_token="own-token", vllm_api_key="own-key")


def test_the_teacher_asks_for_a_vllm_key_only_with_its_vllm_backend() -> None:
    exposed = {"host": "0.0.0.0", "internal_token": "own-token"}
    with pytest.raises(ValidationError, match="CLAAS_VLLM_API_KEY is empty"):
        TeacherSettings(backend="vllm", **exposed)
    assert TeacherSettings(backend="vllm", vllm_api_key="own-key", **exposed)
    assert TeacherSettings(backend="hf", **exposed)


def test_the_proxy_refuses_a_short_or_example_dashboard_secret() -> None:
    """Hole: whoever read the manifests' example secret could sign a session cookie for any tenant."""
    exposed = {"http_host": "0.0.0.0", "internal_token": "own-token", "vllm_api_key": "own-key"}
    with pytest.raises(ValidationError, match="CLAAS_DASHBOARD_SECRET is the example value"):
        ProxySettings(dashboard_secret="change-me-dashboard-session-signing-secret", **exposed)
    with pytest.raises(ValidationError, match="at least 32 characters"):
        ProxySettings(dashboard_secret="short")
    assert ProxySettings(**exposed).dashboard_secret.get_secret_value() == ""  # a random one per process
    assert ProxySettings(dashboard_secret="an-own-secret-of-more-than-32-characters", **exposed)


@pytest.mark.parametrize("settings", [ProxySettings, TrainerSettings, TeacherSettings])
def test_every_caller_of_storage_takes_its_replicas_and_refuses_a_list_it_cannot_dial(settings: type) -> None:
    assert settings(storage_addr="127.0.0.1:7001,127.0.0.1:7002").storage_addr == "127.0.0.1:7001,127.0.0.1:7002"
    assert settings(storage_addr="dns:///claas-storage:50051").storage_addr == "dns:///claas-storage:50051"
    with pytest.raises(ValidationError, match="'storage-a' is not an IPv4 address"):
        settings(storage_addr="storage-a:7001,storage-b:7001")
    with pytest.raises(ValidationError, match="expected host:port"):
        settings(storage_addr="127.0.0.1:7001,127.0.0.1")
