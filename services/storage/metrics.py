"""Prometheus metrics of the storage service (served on ``CLAAS_METRICS_PORT``)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from services.common.errors import ClaasError

BYTES_RECEIVED = Counter("claas_storage_received_bytes", "Adapter file bytes received by PutVersion.")
BYTES_SENT = Counter("claas_storage_sent_bytes", "Adapter file bytes sent by GetVersion.")
CAS_CONFLICTS = Counter(
    "claas_storage_cas_conflicts", "Compare-and-swap attempts on a head that had moved.", ["operation"]
)
RPC_SECONDS = Histogram(
    "claas_storage_rpc_seconds",
    "Time to serve a storage RPC, by method and status code (streams: until the last message).",
    ["method", "code"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def _code(exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, ClaasError):
        return exc.grpc_code.name
    return "CANCELLED" if not isinstance(exc, Exception) else "INTERNAL"


def timed(fn: Callable) -> Callable:
    """Record the latency of a servicer method, unary or server-streaming."""
    method = fn.__name__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(*args, **kwargs):
            started, error = time.perf_counter(), None
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                RPC_SECONDS.labels(method, _code(error)).observe(time.perf_counter() - started)

        return stream

    @functools.wraps(fn)
    async def unary(*args, **kwargs):
        started, error = time.perf_counter(), None
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            RPC_SECONDS.labels(method, _code(error)).observe(time.perf_counter() - started)

    return unary
