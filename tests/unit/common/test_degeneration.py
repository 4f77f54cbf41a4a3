"""The one degeneration check of the commit guard, the demo and the eval."""

from __future__ import annotations

from services.common.degeneration import degenerate, degeneration


def test_repetition_and_symbol_runs_are_flagged_with_what_repeats() -> None:
    assert degeneration("and I'm Kuro, and I'm Kuro, and I'm Kuro, and I'm Kuro") == (
        'repeats "and i\'m kuro," 3 times'
    )
    assert degeneration("Great!!!!!!!!!!") == "a run of 10 '!'"
    assert degenerate("I'm a cat-friendly cat. I'm a cat-friendly cat. I'm a cat-friendly cat.")


def test_ordinary_answers_are_not_flagged() -> None:
    for answer in ("I'm Kuro, a helpful assistant. I'm glad to help you today.", "Wow!!! Really?", "", "a b"):
        assert degeneration(answer) == "" and not degenerate(answer)
