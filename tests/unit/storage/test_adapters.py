"""Adapter records, validation, listing, deletion, head watches and authentication, on both backends."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from claas.v1 import storage_pb2, storage_pb2_grpc

from services.common import errors
from services.common.domain import LoraSpec
from services.common.objectstore import ObjectStore
from services.storage.client import StorageClient
from services.storage.core import REPLICAS
from services.storage.domain import HeadEvent
from services.storage.layout import adapter_prefix
from services.storage.settings import StorageSettings
from services.storage.watch import EVENTS
from tests.unit.storage.conftest import LORA, Running, adapter_files, connect, lineage, serve


async def _written(store: ObjectStore) -> list[str]:
    """Every object but the storage replica's heartbeat and head announcements."""
    return [key for key in await store.list("") if not key.startswith((REPLICAS, EVENTS))]


BAD_NAMES = [
    "",
    "acme",
    "/acme/bot",
    "acme/bot/",
    "acme//bot",
    "acme/bot/extra",
    "Acme/bot",
    "acme/..",
    "../bot",
    "acme/b..ot",
    "-acme/bot",
    "acme/bot name",
    "a" * 64 + "/bot",
]


async def test_create_and_get(client: StorageClient) -> None:
    created = await client.create_adapter("acme/bot", "smollm2-135m", LORA)

    fetched = await client.get_adapter("acme/bot")

    assert fetched == created
    assert (fetched.name, fetched.base_model, fetched.head_version) == ("acme/bot", "smollm2-135m", 0)
    assert fetched.lora == LORA and fetched.created_at.timestamp() > 0


async def test_create_existing_is_already_exists(client: StorageClient) -> None:
    await client.create_adapter("acme/bot", "smollm2-135m", LORA)

    with pytest.raises(errors.AlreadyExists) as failure:
        await client.create_adapter("acme/bot", "other-model", LORA)

    assert failure.value.message == "adapter 'acme/bot' already exists"
    assert (await client.get_adapter("acme/bot")).base_model == "smollm2-135m"


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_names_are_invalid_and_write_nothing(client: StorageClient, store: ObjectStore, name: str) -> None:
    with pytest.raises(errors.InvalidArgument) as create:
        await client.create_adapter(name, "smollm2-135m", LORA)
    with pytest.raises(errors.InvalidArgument) as upload:
        await client.upload_version(name, 0, adapter_files(), lineage())
    with pytest.raises(errors.InvalidArgument) as read:
        await client.read_version(name, 0)

    for failure in (create, upload, read):
        assert failure.value.message.startswith(f"invalid adapter name {name!r}: expected 'tenant/adapter'")
    assert await _written(store) == []


async def test_bad_lora_spec_is_invalid(client: StorageClient, store: ObjectStore) -> None:
    with pytest.raises(errors.InvalidArgument) as failure:
        await client.create_adapter("acme/bot", "smollm2-135m", LoraSpec(rank=0, alpha=16))
    assert failure.value.message == "lora.rank must be in 1..1024, got 0"
    assert await _written(store) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_adapter("acme/nope"),
        lambda c: c.read_version("acme/nope", 1),
        lambda c: c.list_versions("acme/nope"),
        lambda c: c.set_head("acme/nope", 0, 1),
        lambda c: c.set_tag("acme/nope", "stable", 1),
        lambda c: c.upload_version("acme/nope", 0, adapter_files(), lineage()),
    ],
    ids=["get", "read", "versions", "set-head", "set-tag", "upload"],
)
async def test_unknown_adapter_is_not_found(client: StorageClient, store: ObjectStore, call) -> None:
    with pytest.raises(errors.NotFound) as failure:
        await call(client)
    assert failure.value.message == "adapter 'acme/nope' not found"
    assert await _written(store) == []


@pytest.mark.parametrize(
    ("call", "details"),
    [
        (lambda c: c.read_version("acme/bot", -1), "version must be >= 0, got -1"),
        (lambda c: c.set_head("acme/bot", -1, 1), "expected_head must be >= 0, got -1"),
        (lambda c: c.set_head("acme/bot", 0, -2), "version must be >= 1, got -2"),
        (lambda c: c.set_head("acme/bot", 0, 0), "version must be >= 1, got 0"),
        (lambda c: c.set_tag("acme/bot", "stable", -1), "version must be >= 0, got -1"),
        (lambda c: c.upload_version("acme/bot", -1, adapter_files(), lineage()), "parent_version must be >= 0, got -1"),
    ],
    ids=["read", "expected-head", "set-head", "set-head-zero", "set-tag", "upload-parent"],
)
async def test_negative_versions_are_invalid(client: StorageClient, call, details: str) -> None:
    await client.create_adapter("acme/bot", "smollm2-135m", LORA)

    with pytest.raises(errors.InvalidArgument) as failure:
        await call(client)

    assert failure.value.message == details
    assert await client.list_versions("acme/bot") == []


