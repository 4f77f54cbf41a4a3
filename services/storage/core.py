"""The adapter store: records, immutable versions, a head moved by compare-and-swap, tags, head watches.

How a write stays safe (DESIGN.md §4). Every change of one adapter happens under that adapter's lock in this
process, and every write of its record is conditional in the object store itself: created only if absent,
replaced only if it still has the entity tag it was read with (``ABORTED`` otherwise), so a write by another
process (another storage replica) is never overwritten. Adapters are listed from the store's own folders,
so every replica sees every adapter. ``PutVersion`` first receives and verifies the whole upload privately
(``upload.py``), then, under the lock:

1. returns the version the job already made if the record remembers its job id (a retry after a lost
   answer), else checks head == parent (``ABORTED`` otherwise; nothing written);
2. writes the record with ``last_version = pending = n`` and who reserved it, when — the reservation: n is
   never handed out again;
3. writes the version's files, then its ``manifest.json``;
4. writes the record with ``pending = 0``, the head moved to n and the job id remembered — the commit point.

Each object write is atomic, and readers see version n only when the record says it is committed (n <= last
version, n != pending) and its manifest exists. A writer killed between any two writes therefore leaves the
old record (old head, readable) or a record with ``pending = n`` that hides version n; ``recover`` (at start)
deletes pending and manifest-less version folders and leftovers of interrupted deletes.

A reservation of another replica is cleared (by the next commit of the adapter, or by recovery) only once that
replica's heartbeat is older than the lease, or the reservation older than ``stale_write_s``; a replica whose
own heartbeat has not been written for most of the lease stops its commit before the next write (fencing), so
a replica taken for gone never writes into a version folder another one has cleared.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator

import structlog

from services.common.errors import (
    Aborted,
    AlreadyExists,
    ClaasError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.heartbeat import Heartbeats
from services.common.locks import KeyedLocks
from services.common.naming import check_version, owner_of
from services.common.objectstore import ObjectStore
from services.common.pages import next_page_token, read_page_token
from services.storage import layout, metrics
from services.storage.domain import (
    AdapterRecord,
    Chunk,
    FileEntry,
    HeadEvent,
    LoraSpec,
    UploadHeader,
    Version,
    now,
)
from services.storage.layout import PRIVATE_FILES, check_name, check_prefix, check_tag
from services.storage.upload import Spool, SpoolLimits, check_header, receive
from services.storage.watch import HeadBroadcaster, HeadFeed

log = structlog.get_logger("claas.storage")

#: Where a page of versions ends early: the bytes of its manifests (well under the 16 MiB message limit).
PAGE_BYTES = 4 << 20
#: Manifests read concurrently while a page of versions is built.
_MANIFESTS_AT_ONCE = 16
#: Where the storage replicas' heartbeats live.
REPLICAS = "storage-replicas/"
#: Share of the lease after this replica's last written heartbeat at which its own commits stop writing.
_FENCE = 2 / 3


@dataclasses.dataclass(frozen=True)
class Retention:
    """How many versions an adapter keeps and how much a tenant may keep (0: no bound)."""

    #: Besides the head and the tagged versions, the latest this many; older ones are deleted after a commit.
    keep_latest: int = 0
    max_tenant_versions: int = 0
    max_tenant_bytes: int = 0


@dataclasses.dataclass
class Usage:
    """The versions one tenant keeps and the bytes of their files."""

    versions: int = 0
    bytes: int = 0

    def change(self, versions: int, size: int) -> None:
        self.versions += versions
        self.bytes += size


class AdapterStore:
    """Call ``recover`` once before serving: it cleans up after crashes and starts this replica's heartbeat;
    ``close`` stops it.

    ``replica`` names this process among the storage replicas on the store (stable across its restarts, so
    a restarted one clears its own reservations at once); ``lease_s`` is how old a replica's heartbeat may be
    before the others take it for gone; ``stale_write_s`` how old a reservation may be before any replica
    clears it; ``usage_refresh_s`` how old a tenant's count of what it keeps may be when a quota is checked
    before it is counted again from the tenant's records (0: on every check).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        limits: SpoolLimits,
        page_size: int = 100,
        max_page_size: int = 1000,
        watch_queue_size: int = 1000,
        max_parallel_transfers: int = 4,
        retention: Retention = Retention(),
        replica: str,
        lease_s: float = 30.0,
        stale_write_s: float = 600.0,
        head_poll_s: float = 1.0,
        usage_refresh_s: float = 30.0,
    ) -> None:
        self.store = store
        self.heartbeats = Heartbeats(store, REPLICAS, replica, lease_s=lease_s)
        self._stale_write_s = stale_write_s
        self._beaten_at = 0.0
        self._beating: asyncio.Task | None = None
        self._limits = limits
        self._retention = retention
        # What each tenant keeps (versions, bytes), counted from its records at its first quota check, then
        # kept current by this replica's commits, retirements and deletes. The other replicas' changes reach it
        # when a quota check finds the tenant's count older than ``usage_refresh_s`` and counts it again:
        # a tenant may pass its quota by what the other replicas committed for it within that time, no more.
        self._usage: dict[str, Usage] = collections.defaultdict(Usage)
        self._counted_at: dict[str, float] = {}
        self._usage_refresh_s = usage_refresh_s
        # Bound the memory of transfers whatever the number of callers: each one in flight holds a chunk or
        # two; the others wait their turn (within their deadline) with their bytes held back by gRPC's flow
        # control. Uploads and downloads count apart, so readers never hold commits back. A bound of this
        # process's memory, not a lock on data.
        self._uploads = asyncio.Semaphore(max_parallel_transfers)
        self._downloads = asyncio.Semaphore(max_parallel_transfers)
        self._page_size = page_size
        self._max_page_size = max_page_size
        self._locks = KeyedLocks()
        self._recovered = False
        self.heads = HeadBroadcaster(watch_queue_size)
        self.feed = HeadFeed(store, self.heartbeats.member, self.heads, self._current_head, poll_s=head_poll_s)
        self._following: asyncio.Task | None = None

    # -- records -------------------------------------------------------------------------------------

    def _page(self, page_size: int) -> int:
        """The size of a page the caller asked for (0: the default), within the bound."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0, got {page_size}", param="page_size")
        return min(page_size or self._page_size, self._max_page_size)

    def _serving(self) -> None:
        """Calls wait for crash recovery: before it ends, a pending version or a half-deleted adapter is
        still on disk."""
        if not self._recovered:
            raise Unavailable("storage is recovering from its last stop; retry in a moment")

    async def _load(self, name: str) -> AdapterRecord:
        return (await self._read(name))[0]

    async def _read(self, name: str) -> tuple[AdapterRecord, str]:
        """The record and its entity tag, which the next write of it must match."""
        try:
            stored = await self.store.get_tagged(layout.record_key(name))
        except NotFound:
            raise NotFound(f"adapter {name!r} not found", param="name") from None
        return AdapterRecord.from_json(stored.data), stored.etag

    async def _save(self, record: AdapterRecord, etag: str) -> str:
        """Replace the record only if it is still the one read (tag ``etag``): a writer that is not this
        process (another storage replica) makes this write ``ABORTED`` instead of losing its change."""
        try:
            return await self.store.put_if_match(layout.record_key(record.name), record.to_json(), etag)
        except Aborted:
            raise Aborted(f"adapter {record.name!r} changed meanwhile; read it again and retry") from None

    async def create_adapter(self, name: str, base_model: str, lora: LoraSpec) -> AdapterRecord:
        self._serving()
        check_name(name)
        _check_spec(base_model, lora)
        exists = AlreadyExists(f"adapter {name!r} already exists", param="name")
        async with self._locks(name):
            if await self.store.exists(layout.record_key(name)):
                raise exists
            # Leftovers of an interrupted delete must not leak into the new adapter. The record itself is kept
            # out of it: another replica may have created it since the check above.
            await self.store.delete_prefix(layout.versions_prefix(name))
            for key in await self.store.list(layout.adapter_prefix(name)):
                if key != layout.record_key(name):
                    await self.store.delete(key)
            generation = await self._next_generation(name)
            record = AdapterRecord(name=name, base_model=base_model, lora=lora, created_at=now(), generation=generation)
            try:
                # Create only if absent: of two writers creating the name at once, one wins.
                await self.store.put_if_absent(layout.record_key(name), record.to_json())
            except AlreadyExists:
                raise exists from None
        log.info("adapter_created", adapter=name, base_model=base_model)
        return record

    async def _next_generation(self, name: str) -> int:
        """Counted up before the record is written: a crash in between skips a number, never reuses one."""
        key = layout.generation_key(name)
        while True:  # a lost race means another writer counted: count on from its number
            try:
                stored = await self.store.get_tagged(key)
            except NotFound:
                with contextlib.suppress(AlreadyExists):
                    await self.store.put_if_absent(key, b"1")
                    return 1
                continue
            last = int(stored.data)
            with contextlib.suppress(Aborted):
                await self.store.put_if_match(key, str(last + 1).encode(), stored.etag)
                return last + 1

    async def get_adapter(self, name: str) -> AdapterRecord:
        self._serving()
        return await self._load(check_name(name))

    async def list_adapters(
        self, prefix: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[AdapterRecord], str]:
        """A page of adapters whose names start with ``prefix``, by name, and the next page's token."""
        self._serving()
        check_prefix(prefix)
        size = self._page(page_size)
        after = read_page_token(page_token, check_name, "")
        names = await self._names(prefix, after, size + 1)
        records = []
        for name in names[:size]:
            try:
                records.append(await self._load(name))
            except NotFound:  # deleted meanwhile
                continue
        return records, next_page_token(names[size - 1]) if len(names) > size else ""

    async def _names(self, prefix: str, after: str = "", limit: int = 0) -> list[str]:
        """The names under ``prefix`` in (tenant, adapter) order, after ``after``, at most ``limit`` (0: all),
        from the folders of the store: a LIST page per 1,000 adapters, whatever their versions. A folder whose
        record is gone (a delete in progress) is named too; its reader finds no record."""
        tenant_start, slash, adapter_start = prefix.partition("/")
        after_tenant, _, after_adapter = after.partition("/")
        if slash:
            tenants = [tenant_start] if tenant_start >= after_tenant else []
        else:
            every = await self.store.list_folders(layout.ROOT)
            tenants = [t for t in every if t.startswith(tenant_start) and t >= after_tenant]
        names: list[str] = []
        for tenant in tenants:
            start = after_adapter if tenant == after_tenant else ""
            left = limit - len(names) if limit else 0
            # Without a name start to filter by, the listing can stop at the page's end.
            folders = await self.store.list_folders(
                f"{layout.ROOT}{tenant}/", after=start, limit=0 if adapter_start else left
            )
            matching = [f"{tenant}/{a}" for a in folders if a.startswith(adapter_start)]
            names.extend(matching[:left] if left else matching)
            if limit and len(names) >= limit:
                break
        return names

    async def delete_adapter(self, name: str) -> bool:
        """Remove the record first (the adapter is gone at once), then its versions. Idempotent."""
        self._serving()
        check_name(name)
        async with self._locks(name):
            try:
                record = await self._load(name)
            except NotFound:
                record = None
            await self.store.delete(layout.record_key(name))
            if record is not None:
                self._usage[owner_of(name)].change(-record.kept_versions, -record.kept_bytes)
            await self.store.delete_prefix(layout.adapter_prefix(name))
        if record is None:
            return False
        await self._moved(HeadEvent(name, 0, record.head, deleted=True, generation=record.generation))
        log.info("adapter_deleted", adapter=name)
        return True

    # -- versions ------------------------------------------------------------------------------------

    async def put_version(self, items: AsyncIterator[UploadHeader | Chunk]) -> tuple[Version, AdapterRecord]:
        """Receive a header then chunks; commit the version if the head still equals its parent."""
        self._serving()
        header = await anext(items, None)
        if not isinstance(header, UploadHeader):
            raise InvalidArgument("PutVersion must start with a header")
        # Every answer waits until the caller has sent everything: a status sent while the client is still
        # streaming often reaches it as INTERNAL instead (grpc/grpc#36066), and an ABORTED read as INTERNAL
        # is not retried on the new head. What is left of a refused upload is read and dropped, never stored.
        try:
            result = await self._put_version(header, items)
        except ClaasError:
            await _drain(items)
            raise
        await _drain(items)
        return result

    async def _put_version(
        self, header: UploadHeader, items: AsyncIterator[UploadHeader | Chunk]
    ) -> tuple[Version, AdapterRecord]:
        check_header(header, self._limits)
        # Refused before anything is spooled: the checks that count are repeated under the lock.
        record = await self._load(header.name)
        if record.committed_by(header.lineage.job_id):
            return await self._already_committed(record, header)
        _check_incarnation(record, header)
        _check_parent(record, header.parent_version, "put_version")
        async with self._uploads:
            spool = await receive(header, items, self._limits)
            # Once the bytes are verified the commit runs to its end even if the caller goes away.
            return await asyncio.shield(asyncio.ensure_future(self._commit(spool)))

    async def _commit(self, spool: Spool) -> tuple[Version, AdapterRecord]:
        header = spool.header
        name = header.name
        try:
            async with self._locks(name):
                record, etag = await self._read(name)
                if record.committed_by(header.lineage.job_id):
                    return await self._already_committed(record, header)
                _check_incarnation(record, header)
                _check_parent(record, header.parent_version, "put_version")
                if record.pending:
                    await self._clear_stale_write(record)
                n = record.last_version + 1
                head = n if header.set_head else record.head
                size = sum(entry.size for entry in header.files)
                victims = await self._victims(dataclasses.replace(record, last_version=n, head=head))
                await self._check_quota(name, 1 - len(victims), size - sum(v.size for v in victims))
                reserved = dataclasses.replace(
                    record, last_version=n, pending=n, pending_by=self.heartbeats.member, pending_at=time.time()
                )
                etag = await self._save(reserved, etag)
                try:
                    for entry in header.files:
                        self._fence(reserved)
                        path = layout.file_key(name, n, entry.path)
                        await self.store.put_file(path, spool.open(entry.path), entry.size)
                    info = Version(name, n, header.parent_version, header.files, header.lineage, now())
                    self._fence(reserved)
                    await self.store.put(layout.manifest_key(name, n), info.to_json())
                except (ClaasError, OSError):
                    await self._release(reserved, etag)
                    raise
                committed = dataclasses.replace(
                    reserved.unreserved(),
                    head=head,
                    jobs=record.with_jobs(header.lineage.job_ids, n),
                    kept_versions=record.kept_versions + 1,
                    kept_bytes=record.kept_bytes + size,
                )
                etag = await self._save(committed, etag)
                self._usage[owner_of(name)].change(1, size)
                await self._retire(committed, etag, victims)
        finally:
            spool.close()
        log.info("version_committed", adapter=name, version=n, parent=header.parent_version, head=committed.head)
        if committed.head != record.head:
            await self._moved(HeadEvent(name, committed.head, record.head, generation=record.generation))
        return info.public(False, PRIVATE_FILES), committed

    async def _stale(self, record: AdapterRecord) -> bool:
        """Whether the record's reservation is no commit in flight any more: this replica's own (seen under
        the adapter's lock, so its commit ended, or it was this replica's before a restart), one older than
        any commit takes, or one of a replica that is gone."""
        if record.pending_by == self.heartbeats.member:
            return True
        if time.time() - record.pending_at > self._stale_write_s:
            return True
        return not await self.heartbeats.alive(record.pending_by)

    async def _clear_stale_write(self, record: AdapterRecord) -> None:
        """Remove the version a commit that ended half-way reserved. Another replica's commit in flight is
        never touched: this commit is ``ABORTED`` so that its caller retries once that one ended."""
        if not await self._stale(record):
            raise Aborted(
                f"another commit of {record.name!r} (version {record.pending}) is in flight on storage replica "
                f"{record.pending_by!r}; retry in a moment"
            )
        await self.store.delete_prefix(layout.version_prefix(record.name, record.pending))

    async def _release(self, reserved: AdapterRecord, etag: str) -> None:
        """Give back the reservation of a commit that failed before its commit point, so that the other
        replicas need not wait for it to go stale; if this fails too, the next commit of the adapter clears it."""
        with contextlib.suppress(ClaasError, OSError):
            await self.store.delete_prefix(layout.version_prefix(reserved.name, reserved.pending))
            await self._save(reserved.unreserved(), etag)

    def _fence(self, reserved: AdapterRecord) -> None:
        """Stop a commit before its next write once the others may take this replica's reservation for stale:
        its heartbeat has not been written for most of the lease, or the reservation is nearly too old."""
        now_s = time.time()
        lease = self.heartbeats.lease_s
        if now_s - self._beaten_at > lease * _FENCE or now_s - reserved.pending_at > self._stale_write_s * _FENCE:
            raise Unavailable(
                f"storage replica {self.heartbeats.member!r} could not renew its heartbeat; the commit of "
                f"{reserved.name!r} stopped before its next write: retry"
            )

    async def _already_committed(self, record: AdapterRecord, header: UploadHeader) -> tuple[Version, AdapterRecord]:
        """A commit retried after an ambiguous failure (the first one landed, its answer was lost): the version
        the job made, not a second one. Its files must be the ones sent again, or the job id was reused."""
        info = await self._manifest(record, record.committed_by(header.lineage.job_id))
        if set(info.files) != set(header.files):
            raise AlreadyExists(
                f"job {header.lineage.job_id!r} already committed version {info.version} of {record.name!r} "
                "with other files; a job id commits once",
                param="lineage.job_id",
            )
        log.info("version_commit_repeated", adapter=record.name, version=info.version, job_id=header.lineage.job_id)
        return info.public(False, PRIVATE_FILES), record

    async def _committed_numbers(self, record: AdapterRecord, after: int = 0) -> list[int]:
        """The numbers of the committed versions above ``after`` whose manifest is stored, ascending."""
        keys = [layout.parse_key(k) for k in await self.store.list(layout.versions_prefix(record.name))]
        return sorted(
            k.version
            for k in keys
            if k
            and k.version is not None
            and k.version > after
            and k.file == layout.MANIFEST_FILE
            and record.is_committed(k.version)
        )

    async def _victims(self, record: AdapterRecord) -> list[Version]:
        """The versions of ``record`` that retention deletes: neither head, nor tagged, nor among the latest."""
        keep = self._retention.keep_latest
        if not keep or record.last_version <= keep:
            return []
        kept = record.kept(keep)
        numbers = [n for n in await self._committed_numbers(record) if n not in kept]
        return [await self._manifest(record, n) for n in numbers]

    async def _retire(self, record: AdapterRecord, etag: str, victims: list[Version]) -> AdapterRecord:
        """Delete ``victims`` after the commit point: hidden first (a record write), then removed; a crash in
        between leaves them hidden, and ``recover`` removes them. Never fails the commit it follows."""
        if not victims and not record.retiring:  # (a retirement that failed half-way is finished here)
            return record
        try:
            retiring = record.retire(victims)
            etag = await self._save(retiring, etag)
            self._usage[owner_of(record.name)].change(-len(victims), -sum(v.size for v in victims))
            for version in retiring.retiring:
                await self.store.delete_prefix(layout.version_prefix(record.name, version))
            done = dataclasses.replace(retiring, retiring=())
            await self._save(done, etag)
        except (ClaasError, OSError) as exc:
            log.warning("retention_failed", adapter=record.name, error=str(exc))
            return record
        log.info("versions_retired", adapter=record.name, versions=list(retiring.retiring))
        return done

    async def _check_quota(self, name: str, versions: int, size: int) -> None:
        tenant, retention = owner_of(name), self._retention
        if not (retention.max_tenant_versions or retention.max_tenant_bytes):
            return
        counted_at = self._counted_at.get(tenant)
        if counted_at is None or time.monotonic() - counted_at >= self._usage_refresh_s:
            await self._count_usage(tenant)
        usage = self._usage[tenant]
        if versions > 0 and retention.max_tenant_versions and usage.versions + versions > retention.max_tenant_versions:
            raise ResourceExhausted(
                f"tenant {tenant!r} keeps {usage.versions} versions, its quota (CLAAS_MAX_VERSIONS_PER_TENANT "
                f"{retention.max_tenant_versions}); delete adapters or keep fewer versions (CLAAS_KEEP_VERSIONS)"
            )
        if size > 0 and retention.max_tenant_bytes and usage.bytes + size > retention.max_tenant_bytes:
            raise ResourceExhausted(
                f"tenant {tenant!r} keeps {usage.bytes} bytes of versions; {size} more would pass its quota "
                f"(CLAAS_MAX_TENANT_MB, {retention.max_tenant_bytes} bytes); delete adapters or keep fewer versions"
            )

    async def _count_usage(self, tenant: str) -> None:
        """Count what ``tenant`` keeps from its adapters' records: a LIST page per 1,000 adapters and a GET per
        adapter, each time a quota check finds the count older than ``usage_refresh_s``."""
        usage = Usage()
        for name in await self._names(f"{tenant}/"):
            try:
                record = await self._load(name)
            except NotFound:  # deleted meanwhile
                continue
            usage.change(record.kept_versions, record.kept_bytes)
        self._usage[tenant] = usage
        self._counted_at[tenant] = time.monotonic()

    async def _manifest(self, record: AdapterRecord, version: int) -> Version:
        missing = NotFound(f"version {version} of adapter {record.name!r} not found", param="version")
        if not record.is_committed(version):
            raise missing
        try:
            return Version.from_json(await self.store.get(layout.manifest_key(record.name, version)))
        except NotFound:
            raise missing from None

    async def read_version(
        self, name: str, version: int = 0, *, include_optimizer: bool = False, header_only: bool = False
    ) -> tuple[Version, AsyncIterator[Chunk]]:
        """A version (0 = head) and its chunks; private files only with ``include_optimizer``."""
        self._serving()
        check_name(name)
        check_version(version)
        record = await self._load(name)
        number = version or record.head
        if number == 0:
            raise NotFound(f"adapter {name!r} has no version yet", param="version")
        info = (await self._manifest(record, number)).public(include_optimizer, PRIVATE_FILES)
        return info, self._chunks(info, () if header_only else info.files)

    async def _chunks(self, info: Version, files: tuple[FileEntry, ...]) -> AsyncIterator[Chunk]:
        """Each file streamed from the store a chunk at a time. A file is checked against its manifest as it
        goes: a corrupt one ends the stream with ``DATA_LOSS`` after its last chunk, and every reader checks
        each file before using it, so corrupt bytes are never taken for a version."""
        if not files:
            return
        async with self._downloads:
            for entry in files:
                digest, size = hashlib.sha256(), 0
                key = layout.file_key(info.name, info.version, entry.path)
                try:
                    async for piece in self.store.get_pieces(key, layout.SEND_CHUNK_BYTES):
                        digest.update(piece)
                        metrics.BYTES_SENT.inc(len(piece))
                        yield Chunk(entry.path, size, piece)
                        size += len(piece)
                except NotFound:
                    raise DataLoss(f"stored file {entry.path!r} of {info.name!r} v{info.version} is missing") from None
                if size != entry.size or digest.hexdigest() != entry.sha256:
                    raise DataLoss(f"stored file {entry.path!r} of {info.name!r} v{info.version} is corrupt")

    async def list_versions(self, name: str, page_size: int = 0, page_token: str = "") -> tuple[list[Version], str]:
        """A page of committed versions, oldest first (private files left out), and the next page's token.

        A page holds at most ``page_size`` versions and ends early once their lineage passes
        ``PAGE_BYTES``: a version's lineage can be large (every sample's text), and a list that grew past the
        message limit could never be read again."""
        self._serving()
        check_name(name)
        size = self._page(page_size)
        after = read_page_token(page_token, lambda text: check_version(int(text)), 0)
        record = await self._load(name)
        numbers = await self._committed_numbers(record, after)
        page: list[Version] = []
        used, last = 0, after
        candidates = numbers[:size]
        start = 0
        while start < len(candidates) and used <= PAGE_BYTES:
            batch = candidates[start : start + _MANIFESTS_AT_ONCE]
            start += len(batch)
            infos = await asyncio.gather(*(self._manifest(record, n) for n in batch), return_exceptions=True)
            for number, info in zip(batch, infos, strict=True):
                if used > PAGE_BYTES:
                    break
                last = number
                if isinstance(info, Version):  # else deleted meanwhile
                    page.append(info.public(False, PRIVATE_FILES))
                    used += len(info.to_json())
        more = bool(numbers) and last != numbers[-1]
        return page, next_page_token(str(last)) if more else ""

    async def set_head(self, name: str, expected: int, version: int) -> AdapterRecord:
        """Compare-and-swap of the head (rollback): ``ABORTED`` unless the head is ``expected``."""
        self._serving()
        check_name(name)
        check_version(expected, field="expected_head")
        check_version(version, allow_zero=False)
        async with self._locks(name):
            record, etag = await self._read(name)
            _check_parent(record, expected, "set_head")
            await self._manifest(record, version)
            updated = dataclasses.replace(record, head=version)
            if updated != record:
                await self._save(updated, etag)
        if updated.head != record.head:
            log.info("head_moved", adapter=name, head=version, previous=record.head)
            await self._moved(HeadEvent(name, version, record.head, generation=record.generation))
        return updated

    async def set_tag(self, name: str, tag: str, version: int) -> AdapterRecord:
        """Point ``tag`` at a committed version; version 0 removes it."""
        self._serving()
        check_name(name)
        check_tag(tag)
        check_version(version)
        async with self._locks(name):
            record, etag = await self._read(name)
            tags = {k: v for k, v in record.tags.items() if k != tag}
            if version and len(tags) >= layout.MAX_TAGS:
                raise ResourceExhausted(
                    f"adapter {name!r} has {layout.MAX_TAGS} tags, the most it may have; remove one first", param="tag"
                )
            if version:
                await self._manifest(record, version)
                tags[tag] = version
            updated = dataclasses.replace(record, tags=dict(sorted(tags.items())))
            if updated != record:
                await self._save(updated, etag)
        return updated

    # -- watching and start-up ------------------------------------------------------------------------

    async def watch(self, prefix: str = "", *, send_initial: bool = False) -> AsyncIterator[HeadEvent]:
        """Head changes under ``prefix``; with ``send_initial`` first every current head (previous = 0), then
        one ``synced`` event."""
        self._serving()
        check_prefix(prefix)
        async with self.heads.subscribe(prefix) as events:
            if send_initial:
                for name in await self._names(prefix):
                    try:
                        record = await self._load(name)
                    except NotFound:
                        continue
                    yield HeadEvent(name, record.head, 0, generation=record.generation)
                yield HeadEvent("", 0, 0, synced=True)
            async for event in events:
                yield event

    async def _moved(self, event: HeadEvent) -> None:
        """A head change this replica made: to its own watchers now, to the other replicas' through the feed."""
        self.heads.publish(event)
        try:
            await self.feed.announce(event)
        except (ClaasError, OSError) as exc:  # the change stands; the others' chats still read the record
            log.warning("head_announce_failed", adapter=event.name, error=str(exc))

    async def _current_head(self, name: str) -> tuple[int, int] | None:
        """The adapter's head and generation now (None: it is gone), for a change another replica made."""
        try:
            record = await self._load(name)
        except NotFound:
            return None
        return record.head, record.generation

    async def recover(self) -> None:
        """Make the store consistent after a crash and start the heartbeat. Run before serving."""
        await self._beat()
        self._beating = asyncio.create_task(self._keep_beating())
        by_adapter: dict[str, list[layout.KeyInfo]] = collections.defaultdict(list)
        for key in await self.store.list(layout.ROOT):
            parsed = layout.parse_key(key)
            if parsed is not None:
                by_adapter[parsed.name].append(parsed)
        orphans = 0
        for name, keys in by_adapter.items():
            async with self._locks(name):
                orphans += await self._recover_adapter(name, keys)
        await self.feed.sweep()
        self._following = asyncio.create_task(self.feed.follow())
        self._recovered = True
        log.info("recovered", adapters=len(by_adapter), orphan_versions=orphans)

    async def _beat(self) -> None:
        await self.heartbeats.beat()
        self._beaten_at = time.time()

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeats.lease_s / 3)
            try:
                await self._beat()
            except (ClaasError, OSError) as exc:  # the commits fence themselves until a beat lands again
                log.warning("heartbeat_failed", replica=self.heartbeats.member, error=str(exc))

    async def _recover_adapter(self, name: str, keys: list[layout.KeyInfo]) -> int:
        if layout.KeyInfo(name, None, layout.RECORD_FILE) not in keys:
            log.warning("removing_leftovers", adapter=name, objects=len(keys))
            await self.store.delete_prefix(layout.adapter_prefix(name))
            return 0
        record, etag = await self._read(name)
        folders = {k.version for k in keys if k.version is not None}
        manifests = {k.version for k in keys if k.version is not None and k.file == layout.MANIFEST_FILE}
        in_flight = {record.pending} if record.pending and not await self._stale(record) else set()
        stray = {v for v in folders if not (record.is_committed(v) and v in manifests)}
        # A pending folder may hold only the local store's hidden temporaries, which listing does not show;
        # another replica's commit in flight is left to it.
        stray = sorted((stray | {record.pending}) - {0} - in_flight)
        if stray and stray[-1] > record.last_version:  # never hand out a number that was ever on disk
            record = dataclasses.replace(record, last_version=stray[-1])
            etag = await self._save(record, etag)
        for version in stray:
            log.warning("removing_orphan_version", adapter=name, version=version)
            await self.store.delete_prefix(layout.version_prefix(name, version))
        if record.retiring or (record.pending and not in_flight):
            if not in_flight:
                record = record.unreserved()
            await self._save(dataclasses.replace(record, retiring=()), etag)
        return len(stray)

    def close(self) -> None:
        self.heads.close()
        for task in (self._beating, self._following):
            if task is not None:
                task.cancel()


