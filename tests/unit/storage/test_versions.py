"""Versions through real gRPC on both backends: transfers, checksums, compare-and-swap, the private optimizer."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from claas.v1 import common_pb2, storage_pb2, storage_pb2_grpc
from prometheus_client import REGISTRY

from services.common import errors
from services.common.objectstore import ObjectStore
from services.storage.client import StorageClient
from services.storage.domain import Version
from services.storage.layout import CHUNK_BYTES, versions_prefix
from tests.unit.storage.conftest import LORA, adapter_files, lineage, payload

NAME = "acme/bot"


@pytest.fixture
async def adapter(client: StorageClient) -> str:
    await client.create_adapter(NAME, "smollm2-135m", LORA)
    return NAME


async def test_20mb_round_trip_is_byte_identical(client: StorageClient, adapter: str, tmp_path: Path) -> None:
    files = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": payload(20 * 1024 * 1024)}

    version = await client.upload_version(adapter, 0, files, lineage("job-20mb"))

    assert version.version == 1 and version.parent_version == 0
    assert (await client.get_adapter(adapter)).head_version == 1
    header, received = await client.read_version(adapter, 0)
    assert received == files
    assert header.lineage == lineage("job-20mb")
    downloaded = await client.download_version(adapter, 1, tmp_path / "v1")
    assert downloaded.version == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "v1").iterdir()} == files


async def test_header_only_has_sizes_and_digests(client: StorageClient, adapter: str) -> None:
    files = adapter_files()
    await client.upload_version(adapter, 0, files, lineage())

    header = await client.get_version(adapter, 1)

    assert {f.path: (f.size, f.sha256) for f in header.files} == {
        p: (len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()
    }


def _raw_upload(header: storage_pb2.PutVersionHeader, chunks: list[common_pb2.FileChunk]):
    messages = [storage_pb2.PutVersionRequest(header=header)]
    messages += [storage_pb2.PutVersionRequest(chunk=c) for c in chunks]
    return messages


def _header(files: dict[str, bytes], parent: int = 0, name: str = NAME) -> storage_pb2.PutVersionHeader:
    entries = [
        common_pb2.FileEntry(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest()) for p, d in files.items()
    ]
    return storage_pb2.PutVersionHeader(name=name, parent_version=parent, files=entries, set_head=True)


def _chunks(files: dict[str, bytes], size: int = CHUNK_BYTES) -> list[common_pb2.FileChunk]:
    return [
        common_pb2.FileChunk(path=p, offset=o, data=d[o : o + size])
        for p, d in files.items()
        for o in range(0, len(d), size)
    ]


async def _put_raw(client: StorageClient, messages: list[storage_pb2.PutVersionRequest]) -> grpc.aio.AioRpcError:
    stub = storage_pb2_grpc.AdapterStoreServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PutVersion(iter(messages), timeout=30)
    return failure.value


async def _assert_no_version(client: StorageClient, store: ObjectStore, name: str = NAME) -> None:
    assert (await client.get_adapter(name)).head_version == 0
    assert await client.list_versions(name) == []
    assert await store.list(versions_prefix(name)) == []


async def test_corrupted_chunk_is_data_loss_and_leaves_no_version(
    client: StorageClient, adapter: str, store: ObjectStore
) -> None:
    files = adapter_files(size=3 * CHUNK_BYTES)
    chunks = _chunks(files)
    flipped = bytearray(chunks[2].data)
    flipped[100] ^= 0xFF
    chunks[2].data = bytes(flipped)

    failure = await _put_raw(client, _raw_upload(_header(files), chunks))

    assert failure.code() == grpc.StatusCode.DATA_LOSS
    assert "'adapter_model.safetensors'" in failure.details() and "sha256" in failure.details()
    await _assert_no_version(client, store)


async def test_truncated_upload_is_data_loss(client: StorageClient, adapter: str, store: ObjectStore) -> None:
    files = adapter_files(size=2 * CHUNK_BYTES)

    failure = await _put_raw(client, _raw_upload(_header(files), _chunks(files)[:-1]))

    assert failure.code() == grpc.StatusCode.DATA_LOSS
    assert f"received {CHUNK_BYTES} bytes" in failure.details()
    await _assert_no_version(client, store)


async def test_oversized_chunk_is_resource_exhausted(client: StorageClient, adapter: str, store: ObjectStore) -> None:
    files = adapter_files(size=CHUNK_BYTES + 1)

    failure = await _put_raw(client, _raw_upload(_header(files), _chunks(files, size=CHUNK_BYTES + 1)))

    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"is {CHUNK_BYTES + 1} bytes; the limit is {CHUNK_BYTES} bytes" in failure.details()
    await _assert_no_version(client, store)


@pytest.mark.parametrize(
    ("mangle", "details"),
    [
        (
            lambda h, c: [storage_pb2.PutVersionRequest(header=h), *c, storage_pb2.PutVersionRequest(header=h)],
            "only one header",
        ),
        (lambda h, c: c, "must start with a header"),
        (
            lambda h, c: [
                storage_pb2.PutVersionRequest(header=h),
                storage_pb2.PutVersionRequest(chunk=common_pb2.FileChunk(path="extra.bin", data=b"x")),
            ],
            "undeclared file 'extra.bin'",
        ),
        (
            lambda h, c: [
                storage_pb2.PutVersionRequest(header=h),
                storage_pb2.PutVersionRequest(chunk=common_pb2.FileChunk(path="adapter_config.json", offset=5)),
            ],
            "at offset 5, expected 0",
        ),
        (  # hole: unlimited empty chunks were accepted, holding the call open
            lambda h, c: (
                [storage_pb2.PutVersionRequest(header=h)]
                + [storage_pb2.PutVersionRequest(chunk=common_pb2.FileChunk(path="adapter_config.json"))] * 3
            ),
            "empty chunk of 'adapter_config.json'",
        ),
        (  # hole: a sender's extra bytes were reported as DATA_LOSS
            lambda h, c: [
                storage_pb2.PutVersionRequest(header=h),
                *c,
                storage_pb2.PutVersionRequest(
                    chunk=common_pb2.FileChunk(path="adapter_config.json", offset=len(c[0].chunk.data), data=b"+")
                ),
            ],
            "'adapter_config.json' is longer than its declared",
        ),
    ],
    ids=["second-header", "chunk-first", "undeclared-file", "gap", "empty-chunks", "longer-than-declared"],
)
async def test_malformed_stream_is_invalid_argument(
    client: StorageClient, adapter: str, store: ObjectStore, mangle, details: str
) -> None:
    files = adapter_files()
    chunks = [storage_pb2.PutVersionRequest(chunk=c) for c in _chunks(files)]

    failure = await _put_raw(client, mangle(_header(files), chunks))

    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in failure.details()
    await _assert_no_version(client, store)


@pytest.mark.parametrize(
    ("path", "details"),
    [
        ("../escape", "invalid file path '../escape'"),
        ("sub/file.bin", "invalid file path 'sub/file.bin'"),
        ("manifest.json", "invalid file path 'manifest.json'"),
        ("Manifest.JSON", "invalid file path 'Manifest.JSON'"),  # hole: the manifest on a case-insensitive disk
        ("", "invalid file path ''"),
    ],
)
async def test_unsafe_file_names_are_refused(
    client: StorageClient, adapter: str, store: ObjectStore, path: str, details: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as failure:
        await client.upload_version(adapter, 0, {path: b"data"}, lineage())
    assert details in failure.value.message
    await _assert_no_version(client, store)


async def test_concurrent_writers_exactly_one_commits(client: StorageClient, adapter: str) -> None:
    await client.upload_version(adapter, 0, adapter_files(seed=0), lineage())

    results = await asyncio.gather(
        *(client.upload_version(adapter, 1, adapter_files(seed=i), lineage(f"job-{i}")) for i in range(20)),
        return_exceptions=True,
    )

    winners = [r for r in results if isinstance(r, Version)]
    losers = [r for r in results if isinstance(r, errors.Aborted)]
    assert len(winners) == 1 and len(losers) == 19, results
    assert {e.message for e in losers} == {f"head of adapter {adapter!r} is 2, not 1"}
    assert [v.version for v in await client.list_versions(adapter)] == [1, 2]
    won = int(winners[0].lineage.job_id.removeprefix("job-"))
    assert (await client.read_version(adapter, 2))[1] == adapter_files(seed=won)
    following = await client.upload_version(adapter, 2, adapter_files(seed=99), lineage())
    assert following.version == 3


async def test_optimizer_only_with_include_optimizer(client: StorageClient, adapter: str, tmp_path: Path) -> None:
    files = adapter_files(optimizer=True)
    public = {p: d for p, d in files.items() if p != "optimizer.safetensors"}

    committed = await client.upload_version(adapter, 0, files, lineage())

    assert {f.path for f in committed.files} == set(public)
    header, received = await client.read_version(adapter, 1)
    assert received == public and {f.path for f in header.files} == set(public)
    await client.download_version(adapter, 0, tmp_path / "public")
    assert sorted(p.name for p in (tmp_path / "public").iterdir()) == sorted(public)
    assert {f.path for f in (await client.get_version(adapter, 1)).files} == set(public)
    assert [{f.path for f in v.files} for v in await client.list_versions(adapter)] == [set(public)]
    _, private = await client.read_version(adapter, 1, include_optimizer=True)
    assert private == files


async def test_set_head_is_compare_and_swap(client: StorageClient, adapter: str) -> None:
    for parent in (0, 1):
        await client.upload_version(adapter, parent, adapter_files(seed=parent), lineage())

    with pytest.raises(errors.Aborted) as lost:
        await client.set_head(adapter, expected=1, version=1)
    assert lost.value.message == f"head of adapter {adapter!r} is 2, not 1"
    rolled_back = await client.set_head(adapter, expected=2, version=1)

    assert rolled_back.head_version == 1
    assert (await client.read_version(adapter, 0))[1] == adapter_files(seed=0)
    with pytest.raises(errors.Aborted):
        await client.upload_version(adapter, 2, adapter_files(seed=5), lineage())
    assert (await client.upload_version(adapter, 1, adapter_files(seed=5), lineage())).version == 3
    with pytest.raises(errors.NotFound) as missing:
        await client.set_head(adapter, expected=3, version=9)
    assert missing.value.message == f"version 9 of adapter {adapter!r} not found"


async def test_set_tag_points_and_removes(client: StorageClient, adapter: str) -> None:
    await client.upload_version(adapter, 0, adapter_files(), lineage())

    assert dict((await client.set_tag(adapter, "stable", 1)).tags) == {"stable": 1}
    assert dict((await client.get_adapter(adapter)).tags) == {"stable": 1}
    assert dict((await client.set_tag(adapter, "stable", 0)).tags) == {}
    with pytest.raises(errors.NotFound) as missing:
        await client.set_tag(adapter, "next", 4)
    assert missing.value.message == f"version 4 of adapter {adapter!r} not found"
    with pytest.raises(errors.InvalidArgument) as bad:
        await client.set_tag(adapter, "Not A Tag", 1)
    assert "invalid tag 'Not A Tag'" in bad.value.message


async def test_unknown_versions_are_not_found(client: StorageClient, adapter: str) -> None:
    with pytest.raises(errors.NotFound) as empty:
        await client.read_version(adapter, 0)
    assert empty.value.message == f"adapter {adapter!r} has no version yet"
    await client.upload_version(adapter, 0, adapter_files(), lineage())
    with pytest.raises(errors.NotFound) as missing:
        await client.read_version(adapter, 2)
    assert missing.value.message == f"version 2 of adapter {adapter!r} not found"


async def test_stored_corruption_is_data_loss_on_read(client: StorageClient, adapter: str, store: ObjectStore) -> None:
    await client.upload_version(adapter, 0, adapter_files(), lineage())
    await store.put(f"{versions_prefix(adapter)}1/adapter_model.safetensors", b"bit rot")

    with pytest.raises(errors.DataLoss) as failure:
        await client.read_version(adapter, 1)

    assert failure.value.message == f"stored file 'adapter_model.safetensors' of {adapter!r} v1 is corrupt"


PUT_OK = {"service": "claas.v1.AdapterStoreService", "method": "PutVersion", "code": "OK"}


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


async def test_metrics_count_bytes_latency_and_conflicts(client: StorageClient, adapter: str) -> None:
    files = adapter_files(size=3 * CHUNK_BYTES, optimizer=True)
    public_bytes = sum(len(d) for p, d in files.items() if p != "optimizer.safetensors")
    before = {
        "in": _sample("claas_storage_received_bytes_total"),
        "out": _sample("claas_storage_sent_bytes_total"),
        "puts": _sample(
            "claas_rpc_seconds_count", service="claas.v1.AdapterStoreService", method="PutVersion", code="OK"
        ),
        "conflicts": _sample("claas_storage_cas_conflicts_total", operation="set_head"),
    }

    await client.upload_version(adapter, 0, files, lineage())
    await client.read_version(adapter, 1)
    with pytest.raises(errors.Aborted):
        await client.set_head(adapter, expected=0, version=1)

    assert _sample("claas_storage_received_bytes_total") - before["in"] == sum(len(d) for d in files.values())
    assert _sample("claas_storage_sent_bytes_total") - before["out"] == public_bytes
    assert _sample("claas_rpc_seconds_count", **PUT_OK) - before["puts"] == 1
    assert _sample("claas_storage_cas_conflicts_total", operation="set_head") - before["conflicts"] == 1


async def test_a_retried_commit_returns_the_version_it_already_made(client: StorageClient, adapter: str) -> None:
    """Hole: storage finished a commit after its caller was gone; the caller's retry must not make another."""
    files = adapter_files(seed=1)
    first = await client.upload_version(adapter, 0, files, lineage("job-lost-reply"))
    again = await client.upload_version(adapter, 0, files, lineage("job-lost-reply"))  # the head is 1 now

    assert (again.version, again.parent_version) == (first.version, 0) == (1, 0)
    assert [v.version for v in await client.list_versions(adapter)] == [1]
    assert (await client.get_adapter(adapter)).head_version == 1
    following = await client.upload_version(adapter, 1, adapter_files(seed=2), lineage("job-next"))
    assert following.version == 2
    # A job id is one commit: other files under it are refused, and nothing changes.
    with pytest.raises(errors.AlreadyExists) as reused:
        await client.upload_version(adapter, 2, adapter_files(seed=3), lineage("job-lost-reply"))
    assert reused.value.message == (
        f"job 'job-lost-reply' already committed version 1 of {adapter!r} with other files; a job id commits once"
    )
    assert [v.version for v in await client.list_versions(adapter)] == [1, 2]
    assert (await client.get_adapter(adapter)).head_version == 2


