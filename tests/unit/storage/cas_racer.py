"""A separate process that races for one key: ``python -m tests.unit.storage.cas_racer FIELDS KEY ETAG N``.

It opens the store the settings fields (JSON) name, waits for a line on stdin (so every racer starts at
once), tries ``N`` concurrent ``put_if_match`` of the key against ``ETAG`` and prints how many it won.
"""

from __future__ import annotations

import asyncio
import json
import sys

from services.common.errors import Aborted
from services.common.objectstore import ObjectStoreSettings, open_object_store


async def race(fields: dict[str, str], key: str, etag: str, attempts: int) -> int:
    store = open_object_store(ObjectStoreSettings(**fields))
    await store.exists(key)  # connect (and see the bucket) before the start signal
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def attempt(number: int) -> bool:
        try:
            await store.put_if_match(key, f"{sys.argv[-1]}:{number}".encode(), etag)
        except Aborted:
            return False
        return True

    return sum(await asyncio.gather(*(attempt(n) for n in range(attempts))))


if __name__ == "__main__":
    fields, key, etag, attempts = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(asyncio.run(race(fields, key, etag, attempts)), flush=True)