async def _drain(items: AsyncIterator[UploadHeader | Chunk]) -> None:
    with contextlib.suppress(ClaasError):
        async for _ in items:
            pass


def _check_incarnation(record: AdapterRecord, header: UploadHeader) -> None:
    if header.incarnation and header.incarnation != record.public().incarnation:
        metrics.CAS_CONFLICTS.labels("put_version").inc()
        raise FailedPrecondition(
            f"adapter {record.name!r} was deleted and created again since this version's parent was read; "
            "the version belongs to the adapter that is gone"
        )


def _check_parent(record: AdapterRecord, expected: int, operation: str) -> None:
    if record.head != expected:
        metrics.CAS_CONFLICTS.labels(operation).inc()
        raise Aborted(f"head of adapter {record.name!r} is {record.head}, not {expected}")


def _check_spec(base_model: str, lora: LoraSpec) -> None:
    layout.check_text(base_model, "base_model", required=True)
    layout.check_target_modules(lora.target_modules)
    if not 1 <= lora.rank <= 1024:
        raise InvalidArgument(f"lora.rank must be in 1..1024, got {lora.rank}", param="lora.rank")
    if lora.alpha < 1:
        raise InvalidArgument(f"lora.alpha must be >= 1, got {lora.alpha}", param="lora.alpha")
    if not 0.0 <= lora.dropout < 1.0:
        raise InvalidArgument(f"lora.dropout must be in [0, 1), got {lora.dropout}", param="lora.dropout")