async def test_two_files_whose_names_differ_only_in_case_are_refused(
    client: StorageClient, adapter: str, store: ObjectStore
) -> None:
    """Hole: "Weights.bin" and "weights.bin" are one file on a case-insensitive disk."""
    with pytest.raises(errors.InvalidArgument) as failure:
        await client.upload_version(adapter, 0, {"Weights.bin": b"a", "weights.bin": b"b"}, lineage())
    assert failure.value.message == "file 'weights.bin' declared twice (names are compared without case)"
    await _assert_no_version(client, store)


async def test_versions_come_in_pages_that_stay_under_the_message_limit(client: StorageClient, adapter: str) -> None:
    """Hole: ListVersions was one message; with ~70 KB of lineage per version it passed the 16 MiB limit
    after a few hundred versions and the adapter could never be listed again."""
    from services.common.domain import Lineage
    from services.storage.core import PAGE_BYTES

    feedback = tuple(payload(450_000, seed=9).hex()[i : i + 1000] for i in range(0, 900_000, 1000))
    heavy = Lineage(job_id="", feedback=feedback)  # about 0.9 MB of lineage per version (the limit is 1 MiB)
    for parent in range(10):
        await client.upload_version(adapter, parent, adapter_files(seed=parent), replace(heavy, job_id=f"j{parent}"))

    first, token = await client.versions_page(adapter, page_size=8)
    assert token and 1 <= len(first) < 8  # the bytes ended the page before the count did
    assert sum(len(v.to_json()) for v in first) <= PAGE_BYTES + 1_000_000
    rest = []
    while token:
        page, token = await client.versions_page(adapter, page_size=8, page_token=token)
        rest.extend(page)
    assert [v.version for v in first + rest] == list(range(1, 11))
    assert [v.version for v in await client.list_versions(adapter)] == list(range(1, 11))
    small, token = await client.versions_page(adapter, page_size=1)
    assert [v.version for v in small] == [1] and token
    with pytest.raises(errors.InvalidArgument, match="invalid page_token"):
        await client.versions_page(adapter, page_token="not-a-token")