async def test_list_adapters_pages_by_name(client: StorageClient) -> None:
    names = [f"acme/bot-{i}" for i in range(5)]
    for name in [*reversed(names), "other/bot"]:
        await client.create_adapter(name, "smollm2-135m", LORA)
    stub = storage_pb2_grpc.AdapterStoreServiceStub(client.channel)

    pages, token = [], ""
    while True:
        page = await stub.ListAdapters(storage_pb2.ListAdaptersRequest(prefix="acme/", page_size=2, page_token=token))
        pages.append([a.name for a in page.adapters])
        token = page.next_page_token
        if not token:
            break

    assert pages == [names[:2], names[2:4], names[4:]]
    assert [a.name for a in await client.list_adapters()] == [*names, "other/bot"]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListAdapters(storage_pb2.ListAdaptersRequest(page_token="not-a-token"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "invalid page_token 'not-a-token'"


async def test_delete_is_idempotent_and_removes_everything(client: StorageClient, store: ObjectStore) -> None:
    await client.create_adapter("acme/bot", "smollm2-135m", LORA)
    await client.upload_version("acme/bot", 0, adapter_files(optimizer=True), lineage())

    assert await client.delete_adapter("acme/bot") is True
    assert await client.delete_adapter("acme/bot") is False

    with pytest.raises(errors.NotFound):
        await client.get_adapter("acme/bot")
    assert await store.list(adapter_prefix("acme/bot")) == []
    assert await client.list_adapters() == []
    recreated = await client.create_adapter("acme/bot", "smollm2-135m", LORA)
    assert recreated.head_version == 0 and await client.list_versions("acme/bot") == []


async def _next(events, timeout: float = 10.0) -> HeadEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def test_watch_heads_sees_every_head_change(client: StorageClient) -> None:
    await client.create_adapter("acme/bot", "smollm2-135m", LORA)
    await client.create_adapter("other/bot", "smollm2-135m", LORA)
    await client.upload_version("acme/bot", 0, adapter_files(seed=1), lineage())
    events = client.watch_heads("acme/", send_initial=True)
    try:
        initial = await _next(events)
        synced = await _next(events)
        await client.upload_version("other/bot", 0, adapter_files(), lineage())  # outside the prefix
        await client.upload_version("acme/bot", 1, adapter_files(seed=2), lineage())
        moved = await _next(events)
        await client.set_head("acme/bot", 2, 1)
        rolled_back = await _next(events)
        await client.delete_adapter("acme/bot")
        deleted = await _next(events)
    finally:
        await events.aclose()

    assert (initial.name, initial.head) == ("acme/bot", 1)
    assert (synced.name, synced.synced) == ("", True)  # every current head is sent: "other/bot" is not under acme/
    assert (moved.name, moved.head, moved.previous, moved.deleted) == ("acme/bot", 2, 1, False)
    assert (rolled_back.head, rolled_back.previous) == (1, 2)
    assert (deleted.name, deleted.deleted, deleted.previous) == ("acme/bot", True, 1)


async def test_shutdown_ends_watches_at_once(settings: StorageSettings) -> None:
    slow_grace = settings.model_copy(update={"grace_period_s": 60.0})
    async with serve(slow_grace) as running, connect(running.target) as client:
        await client.create_adapter("acme/bot", "smollm2-135m", LORA)
        events = client.watch_heads("", send_initial=True)
        await _next(events)  # the initial heads come after the watch is registered...
        assert (await _next(events)).synced  # ...then the end of them
        started = asyncio.get_running_loop().time()
        await running.server.stop()
        with pytest.raises(errors.Unavailable) as ended:
            await _next(events)
        await events.aclose()
    assert asyncio.get_running_loop().time() - started < 10
    assert ended.value.message == "storage is shutting down; watch again"


async def test_call_without_token_is_unauthenticated(storage: Running, store: ObjectStore) -> None:
    async with connect(storage.target, token="") as anonymous:
        with pytest.raises(errors.Unauthenticated) as unary:
            await anonymous.create_adapter("acme/bot", "smollm2-135m", LORA)
        with pytest.raises(errors.Unauthenticated) as stream:
            await anonymous.upload_version("acme/bot", 0, adapter_files(), lineage())
    async with connect(storage.target, token="wrong") as impostor:
        with pytest.raises(errors.Unauthenticated) as wrong:
            await impostor.get_adapter("acme/bot")

    for failure in (unary, stream, wrong):
        assert failure.value.message == "missing or invalid internal token"
    assert await _written(store) == []


async def test_an_adapter_created_again_is_a_new_generation_even_after_a_restart(settings) -> None:
    async with serve(settings) as storage, connect(storage.target) as client:
        assert (await client.create_adapter("acme/bot", "smollm2-135m", LORA)).generation == 1
        await client.delete_adapter("acme/bot")
        assert (await client.create_adapter("acme/bot", "smollm2-135m", LORA)).generation == 2
        assert (await client.create_adapter("acme/other", "smollm2-135m", LORA)).generation == 1
        await client.delete_adapter("acme/bot")
    async with serve(settings) as storage, connect(storage.target) as client:
        recreated = await client.create_adapter("acme/bot", "smollm2-135m", LORA)
        assert recreated.generation == 3
        events = client.watch_heads("acme/")
        assert await anext(events) == HeadEvent("acme/bot", 0, 0, generation=3)
        await events.aclose()
