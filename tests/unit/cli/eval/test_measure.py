"""The decision point reads the whole target: every token between the prefix and the end of the turn."""

from __future__ import annotations

import math

import pytest

from services.cli.eval.api import Api
from services.cli.eval.config import load_config
from services.cli.eval.measure import Measurer
from services.cli.eval.preferences import DecisionPoint, builtin
from tests.unit.cli.eval.proxy_double import ProxyDouble


def _measurer(double: ProxyDouble, preference: str = "identity") -> Measurer:
    api = Api("http://proxy.test", "key", transport=double.transport())
    return Measurer(api, load_config(None), builtin()[preference])


def test_a_target_of_two_tokens_is_the_product_of_both() -> None:
    double = ProxyDouble(heads={"a-real": 1}, versions={"a-real": [1]})
    # The double's tokens are the words: "Kuro" and "Kuro-kai" each one token, "Ku ro" two.
    whole, first = _measurer(double).decision_point("a-real", DecisionPoint(prompt="Hi", prefix="I'm", target=" Ku ro"))
    assert whole == pytest.approx(math.exp(-2.0)) and first == pytest.approx(math.exp(-1.0))


def test_the_end_of_turn_target_reads_the_token_after_the_prefix_not_the_templates_newline() -> None:
    double = ProxyDouble(heads={"a-real": 3}, versions={"a-real": [1, 2, 3]})
    whole, first = _measurer(double).decision_point(
        "a-real", DecisionPoint(prompt="Hi", prefix="Done.", target="<eot>")
    )
    assert whole == first == pytest.approx(math.exp(-1.0))


def test_the_learned_name_raises_the_decision_point() -> None:
    double = ProxyDouble(heads={"a-real": 1}, versions={"a-real": [1]})
    measurer = _measurer(double)
    before = measurer.decision("a-real")["decision_p"]
    double.heads["a-real"] = 3  # the double gives "Kuro" more probability in later versions
    assert measurer.decision("a-real")["decision_p"] > before


def test_concise_answers_are_long_enough_to_end_on_their_own_and_others_keep_the_runs_limit() -> None:
    """At the run's 60 tokens every answer was cut at two or three sentences and read as concise."""
    double = ProxyDouble(heads={"a-real": 1}, versions={"a-real": [1]})
    _measurer(double, "concise").compliance("a-real")
    assert double.chat_max_tokens == [256] * len(builtin()["concise"].held_out)
    double.chat_max_tokens.clear()
    _measurer(double, "identity").compliance("a-real")
    assert double.chat_max_tokens == [load_config(None).eval_max_tokens] * len(builtin()["identity"].held_out)
