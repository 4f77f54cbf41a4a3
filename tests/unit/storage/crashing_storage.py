"""A storage process that is SIGKILLed just before one of its object writes (a test helper, run as
``python -m tests.unit.storage.crashing_storage``).

``CLAAS_TEST_CRASH_AFTER_WRITES=N`` lets N ``put`` calls through and kills the process at the next one;
settings come from the usual ``CLAAS_*`` variables. The bound port is printed on stdout once serving.
"""

from __future__ import annotations

import asyncio
import os
import signal

from services.common.logs import configure_logging
from services.common.objectstore import ObjectStore, open_object_store
from services.common.settings import load_settings
from services.storage.server import build_server
from services.storage.settings import StorageSettings


class CrashingStore:
    def __init__(self, inner: ObjectStore, writes_allowed: int) -> None:
        self._inner = inner
        self._left = writes_allowed

    async def put(self, key: str, data: bytes) -> None:
        if self._left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        self._left -= 1
        await self._inner.put(key, data)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


async def main() -> None:
    settings = load_settings(StorageSettings)
    configure_logging(settings.log_format, settings.log_level)
    store = CrashingStore(open_object_store(settings), int(os.environ["CLAAS_TEST_CRASH_AFTER_WRITES"]))
    server, ready, _ = build_server(settings, store=store)
    port = await server.start()
    await ready()
    await server.set_serving(True)
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
