"""Fixtures: the real storage service on a folder, and a trainer with a fake engine and teacher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.storage.client import StorageClient
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
from tests.unit.trainer.helpers import Trainer, storage_service, trainer_service


@pytest.fixture
async def storage_addr(tmp_path: Path) -> AsyncIterator[str]:
    async with storage_service(tmp_path / "store") as addr:
        yield addr


@pytest.fixture
async def storage(storage_addr: str) -> AsyncIterator[StorageClient]:
    client = StorageClient.connect(storage_addr)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def trainer(storage: StorageClient) -> AsyncIterator[Trainer]:
    engine, teacher = FakeEngine(), FakeTeacher()
    async with trainer_service(storage, engine=engine, teacher=teacher) as (stub, server, _):
        yield Trainer(stub, server, storage, engine, teacher)
