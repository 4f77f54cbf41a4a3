"""Compliance verifiers: does an answer follow the preference? Each returns a score in [0, 1] and a verdict."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")

#: Emoji blocks whose characters are not all category So (skin-tone modifiers are Sk, for one).
EMOJI_BLOCKS = (
    (0x1F1E0, 0x1F1FF),  # regional indicators (flags)
    (0x1F300, 0x1F5FF),  # misc symbols and pictographs, incl. skin tones U+1F3FB-U+1F3FF
    (0x1F600, 0x1F64F),  # emoticons
    (0x1F680, 0x1F6FF),  # transport and map
    (0x1F900, 0x1F9FF),  # supplemental symbols and pictographs
    (0x1FA00, 0x1FAFF),  # symbols and pictographs extended-A
)

#: Fewer words than this and a "concise" answer scores 0: one word is not a concise answer, it is no answer.
CONCISE_MIN_WORDS = 10


@dataclass(frozen=True)
class Verdict:
    """A verifier's reading of one answer."""

    score: float
    passed: bool


def strip_thinking(text: str) -> str:
    """The visible answer: ``<think>`` blocks removed (and what precedes an orphaned ``</think>``)."""
    text = _THINK.sub("", text)
    end = text.find("</think>")
    return (text[end + len("</think>") :] if end >= 0 else text).strip()


def is_emoji(char: str) -> bool:
    """Category So (Symbol, other: pictographs, but also © ™ ★) or a character of an emoji block."""
    if unicodedata.category(char) == "So":
        return True
    code = ord(char)
    return any(low <= code <= high for low, high in EMOJI_BLOCKS)


def count_emoji(text: str) -> int:
    return sum(map(is_emoji, text))


def count_sentences(text: str) -> int:
    """Pieces of text ended by . ! or ? followed by a space or the end (a last piece without one counts)."""
    return len([piece for piece in _SENTENCE_END.split(text.strip()) if piece.strip()])


def no_emoji(answer: str, target: str = "") -> Verdict:
    passed = count_emoji(strip_thinking(answer)) == 0
    return Verdict(float(passed), passed)


def concise(answer: str, target: str = "") -> Verdict:
    """1.0 up to 3 sentences, falling linearly to 0 at 9; under 10 words is 0 (the anti-exploit)."""
    text = strip_thinking(answer)
    if len(text.split()) < CONCISE_MIN_WORDS:
        return Verdict(0.0, False)
    sentences = count_sentences(text)
    score = min(1.0, max(0.0, 1.0 - (sentences - 3) / 6.0))
    return Verdict(score, sentences <= 3)


def identity(answer: str, target: str = "") -> Verdict:
    """The name as a whole word, any case: "Kuro" and "kuro's" pass, "Kuroshi" does not."""
    if not target:
        raise ValueError("the identity verifier needs the preference's target (the name)")
    passed = re.search(rf"\b{re.escape(target)}\b", strip_thinking(answer), re.IGNORECASE) is not None
    return Verdict(float(passed), passed)


VERIFIERS: dict[str, Callable[[str, str], Verdict]] = {
    "identity": identity,
    "concise": concise,
    "no_emoji": no_emoji,
}
