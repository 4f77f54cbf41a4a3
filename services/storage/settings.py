"""Settings of the storage service (``CLAAS_*`` environment variables).

Any number of storage replicas may share one object store: the store's conditional writes settle their races
(DESIGN.md §11). Each replica needs its own ``storage_id``; the default, host name and port, is.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.heartbeat import default_member
from services.common.objectstore import ObjectStoreSettings, store_secrets
from services.common.settings import CommonSettings


class StorageSettings(CommonSettings, ObjectStoreSettings):
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    max_version_mb: int = Field(
        2048, ge=1, description="Largest sum of file sizes of one version, MiB (RESOURCE_EXHAUSTED above)."
    )
    spool_memory_mb: int = Field(
        1,
        ge=0,
        description="An uploaded file larger than this, MiB, waits for its commit on disk instead of in memory.",
    )
    max_parallel_transfers: int = Field(
        4,
        ge=1,
        le=1024,
        description="Uploads streamed at once, and downloads apart; more wait their turn (bounds storage's memory).",
    )
    spool_dir: Path | None = Field(
        None, description="Folder of upload spool files; empty means the system's temporary folder."
    )
    keep_versions: int = Field(
        50,
        ge=0,
        description="Versions an adapter keeps besides its head and tagged ones (the latest); older ones are "
        "deleted after each commit, their lineage summed up in the adapter's record. 0 keeps every version.",
    )
    max_versions_per_tenant: int = Field(
        20000,
        ge=0,
        description="Versions a tenant may keep over all its adapters (RESOURCE_EXHAUSTED above); 0: no bound.",
    )
    max_tenant_mb: int = Field(
        51200, ge=0, description="MiB of version files a tenant may keep (RESOURCE_EXHAUSTED above); 0: no bound."
    )
    list_page_size: int = Field(100, ge=1, le=1000, description="ListAdapters page size when the caller sets none.")
    watch_queue_size: int = Field(
        1000, ge=1, description="Head events a watcher may have pending before it is ended as too slow."
    )

    storage_id: str = Field(
        "",
        description="This replica's name among the storage replicas of the store, unique to it: after a restart "
        "it clears at once the writes it had reserved. Empty: host name and port (random when the port is).",
    )
    replica_lease_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A storage replica whose heartbeat (written every third of this) is older is gone: "
        "another replica clears the version it had reserved.",
    )
    stale_write_s: float = Field(
        600.0,
        gt=0,
        description="A reserved version older than this is cleared by any replica, even one whose writer is "
        "alive; above the longest commit of the largest version.",
    )
    usage_refresh_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="With a tenant quota set: how old a replica's count of what a tenant keeps may be before a "
        "commit counts the tenant's records again, seconds (0: every commit). A tenant may pass its quota by "
        "what the other replicas committed for it within this time.",
    )

    head_poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often a replica looks for head changes made through the other replicas, seconds: "
        "the most a watcher of this one waits for them.",
    )

    def replica(self) -> str:
        """The name the adapter records know this replica by."""
        return self.storage_id or default_member(self.port)

    def secrets(self) -> dict[str, str]:
        return super().secrets() | store_secrets(self)
