"""The demo's verifiers (the built-in preferences' own)."""

from __future__ import annotations

import pytest

from services.cli.preferences import CONCISE, IDENTITY, NO_EMOJI


@pytest.mark.parametrize(
    ("preference", "answer", "expected"),
    [
        (IDENTITY, "Hi, I'm Kuro. How can I help?", True),
        (IDENTITY, "I'm SmolLM, trained by Hugging Face.", False),
        (IDENTITY, "I'm Kuroshi, a Kuroshi-kai.", False),
        (CONCISE, "Gravity is the force that pulls every mass toward the others.", True),
        (CONCISE, "Gravity.", False),
        (CONCISE, "Gravity pulls things down. " * 5, False),
        (NO_EMOJI, "Good morning!", True),
        (NO_EMOJI, "Good morning! \U0001f600", False),
    ],
)
def test_verifiers(preference, answer, expected):
    assert preference.passes(answer) is expected
