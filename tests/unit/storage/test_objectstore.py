"""The object-store contract, the same for the local folder and the S3 server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common import errors
from services.common.objectstore import (
    LocalFolderStore,
    MinioStore,
    ObjectStore,
    ObjectStoreSettings,
    open_object_store,
)
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]


async def test_put_get_list_delete(store: ObjectStore) -> None:
    await store.put("a/b/one.bin", b"1")
    await store.put("a/b/two.bin", b"2" * 70_000)
    await store.put("a/bc/three.bin", b"3")
    await store.put("a/b/one.bin", b"one")  # replaces

    assert await store.get("a/b/one.bin") == b"one"
    assert await store.get("a/b/two.bin") == b"2" * 70_000
    assert await store.list("a/b/") == ["a/b/one.bin", "a/b/two.bin"]
    assert await store.list("a/b") == ["a/b/one.bin", "a/b/two.bin", "a/bc/three.bin"]
    assert await store.list("a/b/t") == ["a/b/two.bin"]
    assert await store.list("a/", after="a/b/one.bin") == ["a/b/two.bin", "a/bc/three.bin"]
    assert await store.list("a/", after="a/b/") == ["a/b/one.bin", "a/b/two.bin", "a/bc/three.bin"]
    assert await store.list("a/b/", after="a/c") == []
    assert await store.exists("a/b/one.bin") and not await store.exists("a/b/none.bin")

    await store.delete("a/b/one.bin")
    await store.delete("a/b/one.bin")
    await store.delete_prefix("a/b/")
    await store.delete_prefix("nothing/")

    assert await store.list("") == ["a/bc/three.bin"]
    with pytest.raises(errors.NotFound):
        await store.get("a/b/one.bin")


async def test_a_listing_dates_each_key_by_its_last_write(store: ObjectStore) -> None:
    before = time.time()
    await store.put("beats/a.json", b"a")
    await store.put("beats/b.json", b"b")
    await store.put("other/c.json", b"c")
    written = await store.list_written("beats/")
    assert sorted(written) == await store.list("beats/") == ["beats/a.json", "beats/b.json"]
    # S3 dates to the second; the server runs on this machine's clock.
    assert all(before - 1 <= at <= time.time() + 1 for at in written.values()), (before, written)
    with pytest.raises(errors.InvalidArgument, match="invalid object key prefix"):
        await store.list_written("../beats/")


async def test_folders_are_listed_one_level_down_in_pages(store: ObjectStore) -> None:
    for key in (
        "adapters/acme/bot/adapter.json",
        "adapters/acme/bot/versions/1/x.bin",
        "adapters/acme/cat/adapter.json",
    ):
        await store.put(key, b"x")
    await store.put("adapters/zeta/one/adapter.json", b"x")
    await store.put("adapters/acme/gone/adapter.json", b"x")
    await store.delete("adapters/acme/gone/adapter.json")  # an emptied folder is no folder, as on S3

    assert await store.list_folders("adapters/") == ["acme", "zeta"]
    assert await store.list_folders("adapters/acme/") == ["bot", "cat"]
    assert await store.list_folders("adapters/acme/", after="bot") == ["cat"]
    assert await store.list_folders("adapters/acme/", limit=1) == ["bot"]
    assert await store.list_folders("") == ["adapters"]
    assert await store.list_folders("nothing/") == []
    for bad in ("adapters", "../adapters/", "/adapters/"):
        with pytest.raises(errors.InvalidArgument, match="invalid object"):
            await store.list_folders(bad)


async def test_conditional_writes_create_once_and_replace_only_what_was_read(store: ObjectStore) -> None:
    created = await store.put_if_absent("jobs/t/one.json", b"first")
    with pytest.raises(errors.AlreadyExists):
        await store.put_if_absent("jobs/t/one.json", b"second")
    read = await store.get_tagged("jobs/t/one.json")
    assert (read.data, read.etag) == (b"first", created)

    replaced = await store.put_if_match("jobs/t/one.json", b"third", read.etag)
    assert replaced != read.etag
    with pytest.raises(errors.Aborted, match="changed since it was read"):
        await store.put_if_match("jobs/t/one.json", b"stale", read.etag)
    await store.put("jobs/t/one.json", b"plain")  # an unconditional write changes the tag too
    with pytest.raises(errors.Aborted):
        await store.put_if_match("jobs/t/one.json", b"stale", replaced)
    await store.delete("jobs/t/one.json")
    with pytest.raises(errors.Aborted, match="removed since it was read"):
        await store.put_if_match("jobs/t/one.json", b"gone", replaced)
    with pytest.raises(errors.NotFound):
        await store.get_tagged("jobs/t/one.json")
    assert await store.list("") == []


async def test_twenty_concurrent_replacements_of_one_version_have_one_winner(store: ObjectStore) -> None:
    # The first content differs from every racer's: an S3 tag is the content's MD5, so a racer writing the
    # same bytes again would leave the tag as it was and let a second racer match it.
    etag = await store.put_if_absent("adapters/t/a/adapter.json", b"head")
    outcomes = await asyncio.gather(
        *(store.put_if_match("adapters/t/a/adapter.json", f"head {n}".encode(), etag) for n in range(20)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, str)]
    assert len(winners) == 1
    assert all(isinstance(o, errors.Aborted) for o in outcomes if not isinstance(o, str))
    assert (await store.get_tagged("adapters/t/a/adapter.json")).etag == winners[0]


async def test_two_processes_racing_for_one_version_have_one_winner(
    store: ObjectStore, store_fields: dict[str, str]
) -> None:
    key = "adapters/t/a/adapter.json"
    etag = await store.put_if_absent(key, b"head 1")
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.unit.storage.cas_racer", json.dumps(store_fields), key, etag, "10", name],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("left", "right")
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    wins = [int(racer.communicate(timeout=60)[0].strip()) for racer in racers]
    assert sum(wins) == 1
    winner = (await store.get(key)).decode()
    assert winner.split(":")[0] == ("left", "right")[wins.index(1)]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", ".hidden", "a/"])
async def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(errors.InvalidArgument) as failure:
        await store.put(key, b"x")
    assert failure.value.message == f"invalid object key {key!r}"
    assert await store.list("") == []


async def test_local_store_hides_temporaries(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".x.bin.123.tmp").write_bytes(b"half")  # what a killed writer leaves

    await store.put("a/x.bin", b"whole")

    assert await store.list("") == ["a/x.bin"]
    await store.delete_prefix("a/")
    assert list(tmp_path.iterdir()) == []


def test_store_url_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_object_store(ObjectStoreSettings(store_url=str(tmp_path))), LocalFolderStore)
    local = open_object_store(ObjectStoreSettings(store_url=f"file://{tmp_path}"))
    assert isinstance(local, LocalFolderStore) and local.root == tmp_path.resolve()
    s3 = open_object_store(ObjectStoreSettings(store_url="s3://claas/pre", s3_endpoint="127.0.0.1:9"))
    assert isinstance(s3, MinioStore) and s3.bucket == "claas"
    with pytest.raises(errors.FailedPrecondition, match="CLAAS_S3_ENDPOINT is required"):
        open_object_store(ObjectStoreSettings(store_url="s3://claas"))
    with pytest.raises(errors.InvalidArgument, match="invalid bucket name 'x'"):
        open_object_store(ObjectStoreSettings(store_url="s3://x", s3_endpoint="127.0.0.1:9"))
    with pytest.raises(errors.InvalidArgument, match="unsupported scheme 'ftp'"):
        open_object_store(ObjectStoreSettings(store_url="ftp://host/x"))


async def test_unreachable_s3_is_unavailable() -> None:
    settings = ObjectStoreSettings(
        store_url="s3://claas", s3_endpoint=f"127.0.0.1:{free_port()}", s3_retries=0, s3_timeout_s=2
    )
    with pytest.raises(errors.Unavailable, match="S3 server unreachable"):
        await open_object_store(settings).get("a/b")
