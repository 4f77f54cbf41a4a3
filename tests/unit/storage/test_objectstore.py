"""The object-store contract, the same for the local folder and the S3 server."""

from __future__ import annotations

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
    assert await store.exists("a/b/one.bin") and not await store.exists("a/b/none.bin")

    await store.delete("a/b/one.bin")
    await store.delete("a/b/one.bin")
    await store.delete_prefix("a/b/")
    await store.delete_prefix("nothing/")

    assert await store.list("") == ["a/bc/three.bin"]
    with pytest.raises(errors.NotFound):
        await store.get("a/b/one.bin")


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
