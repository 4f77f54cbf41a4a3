"""Wiring of the storage role: object store, core, servicer, gRPC server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from claas.v1 import storage_pb2, storage_pb2_grpc

from services.common.auth import InternalTokenAuth
from services.common.objectstore import ObjectStore, open_object_store
from services.common.server import ServiceServer
from services.storage.core import AdapterStore, Retention
from services.storage.servicer import AdapterStoreServicer
from services.storage.settings import StorageSettings
from services.storage.upload import SpoolLimits

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["AdapterStoreService"].full_name
MIB = 1 << 20


class StorageServer(ServiceServer):
    """Ends the open head watches before stopping, so shutdown need not wait out the grace period."""

    def __init__(self, settings: StorageSettings, core: AdapterStore) -> None:
        servicer = AdapterStoreServicer(core)
        super().__init__(
            settings,
            service_names=[SERVICE_NAME],
            register=lambda server: storage_pb2_grpc.add_AdapterStoreServiceServicer_to_server(servicer, server),
            authenticator=InternalTokenAuth(settings.internal_token),
        )
        self.core = core

    async def stop(self) -> None:
        self.core.close()
        await super().stop()


def build_core(settings: StorageSettings, store: ObjectStore | None = None) -> AdapterStore:
    limits = SpoolLimits(
        max_version_bytes=settings.max_version_mb * MIB,
        memory_bytes=settings.spool_memory_mb * MIB,
        folder=settings.spool_dir,
    )
    return AdapterStore(
        store if store is not None else open_object_store(settings),
        limits=limits,
        page_size=settings.list_page_size,
        watch_queue_size=settings.watch_queue_size,
        max_parallel_transfers=settings.max_parallel_transfers,
        retention=Retention(
            keep_latest=settings.keep_versions,
            max_tenant_versions=settings.max_versions_per_tenant,
            max_tenant_bytes=settings.max_tenant_mb * MIB,
        ),
        replica=settings.replica(),
        lease_s=settings.replica_lease_s,
        stale_write_s=settings.stale_write_s,
        head_poll_s=settings.head_poll_s,
        usage_refresh_s=settings.usage_refresh_s,
    )


def build_server(
    settings: StorageSettings, *, store: ObjectStore | None = None
) -> tuple[StorageServer, Callable[[], Awaitable[None]] | None, Callable[[], Awaitable[None]] | None]:
    """The server, its ready hook (crash recovery of the store, then the adapter index) and no stop hook.
    ``store`` replaces the one the settings name (tests wrap it)."""
    core = build_core(settings, store)
    return StorageServer(settings, core), core.recover, None
