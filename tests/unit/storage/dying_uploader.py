"""A trainer stand-in that commits one version through a real ``StorageClient`` and is SIGKILLed part-way
(a test helper, run as ``python -m tests.unit.storage.dying_uploader TARGET TOKEN NAME PARENT JOB SEED KILL``).

``KILL`` is where the process dies: a number k kills it just before it hands message k of the
``PutVersion`` stream to gRPC (0 is the header, then one message per chunk; ``upload_messages`` of them in
all, so k equal to that dies after the last chunk, before the stream ends); ``answer`` kills it once the
commit's answer came back, before it could record it anywhere. The files are ``upload_files(SEED)``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from services.common.domain import Lineage
from services.storage.client import StorageClient
from services.storage.layout import CHUNK_BYTES
from tests.unit.storage.conftest import adapter_files

#: The adapter file of an upload: several chunks, so a kill can land between any two of them.
MODEL_BYTES = 5 * CHUNK_BYTES + 12345


def upload_files(seed: int) -> dict[str, bytes]:
    return adapter_files(MODEL_BYTES, seed, optimizer=True)


def upload_messages(files: dict[str, bytes]) -> int:
    """Messages of the ``PutVersion`` stream of ``files``: the header and each file's chunks."""
    return 1 + sum(-(-len(data) // CHUNK_BYTES) for data in files.values())


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _dying(put_version, kill_at: int):
    """``put_version`` (the stub's method) with a request stream that kills the process before message
    ``kill_at``."""

    def call(requests, **kwargs):
        async def counted():
            handed = 0
            async for message in requests:
                if handed == kill_at:
                    _die()
                yield message
                handed += 1
            if handed == kill_at:
                _die()

        return put_version(counted(), **kwargs)

    return call


async def main(target: str, token: str, name: str, parent: int, job: str, seed: int, kill: str) -> None:
    client = StorageClient.connect(target, token=token)
    if kill != "answer":
        client._stub.PutVersion = _dying(client._stub.PutVersion, int(kill))
    await client.upload_version(name, parent, upload_files(seed), Lineage(job_id=job))
    if kill == "answer":
        _die()
    raise SystemExit(f"the upload ended, though the process was to die at message {kill}")


if __name__ == "__main__":
    target, token, name, parent, job, seed, kill = sys.argv[1:]
    asyncio.run(main(target, token, name, int(parent), job, int(seed), kill))
