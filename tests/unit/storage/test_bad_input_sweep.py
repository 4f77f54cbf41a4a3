"""Every public field of every storage RPC, sent a bad value over real gRPC: each gets a clear client error
that names the field (never INTERNAL or UNKNOWN), and the store is as it was before."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from claas.v1 import common_pb2, storage_pb2, storage_pb2_grpc

from services.storage.client import StorageClient
from services.storage.settings import StorageSettings
from tests.unit.storage.conftest import LORA, adapter_files, lineage, serve
from tests.unit.sweep import BAD_INT32, BAD_INT64, BAD_NAMES, Case, assert_client_error, params, refused, values

NAME = "acme/bot"
FILES = adapter_files(256)
#: Adapter names that are wrong as a whole, beside the bad parts of BAD_NAMES.
BAD_ADAPTER_NAMES = {
    **BAD_NAMES,
    "no-tenant": "bot",
    "three-parts": "acme/bot/x",
    "dot-dot-part": "acme/..",
    "empty-part": "acme/",
    "tenant-traversal": "../acme/bot",
}
#: Tags and prefixes take one name part: every bad part of BAD_NAMES but the empty one (no prefix = all).
BAD_PREFIXES = {k: v for k, v in BAD_NAMES.items() if k not in ("empty", "space")} | {"traversal-deep": "acme/../"}
BAD_TOKENS = {"garbage": "not-a-token", "traversal": "../../x", "nul": "\x00", "unicode": "\u00e4\u00f6"}
BAD_PATHS = {k: v for k, v in BAD_NAMES.items() if k != "upper"} | {"subfolder": "sub/file.bin"}
BAD_SHA = {"empty": "", "short": "ab", "upper": "A" * 64, "not-hex": "z" * 64}
NOT_UPPER = {k: v for k, v in BAD_NAMES.items() if k != "upper"}


def entries(files: dict[str, bytes]) -> list[common_pb2.FileEntry]:
    return [common_pb2.FileEntry(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest()) for p, d in files.items()]


def header(**fields: object) -> storage_pb2.PutVersionHeader:
    defaults: dict[str, object] = {
        "name": NAME,
        "parent_version": 1,
        "files": entries(FILES),
        "lineage": common_pb2.Lineage(job_id="job-sweep"),
        "set_head": True,
    }
    return storage_pb2.PutVersionHeader(**(defaults | fields))


def chunks(files: dict[str, bytes] = FILES) -> list[storage_pb2.PutVersionRequest]:
    return [
        storage_pb2.PutVersionRequest(chunk=common_pb2.FileChunk(path=p, offset=0, data=d)) for p, d in files.items()
    ]


def upload(head: storage_pb2.PutVersionHeader, *rest: storage_pb2.PutVersionRequest) -> list:
    return [storage_pb2.PutVersionRequest(header=head), *(rest or chunks())]


def file_entry(**fields: object) -> list[common_pb2.FileEntry]:
    """The declared files with the first one changed."""
    first, *others = entries(FILES)
    changed = common_pb2.FileEntry(path=first.path, size=first.size, sha256=first.sha256)
    for key, value in fields.items():
        setattr(changed, key, value)
    return [changed, *others]


def lora(**fields: object) -> common_pb2.LoraSpec:
    return common_pb2.LoraSpec(**({"rank": 8, "alpha": 16} | fields))


def create(**fields: object) -> tuple[str, object]:
    defaults: dict[str, object] = {"name": "acme/new", "base_model": "smollm2-135m", "lora": lora()}
    return "CreateAdapter", storage_pb2.CreateAdapterRequest(**(defaults | fields))


def rpc(method: str, kind: type, **defaults: object):
    def build(**fields: object) -> tuple[str, object]:
        return method, kind(**(defaults | fields))

    return build


get_adapter = rpc("GetAdapter", storage_pb2.GetAdapterRequest, name=NAME)
list_adapters = rpc("ListAdapters", storage_pb2.ListAdaptersRequest)
delete = rpc("DeleteAdapter", storage_pb2.DeleteAdapterRequest, name=NAME)
get_version = rpc("GetVersion", storage_pb2.GetVersionRequest, name=NAME, version=1)
list_versions = rpc("ListVersions", storage_pb2.ListVersionsRequest, name=NAME)
set_head = rpc("SetHead", storage_pb2.SetHeadRequest, name=NAME, expected_head=1, version=1)
set_tag = rpc("SetTag", storage_pb2.SetTagRequest, name=NAME, tag="prod", version=1)
watch = rpc("WatchHeads", storage_pb2.WatchHeadsRequest, send_initial=True)


def put(*messages: storage_pb2.PutVersionRequest) -> tuple[str, object]:
    return "PutVersion", list(messages)


CASES: list[Case] = [
    # CreateAdapter
    *values("create-name", BAD_ADAPTER_NAMES, lambda v: create(name=v), "name"),
    *values(
        "create-base_model",
        {"empty": "", "blank": "  ", "nul": "a\x00b", "newline": "a\nb", "long": "m" * 257},
        lambda v: create(base_model=v),
        "base_model",
    ),
    *values(
        "create-lora.target_modules",
        {"traversal": ["../x"], "nul": ["q\x00"], "empty": [""], "long": ["q" * 129], "many": ["q"] * 257},
        lambda v: create(lora=lora(target_modules=v)),
        "lora.target_modules",
    ),
    *values("create-lora.rank", BAD_INT32 | {"zero": 0}, lambda v: create(lora=lora(rank=v)), "lora.rank"),
    *values("create-lora.alpha", {"negative": -1, "min": -(2**31)}, lambda v: create(lora=lora(alpha=v)), "alpha"),
    *values(
        "create-lora.dropout",
        {"negative": -0.5, "one": 1.0, "nan": float("nan"), "inf": float("inf")},
        lambda v: create(lora=lora(dropout=v)),
        "lora.dropout",
    ),
    # GetAdapter, DeleteAdapter
    *values("get-name", BAD_ADAPTER_NAMES, lambda v: get_adapter(name=v), "name"),
    Case("get-name-unknown", get_adapter(name="acme/none"), "acme/none"),
    *values("delete-name", BAD_ADAPTER_NAMES, lambda v: delete(name=v), "name"),
    # ListAdapters
    *values("list-prefix", BAD_PREFIXES, lambda v: list_adapters(prefix=v), "prefix"),
    *values("list-page_size", {"negative": -1, "min": -(2**31)}, lambda v: list_adapters(page_size=v), "page_size"),
    *values("list-page_token", BAD_TOKENS, lambda v: list_adapters(page_token=v), "page_token"),
    # PutVersion: the stream's shape, then every field of the header and of a chunk
    Case("put-empty-stream", put(), "header"),
    Case("put-chunk-first", put(*chunks()), "header"),
    Case("put-no-msg", put(storage_pb2.PutVersionRequest()), "neither a header nor a chunk"),
    Case("put-two-headers", put(*upload(header()), storage_pb2.PutVersionRequest(header=header())), "header"),
    *values("put-name", BAD_ADAPTER_NAMES, lambda v: put(*upload(header(name=v))), "name"),
    Case("put-name-unknown", put(*upload(header(name="acme/none"))), "acme/none"),
    *values(
        "put-parent_version",
        {"negative": -1, "min": -(2**63)},
        lambda v: put(*upload(header(parent_version=v))),
        "parent_version",
    ),
    Case("put-files-none", put(*upload(header(files=[]))), "files"),
    *values(
        "put-lineage.job_id",
        {"nul": "job\x00", "newline": "job\n", "long": "j" * 257},
        lambda v: put(*upload(header(lineage=common_pb2.Lineage(job_id=v)))),
        "lineage.job_id",
    ),
    Case(
        "put-lineage-huge",
        put(*upload(header(lineage=common_pb2.Lineage(job_id="job-huge", feedback=["f" * 1000] * 1100)))),
        "lineage",
    ),
    *values("put-files.path", BAD_PATHS, lambda v: put(*upload(header(files=file_entry(path=v)))), "path"),
    *values(
        "put-files.size",
        {"negative": -1, "min": -(2**63)},
        lambda v: put(*upload(header(files=file_entry(size=v)))),
        "size",
    ),
    Case("put-files.size-max", put(*upload(header(files=file_entry(size=2**63 - 1)))), "limit"),
    *values("put-files.sha256", BAD_SHA, lambda v: put(*upload(header(files=file_entry(sha256=v)))), "sha256"),
    Case("put-files-twice", put(*upload(header(files=entries(FILES) * 2))), "declared twice"),
    Case("put-incarnation-garbage", put(*upload(header(incarnation="not-a-time"))), "incarnation"),
    Case("put-incarnation-other", put(*upload(header(incarnation="2000-01-01T00:00:00Z"))), "created again"),
    *values(
        "put-chunk.offset",
        {"negative": -1, "min": -(2**63), "gap": 5},
        lambda v: put(
            *upload(
                header(),
                storage_pb2.PutVersionRequest(
                    chunk=common_pb2.FileChunk(path="adapter_config.json", offset=v, data=b"x")
                ),
            )
        ),
        "offset",
    ),
    *values(
        "put-chunk.path",
        {"undeclared": "other.bin", "traversal": "../x", "nul": "a\x00b", "empty": ""},
        lambda v: put(*upload(header(), storage_pb2.PutVersionRequest(chunk=common_pb2.FileChunk(path=v, data=b"x")))),
        "chunk",
    ),
    Case(
        "put-chunk.data-empty",
        put(*upload(header(), storage_pb2.PutVersionRequest(chunk=common_pb2.FileChunk(path="adapter_config.json")))),
        "empty chunk",
    ),
    Case(
        "put-chunk.data-longer",
        put(*upload(header(), *chunks({"adapter_config.json": FILES["adapter_config.json"] + b"+"}))),
        "longer than its declared",
    ),
    # GetVersion, ListVersions
    *values("getv-name", BAD_ADAPTER_NAMES, lambda v: get_version(name=v), "name"),
    *values("getv-version", BAD_INT64, lambda v: get_version(version=v), "version"),
    *values("listv-name", BAD_ADAPTER_NAMES, lambda v: list_versions(name=v), "name"),
    *values("listv-page_size", {"negative": -1, "min": -(2**31)}, lambda v: list_versions(page_size=v), "page_size"),
    *values("listv-page_token", BAD_TOKENS, lambda v: list_versions(page_token=v), "page_token"),
    # SetHead, SetTag
    *values("sethead-name", BAD_ADAPTER_NAMES, lambda v: set_head(name=v), "name"),
    *values(
        "sethead-expected_head", {"negative": -1, "min": -(2**63)}, lambda v: set_head(expected_head=v), "expected_head"
    ),
    *values("sethead-version", BAD_INT64 | {"zero": 0}, lambda v: set_head(version=v), "version"),
    *values("settag-name", BAD_ADAPTER_NAMES, lambda v: set_tag(name=v), "name"),
    *values("settag-tag", BAD_NAMES, lambda v: set_tag(tag=v), "tag"),
    *values("settag-version", BAD_INT64, lambda v: set_tag(version=v), "version"),
    # WatchHeads
    *values("watch-prefix", BAD_PREFIXES, lambda v: watch(prefix=v), "prefix"),
]


@pytest.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """One storage server for the sweep (a refused request changes nothing), holding NAME at version 1."""
    folder: Path = tmp_path_factory.mktemp("sweep-store")
    settings = StorageSettings(host="127.0.0.1", port=0, store_url=str(folder), store_fsync=False, grace_period_s=1)
    async with serve(settings) as running:
        client = StorageClient.connect(running.target)
        await client.create_adapter(NAME, "smollm2-135m", LORA)
        await client.upload_version(NAME, 0, FILES, lineage("job-seed"))
        await client.close()
        yield running.target


async def snapshot(client: StorageClient) -> list[tuple]:
    """Every adapter with its head, tags and versions' files."""
    state = []
    for adapter in await client.list_adapters():
        versions = [(v.version, v.files) for v in await client.list_versions(adapter.name)]
        state.append((adapter.name, adapter.head_version, dict(adapter.tags), versions))
    return state


@pytest.mark.parametrize("case", params(CASES))
async def test_bad_input_is_a_client_error_and_changes_nothing(target: str, case: Case) -> None:
    client = StorageClient.connect(target)
    try:
        before = await snapshot(client)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = storage_pb2_grpc.AdapterStoreServiceStub(channel)
            method, request = case.request
            sent = iter(request) if isinstance(request, list) else request
            error = await refused(getattr(stub, method)(sent, timeout=10))
        assert_client_error(error, case.mentions)
        assert await snapshot(client) == before
    finally:
        await client.close()
