"""Page tokens of listings: where the last page ended, opaque to callers (URL-safe base64 of a string)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TypeVar

from services.common.errors import InvalidArgument

T = TypeVar("T")


def next_page_token(last: str) -> str:
    """The token of a page that ended at ``last``."""
    return base64.urlsafe_b64encode(last.encode()).decode()


def read_page_token(token: str, parse: Callable[[str], T], empty: T) -> T:
    """Where the page ``token`` names starts, through ``parse`` (``empty`` for no token); a token that does
    not decode or parse is INVALID_ARGUMENT."""
    if not token:
        return empty
    try:
        return parse(base64.urlsafe_b64decode(token.encode()).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidArgument):
        raise InvalidArgument(f"invalid page_token {token!r}", param="page_token") from None
