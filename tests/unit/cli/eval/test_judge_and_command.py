"""The judge's order alternation and verdict parsing; `claas eval`'s refusal of a bad configuration."""

from __future__ import annotations

import json

import httpx
import pytest

from services.cli.eval.config import JudgeConfig
from services.cli.eval.judge import Judge, JudgeError
from services.cli.main import main


def _judge(answer: str) -> tuple[Judge, list[str]]:
    seen: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["messages"][0]["content"])
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": answer}}]})

    config = JudgeConfig(enabled=True, base_url="http://judge.test/v1", model="m")
    return Judge(config, transport=httpx.MockTransport(reply)), seen


def test_a_judge_that_always_says_a_gives_an_even_win_rate() -> None:
    judge, seen = _judge("A")
    assert judge.win_rate("Be brief.", ["q1", "q2"], ["old1", "old2"], ["new1", "new2"]) == 0.5
    assert seen[0].index("new1") < seen[0].index("old1") and seen[1].index("old2") < seen[1].index("new2")


@pytest.mark.parametrize(("answer", "first"), [("B", 0.0), ("Answer: A.", 1.0), ("Neither", 0.5), ("", 0.5)])
def test_verdicts(answer: str, first: float) -> None:
    judge, _ = _judge(answer)
    assert judge.prefers_first("Be brief.", "q", "x", "y") == first


def test_a_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    config = JudgeConfig(enabled=True, base_url="http://judge.test", model="m", api_key_env="JUDGE_KEY_FOR_TEST")
    with pytest.raises(JudgeError, match="JUDGE_KEY_FOR_TEST"):
        Judge(config)


def test_claas_eval_refuses_a_bad_setting_before_calling_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "sdpo.learning_rate=-1", "--proxy", "http://127.0.0.1:9"]) == 1
    assert "sdpo.learning_rate" in capsys.readouterr().err
    assert main(["eval", "-p", "kindness", "--proxy", "http://127.0.0.1:9"]) == 1
    assert "unknown preference 'kindness'" in capsys.readouterr().err


def test_claas_eval_reports_an_unreachable_proxy_and_how_to_resume(tmp_path, capsys) -> None:
    code = main(["eval", "--proxy", "http://127.0.0.1:9", "--api-key", "k", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "127.0.0.1:9" in err and "run the same command again" in err
