"""Two storage servers over one object store: the record's conditional writes decide every race.

Each server orders its own callers with its in-process locks, which do nothing for the other one; what
keeps the head's compare-and-swap exact across them is that the object store itself refuses a record write
whose entity tag is stale.
"""

from __future__ import annotations

import asyncio

from services.common.errors import Aborted, AlreadyExists
from services.storage.settings import StorageSettings
from tests.unit.storage.conftest import LORA, adapter_files, connect, lineage, serve

NAME = "acme/bot"


async def test_twenty_concurrent_commits_on_one_head_through_two_replicas_have_one_winner(
    settings: StorageSettings,
) -> None:
    async with (
        serve(settings) as left,
        serve(settings) as right,
        connect(left.target) as to_left,
        connect(right.target) as to_right,
    ):
        await to_left.create_adapter(NAME, "smollm2-135m", LORA)
        first = await to_right.upload_version(NAME, 0, adapter_files(seed=1), lineage())
        outcomes = await asyncio.gather(
            *(
                (to_left, to_right)[n % 2].upload_version(NAME, first.version, adapter_files(seed=10 + n), lineage())
                for n in range(20)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, Aborted) for o in outcomes if isinstance(o, BaseException)), outcomes

        for client in (to_left, to_right):
            record = await client.get_adapter(NAME)
            assert record.head_version == winners[0].version
            versions = await client.list_versions(NAME)
            assert [(v.version, v.parent_version) for v in versions] == [
                (first.version, 0),
                (winners[0].version, first.version),
            ]


async def test_the_same_adapter_created_through_two_replicas_at_once_exists_once(settings: StorageSettings) -> None:
    async with (
        serve(settings) as left,
        serve(settings) as right,
        connect(left.target) as to_left,
        connect(right.target) as to_right,
    ):
        outcomes = await asyncio.gather(
            *((to_left, to_right)[n % 2].create_adapter(NAME, "smollm2-135m", LORA) for n in range(10)),
            return_exceptions=True,
        )
        created = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(created) == 1, outcomes
        assert all(isinstance(o, AlreadyExists) for o in outcomes if isinstance(o, BaseException))
        assert (await to_right.get_adapter(NAME)).generation == created[0].generation
