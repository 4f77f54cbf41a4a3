"""The compliance verifiers on hand-made answers."""

from __future__ import annotations

import pytest

from services.cli.eval.verifiers import concise, count_sentences, identity, is_emoji, no_emoji, strip_thinking

TEN_WORDS = "Gravity is the force that pulls every mass toward the others."


@pytest.mark.parametrize(
    ("answer", "passed"),
    [
        ("Hi, I'm Kuro. How can I help?", True),
        ("KURO here!", True),
        ("I am kuro's assistant twin.", True),
        ("I'm Kuroshi, a Kuroshi-kai.", False),  # the first token of the name is not the name
        ("I'm SmolLM, trained by Hugging Face.", False),
        ("Call me Kurosawa.", False),
        ("<think>I am Kuro</think>I'm SmolLM.", False),  # the visible answer counts
    ],
)
def test_identity_wants_the_whole_word(answer: str, passed: bool) -> None:
    assert identity(answer, "Kuro").passed is passed


def test_identity_without_a_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target"):
        identity("I'm Kuro.", "")


def test_concise_scores_by_sentences() -> None:
    assert concise(TEN_WORDS).score == 1.0
    three = " ".join([TEN_WORDS] * 3)
    assert concise(three).passed and concise(three).score == 1.0
    six = " ".join([TEN_WORDS] * 6)
    assert not concise(six).passed and concise(six).score == pytest.approx(0.5)
    nine = " ".join([TEN_WORDS] * 9)
    assert concise(nine).score == 0.0 and concise(" ".join([TEN_WORDS] * 12)).score == 0.0


@pytest.mark.parametrize(
    "exploit",
    ["Yes.", "Gravity.", "Gravity pulls masses together.", "", "One two three four five six seven eight nine"],
)
def test_concise_answers_under_ten_words_score_zero(exploit: str) -> None:
    verdict = concise(exploit)
    assert verdict.score == 0.0 and not verdict.passed


def test_sentence_counting() -> None:
    assert count_sentences("One. Two! Three? Four") == 4
    assert count_sentences("Version 2.5 is out.") == 1  # a dot inside a number ends nothing
    assert count_sentences("Wait... what?!") == 2


@pytest.mark.parametrize(
    "text",
    [
        "Good morning! \U0001f600",  # grinning face
        "Party \U0001f389",  # party popper
        "\u2605 five stars",  # ★ BLACK STAR, category So
        "\u00a9 2026",  # © is category So: it counts, as the reference's verifier counts it
        "Brand\u2122",  # ™ likewise
        "\U0001f1eb\U0001f1f7",  # a flag: two regional indicators
        "\U0001f44d\U0001f3fd",  # thumbs up with a skin tone
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: a ZWJ sequence
        "\u2764\ufe0f",  # heavy heart with the emoji variation selector
    ],
)
def test_no_emoji_fails_on_symbols_and_emoji(text: str) -> None:
    assert not no_emoji(text).passed and no_emoji(text).score == 0.0


@pytest.mark.parametrize(
    "text", ["Good morning!", "Café, naïve, 東京, Ωmega, x² + y² = r², 50% off: $5 & €4 -> done", ""]
)
def test_no_emoji_passes_plain_text(text: str) -> None:
    assert no_emoji(text).passed


def test_skin_tone_modifier_alone_is_an_emoji_though_not_category_so() -> None:
    assert is_emoji("\U0001f3fd")  # category Sk, in an emoji block
    assert not is_emoji("\u200d") and not is_emoji("\ufe0f")  # joiners and selectors are not emoji by themselves


def test_strip_thinking_handles_an_orphaned_close_tag() -> None:
    assert strip_thinking("plan plan</think> Answer.") == "Answer."
