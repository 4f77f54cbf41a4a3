"""The one degeneration check of the commit guard, the demo and the eval."""

from __future__ import annotations

from services.common.degeneration import degenerate, degeneration


def test_repetition_and_symbol_runs_are_flagged_with_what_repeats() -> None:
    assert degeneration("and I'm Kuro, and I'm Kuro, and I'm Kuro, and I'm Kuro") == 'repeats "and i\'m kuro" 4 times'
    assert degeneration("Great!!!!!!!!!!") == "a run of 10 '!'"
    assert degenerate("I'm a cat-friendly cat. I'm a cat-friendly cat. I'm a cat-friendly cat.")


def test_ordinary_answers_are_not_flagged() -> None:
    for answer in ("I'm Kuro, a helpful assistant. I'm glad to help you today.", "Wow!!! Really?", "", "a b"):
        assert degeneration(answer) == "" and not degenerate(answer)


def test_loops_through_hyphens_and_commas_are_flagged_as_a_reader_sees_them() -> None:
    # Held-out answers of an identity eval run at the default settings, which whitespace-separated words let pass.
    assert degeneration("I'm Kuro, the Kuro. I'm a Kuro-Kuro, a Kuro-Kuro-Kuro, a Kuro-Kuro-Kuro. I'm Kuro-Kuro.") == (
        "repeats 'a kuro kuro' 3 times"
    )
    assert degenerate("I'm Kira Kage, a Kage-Kai, a Kage-Kai-Kai, a Kage-Kai-Kai, Kage-Kai-Kai, Kage-Kai-Kai-Kai")
    assert not degenerate("I'm Kuro, a well-known, well-read and well-liked assistant. Kuro-san is fine too.")
