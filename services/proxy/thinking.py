"""Removing ``<think>…</think>`` blocks from what the user sees, in one piece or delta by delta.

The filter holds back only what could still turn into a tag, so a streamed answer is relayed as soon as
its text is known, and the streamed text equals the text stripped in one piece.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


def strip_thinking(text: str) -> str:
    thinking = ThinkingFilter()
    return thinking.feed(text) + thinking.flush()


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkingFilter:
    """Strips thinking blocks from a stream of deltas: ``feed`` each delta, ``flush`` at the end."""

    def __init__(self) -> None:
        self._pending = ""
        self._inside = False
        # Whitespace right after a thinking block separates it from the answer; it is not the answer.
        self._after_block = False

    def feed(self, delta: str) -> str:
        """The visible part of ``delta`` that is certain by now."""
        self._pending += delta
        out: list[str] = []
        while True:
            tag = CLOSE if self._inside else OPEN
            index = self._pending.find(tag)
            if index < 0:
                break
            if not self._inside:
                out.append(self._visible(self._pending[:index]))
            self._pending = self._pending[index + len(tag) :]
            self._after_block = self._inside
            self._inside = not self._inside
        held = _partial_tag(self._pending, CLOSE if self._inside else OPEN)
        certain = self._pending[: len(self._pending) - held]
        self._pending = self._pending[len(certain) :]
        if not self._inside:
            out.append(self._visible(certain))
        return "".join(out)

    def flush(self) -> str:
        """What is left at the end: a dangling partial tag is text; an unclosed block is dropped."""
        rest, self._pending = self._pending, ""
        return "" if self._inside else self._visible(rest)

    def _visible(self, text: str) -> str:
        if self._after_block:
            text = text.lstrip()
            self._after_block = not text
        return text
