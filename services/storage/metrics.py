"""Prometheus metrics of the storage service (served on ``CLAAS_METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import Counter

BYTES_RECEIVED = Counter("claas_storage_received_bytes", "Adapter file bytes received by PutVersion.")
BYTES_SENT = Counter("claas_storage_sent_bytes", "Adapter file bytes sent by GetVersion.")
CAS_CONFLICTS = Counter(
    "claas_storage_cas_conflicts", "Compare-and-swap attempts on a head that had moved.", ["operation"]
)
