"""A storage process that is SIGKILLed at one of its object writes (a test helper, run as
``python -m tests.unit.storage.crashing_storage``).

``CLAAS_TEST_CRASH_AFTER_WRITES=N`` lets N object writes through and kills the process at the next one. A
write is a call of any of the inner store's methods named ``put*`` (``put``, and streaming ones such as
``put_file``), so the count holds whichever write methods the store has (the replica's heartbeats and head
announcements do not count). With ``CLAAS_TEST_CRASH_WHEN=after`` the process is killed instead just after
write N completed, before its caller goes on (after the commit write of a ``PutVersion``: the version is
committed, its answer is lost).
``CLAAS_TEST_CRASH_REPORT=FILE`` has the process write there, as it kills itself, where it did so:
``before|after METHOD KEY``. Settings come from the usual ``CLAAS_*`` variables. The bound port is printed
on stdout once serving.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from services.common.logs import configure_logging
from services.common.objectstore import ObjectStore, open_object_store
from services.common.settings import load_settings
from services.storage.core import REPLICAS
from services.storage.server import build_server
from services.storage.settings import StorageSettings
from services.storage.watch import EVENTS


class CrashingStore:
    """Wraps every write method of ``inner`` (an attribute named ``put*``); the rest passes through."""

    def __init__(
        self, inner: ObjectStore, writes_allowed: int, *, after: bool = False, report: Path | None = None
    ) -> None:
        if after and writes_allowed < 1:
            raise ValueError("killing after a write needs at least one write allowed")
        self._inner = inner
        self._left = writes_allowed
        self._after = after
        self._report = report

    def __getattr__(self, name: str):
        attribute = getattr(self._inner, name)
        if not name.startswith("put") or not callable(attribute):
            return attribute

        async def write(key: str, *args, **kwargs):
            if key.startswith((REPLICAS, EVENTS)):  # heartbeats and head announcements: not the writes counted
                return await attribute(key, *args, **kwargs)
            if self._left == 0:
                self._die("before", name, key)
            self._left -= 1
            result = await attribute(key, *args, **kwargs)
            if self._after and self._left == 0:
                self._die("after", name, key)
            return result

        return write

    def _die(self, when: str, method: str, key: str) -> None:
        if self._report is not None:
            self._report.write_text(f"{when} {method} {key}\n")
        os.kill(os.getpid(), signal.SIGKILL)


async def main() -> None:
    settings = load_settings(StorageSettings)
    configure_logging(settings.log_format, settings.log_level)
    store = CrashingStore(
        open_object_store(settings),
        int(os.environ["CLAAS_TEST_CRASH_AFTER_WRITES"]),
        after=os.environ.get("CLAAS_TEST_CRASH_WHEN", "before") == "after",
        report=Path(os.environ["CLAAS_TEST_CRASH_REPORT"]) if os.environ.get("CLAAS_TEST_CRASH_REPORT") else None,
    )
    server, ready, _ = build_server(settings, store=store)
    port = await server.start()
    await ready()
    await server.set_serving(True)
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
