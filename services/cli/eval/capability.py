"""General capability: a coding probe whose answer runs in the sandbox, and IFEval-like instruction probes.

Feedback about a name or about emojis must not cost the model what it could already do: the general score
(half coding, half instruction following) is tracked against the baseline and the control.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from services.cli.eval.sandbox import SandboxResult, run_function
from services.cli.eval.verifiers import count_sentences, strip_thinking

CODING_PROMPT = (
    "Write a Python function `fibonacci(n)` that returns the n-th Fibonacci number "
    "(fibonacci(0) == 0, fibonacci(1) == 1), iteratively. Reply with the code in a ```python block."
)
CODING_FUNCTION = "fibonacci"
CODING_CASES: list[tuple[list[int], int]] = [([0], 0), ([1], 1), ([2], 1), ([10], 55), ([20], 6765)]

_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)


@dataclass(frozen=True)
class InstructionProbe:
    """A prompt with a checkable instruction."""

    name: str
    prompt: str
    check: Callable[[str], bool]


INSTRUCTION_PROBES = (
    InstructionProbe(
        "three_sentences", "Write exactly three sentences about the moon.", lambda a: count_sentences(a) == 3
    ),
    InstructionProbe(
        "numbered_list",
        "Name four fruits as a numbered list, one per line.",
        lambda a: len(_NUMBERED.findall(a)) >= 4,
    ),
    InstructionProbe(
        "avoid_word",
        "Describe a cat in one sentence without using the word 'cat'.",
        lambda a: re.search(r"\bcats?\b", a, re.IGNORECASE) is None and bool(a.strip()),
    ),
)


def extract_code(answer: str) -> str:
    """The first fenced block, else the lines from the first ``def`` on; "" if there is no code."""
    text = strip_thinking(answer)
    fenced = _FENCED.search(text)
    if fenced:
        return fenced.group(1).strip()
    start = text.find("def ")
    return text[start:].strip() if start >= 0 else ""


def check_coding(answer: str, *, timeout_s: float, memory_mb: int) -> SandboxResult:
    code = extract_code(answer)
    if not code:
        return SandboxResult(False, 0, len(CODING_CASES), "no code in the answer")
    return run_function(code, CODING_FUNCTION, CODING_CASES, timeout_s=timeout_s, memory_mb=memory_mb)


def general_score(coding_ok: bool, instruction_pass_rate: float) -> float:
    return 0.5 * float(coding_ok) + 0.5 * instruction_pass_rate
