"""Which adapter version the teacher uses, and where its files come from."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition
from services.teacher.adapters import AdapterFiles
from services.teacher.domain import AdapterRef
from tests.unit.teacher.fakes import FakeStorage


async def test_version_zero_is_the_head_and_storage_is_reached_only_when_needed(tmp_path):
    connected = []

    def connect() -> FakeStorage:
        connected.append(True)
        return FakeStorage(head=4, generation=2)

    files = AdapterFiles(connect)
    assert connected == []  # not before an adapter is asked for
    assert await files.resolve(AdapterRef("acme/bot", 2)) == AdapterRef("acme/bot", 2, generation=2)
    assert await files.resolve(AdapterRef("acme/bot", 0)) == AdapterRef("acme/bot", 4, generation=2)
    dest = await files.download(AdapterRef("acme/bot", 4), tmp_path / "v4")
    assert (dest / "adapter_model.safetensors").read_bytes() == b"weights"
    assert connected == [True]
    await files.close()


async def test_an_adapter_without_versions_cannot_teach():
    files = AdapterFiles(lambda: FakeStorage(head=0))
    with pytest.raises(FailedPrecondition, match="acme/new has no version yet"):
        await files.resolve(AdapterRef("acme/new", 0))
