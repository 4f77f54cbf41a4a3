"""How commands print: human-readable by default, one JSON object per result with --json."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(result: dict[str, Any], *, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(result, default=str), flush=True)
    else:
        print(human, flush=True)


def fail(message: str, *, hint: str = "", code: int = 1) -> int:
    """Print an error (and what to do about it) on stderr; return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return code
