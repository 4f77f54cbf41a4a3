"""Thinking blocks leave the visible text; streamed pieces give the same text as the whole."""

from __future__ import annotations

import random

import pytest

from services.proxy.thinking import ThinkingFilter, strip_thinking

CASES = [
    ("plain answer", "plain answer"),
    ("<think>hmm</think>\n\nAnswer", "Answer"),
    ("Before <think>x</think> after", "Before after"),
    ("<think>a</think>A<think>b</think>B", "AB"),
    ("<think>never closed", ""),
    ("a < b and c <thin", "a < b and c <thin"),
    ("x</think>y", "x</think>y"),
]


@pytest.mark.parametrize(("text", "visible"), CASES)
def test_strip_thinking(text: str, visible: str) -> None:
    assert strip_thinking(text) == visible


@pytest.mark.parametrize(("text", "visible"), CASES)
def test_any_split_of_a_stream_gives_the_same_text(text: str, visible: str) -> None:
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(4, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        thinking = ThinkingFilter()
        assert "".join(thinking.feed(p) for p in pieces) + thinking.flush() == visible


def test_visible_text_is_released_as_soon_as_it_is_certain() -> None:
    thinking = ThinkingFilter()
    assert thinking.feed("Hello <") == "Hello "
    assert thinking.feed("b>") == "<b>"