async def test_a_version_of_a_deleted_adapter_never_lands_on_its_successor(client: StorageClient, adapter: str) -> None:
    """Hole: the head CAS compared numbers only, so a job started on the old v1 could commit as v2 of a new
    adapter of the same name."""
    old = await client.get_adapter(adapter)
    await client.upload_version(adapter, 0, adapter_files(seed=1), lineage(), incarnation=old.incarnation)
    await client.delete_adapter(adapter)
    await client.create_adapter(adapter, "smollm2-135m", LORA)
    await client.upload_version(adapter, 0, adapter_files(seed=2), lineage())  # the new adapter's v1

    with pytest.raises(errors.FailedPrecondition, match="was deleted and created again"):
        await client.upload_version(adapter, 1, adapter_files(seed=3), lineage(), incarnation=old.incarnation)
    assert [v.version for v in await client.list_versions(adapter)] == [1]
    new = await client.get_adapter(adapter)
    assert new.incarnation != old.incarnation
    committed = await client.upload_version(adapter, 1, adapter_files(seed=3), lineage(), incarnation=new.incarnation)
    assert committed.version == 2


async def test_a_large_upload_onto_a_moved_head_is_aborted_not_internal(client: StorageClient) -> None:
    """Refused before its bytes are stored, and answered ABORTED (the code a trainer retries on the new
    head) even while the client is still streaming megabytes."""
    await client.create_adapter("acme/bot", "smollm2-135m", LORA)
    await client.upload_version("acme/bot", 0, adapter_files(seed=1), lineage())
    large = adapter_files(8 << 20, seed=2)
    for _ in range(10):
        with pytest.raises(errors.Aborted, match="head of adapter 'acme/bot' is 1, not 0"):
            await client.upload_version("acme/bot", 0, large, lineage())
    assert [v.version for v in await client.list_versions("acme/bot")] == [1]
