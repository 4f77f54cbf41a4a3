"""Rendezvous (highest-random-weight) hashing: which member of a replica set owns a key (DESIGN.md §11).

Each (member, key) pair gets a pseudo-random weight; the key's order of preference is the members sorted by
that weight, and its owner is the first. Every caller that sees the same members computes the same order
with no coordination, and a member that joins or leaves moves only the keys it wins or held: about 1/N of
them. Used for trainers (an adapter's jobs batch on one warm trainer) and for proxy replicas (chats go to
the replica whose vLLM holds the adapter). Ownership is a matter of speed only; no write relies on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, key: str) -> int:
    """The pair's weight: 64 bits of BLAKE2b over both names (stable across processes and Python runs)."""
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(key: str, members: Iterable[str]) -> list[str]:
    """The members in the key's order of preference: its owner first, then who takes over when it is gone."""
    # Ties (a 64-bit collision) fall to the name, so every caller still agrees.
    return sorted(set(members), key=lambda member: (-weight(member, key), member))


def owner(key: str, members: Iterable[str]) -> str:
    """The member that owns ``key``; raises ValueError when there is none."""
    order = ranked(key, members)
    if not order:
        raise ValueError(f"no member to own {key!r}: the replica set is empty")
    return order[0]
