"""Is an answer degenerate? Repetition or symbol spam, the two ways a small model breaks under training.

One check for the trainer's commit guard, ``claas demo`` and ``claas eval``: a word 3-gram said three times or
more, or a run of eight equal symbols. Words are runs of letters and digits (an apostrophe inside one keeps it
whole), so punctuation and hyphens split them: loops a person reads at once, "a Kuro-Kuro, a Kuro-Kuro-Kuro, a
Kuro-Kuro-Kuro" or "Kage-Kai-Kai, Kage-Kai-Kai", repeat no whitespace-separated 3-gram.
"""

from __future__ import annotations

import re
from collections import Counter

_SYMBOL_RUN = re.compile(r"([^\w\s])\1{7,}")
_WORD = re.compile(r"\w+(?:['’]\w+)*")


def degeneration(answer: str) -> str:
    """What is degenerate about ``answer`` ("" when nothing is): the repeated 3-gram or the symbol run."""
    words = _WORD.findall(answer.lower())
    counts = Counter(tuple(words[i : i + 3]) for i in range(len(words) - 2))
    for trigram, count in counts.items():  # in order of first appearance
        if count >= 3:
            return f"repeats {' '.join(trigram)!r} {count} times"
    run = _SYMBOL_RUN.search(answer)
    return f"a run of {len(run.group(0))} {run.group(1)!r}" if run else ""


def degenerate(answer: str) -> bool:
    """True when ``degeneration`` finds repetition or symbol spam in ``answer``."""
    return bool(degeneration(answer))
