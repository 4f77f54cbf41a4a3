"""Shared pieces of the bad-input sweeps: the bad values, one case per field and value, and the check that a
refusal is a clear client error (never INTERNAL or UNKNOWN) whose details name the field."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

#: What a bad request may get: the caller's fault, said so. INTERNAL, UNKNOWN (and everything else) are bugs.
CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

#: Bad names (adapter, tenant, tag, prefix, file): each is refused by the name rules.
BAD_NAMES: dict[str, str] = {
    "empty": "",
    "traversal": "../x",
    "nul": "a\x00b",
    "unicode": "ad\u00e4pter",
    "upper": "Bot",
    "space": "a b",
    "oversized": "x" * 5000,
}

#: int64 fields: below zero and the extremes protobuf can still carry.
BAD_INT64: dict[str, int] = {"negative": -1, "min": -(2**63), "max": 2**63 - 1}
#: int32 fields: likewise.
BAD_INT32: dict[str, int] = {"negative": -1, "min": -(2**31), "max": 2**31 - 1}


@dataclass(frozen=True)
class Case:
    """One bad value of one field. ``mentions``: what the refusal's details must contain (the field, in the
    words the service uses for it; alternatives separated by ``|``)."""

    id: str
    request: Any
    mentions: str
    extra: dict[str, Any] = field(default_factory=dict)


def params(cases: Iterable[Case]) -> list[Any]:
    """The cases as pytest parameters, each under its id."""
    cases = list(cases)
    ids = [case.id for case in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {sorted(duplicates)}"
    return [pytest.param(case, id=case.id) for case in cases]


def values(prefix: str, bad: dict[str, Any], build: Callable[[Any], Any], mentions: str) -> list[Case]:
    """One case per bad value of one field: ``build(value)`` makes the request."""
    return [Case(f"{prefix}-{name}", build(value), mentions) for name, value in bad.items()]


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error of a call (unary, or a stream read to its end) that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return caught.value


def assert_client_error(error: grpc.aio.AioRpcError, mentions: str) -> None:
    """A clear client error: one of CLIENT_CODES, with details that name the field."""
    code, details = error.code(), error.details() or ""
    assert code in CLIENT_CODES, f"{code.name}: {details}"
    assert names(details, mentions), f"{code.name}: {details!r} does not mention {mentions!r}"


def names(message: str, mentions: str) -> bool:
    """Whether ``message`` contains one of the ``|``-separated words of ``mentions`` (case aside)."""
    return any(word.lower() in message.lower() for word in mentions.split("|"))
