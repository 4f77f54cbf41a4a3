"""Per-key locks: exclusive per key, and forgotten once idle."""

from __future__ import annotations

import asyncio

from services.common.locks import KeyedLocks


async def test_holders_of_one_key_take_turns_and_other_keys_do_not_wait() -> None:
    locks, order = KeyedLocks(), []
    release = asyncio.Event()

    async def hold(key: str, tag: str) -> None:
        async with locks(key):
            order.append(f"{tag} in")
            if tag == "first":
                await release.wait()
            order.append(f"{tag} out")

    first = asyncio.create_task(hold("a", "first"))
    second = asyncio.create_task(hold("a", "second"))
    await asyncio.wait_for(hold("b", "other"), timeout=5)  # another key: not behind "first"
    assert order == ["first in", "other in", "other out"] and len(locks) == 1
    release.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["first out", "second in", "second out"]


async def test_the_map_is_empty_once_nobody_holds_or_waits() -> None:
    """Hole: lock maps in storage and the proxy only grew (one entry per name ever asked for)."""
    locks = KeyedLocks()
    for index in range(1000):
        async with locks(f"tenant/random-{index}"):
            pass
    assert len(locks) == 0
    try:
        async with locks("x"):
            raise RuntimeError("a holder that fails")
    except RuntimeError:
        pass
    assert len(locks) == 0
