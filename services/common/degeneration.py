"""Is an answer degenerate? Repetition or symbol spam, the two ways a small model breaks under training.

One check for the trainer's commit guard, ``claas demo`` and ``claas eval``: a word 3-gram said three times or
more, or a run of eight equal symbols.
"""

from __future__ import annotations

import re

_SYMBOL_RUN = re.compile(r"([^\w\s])\1{7,}")


def degeneration(answer: str) -> str:
    """What is degenerate about ``answer`` ("" when nothing is): the repeated 3-gram or the symbol run."""
    words = answer.lower().split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    for trigram in dict.fromkeys(trigrams):
        if trigrams.count(trigram) >= 3:
            return f"repeats {' '.join(trigram)!r} {trigrams.count(trigram)} times"
    run = _SYMBOL_RUN.search(answer)
    return f"a run of {len(run.group(0))} {run.group(1)!r}" if run else ""


def degenerate(answer: str) -> bool:
    """True when ``degeneration`` finds repetition or symbol spam in ``answer``."""
    return bool(degeneration(answer))
