"""Outgoing gRPC channels: credentials and request ids on every call, default deadlines, and retries
for ``UNAVAILABLE`` on idempotent methods only (from the channel's service config)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
import structlog

from services.common.auth import AUTH_METADATA_KEY
from services.common.logs import REQUEST_ID_KEY

#: Deadline of a unary call that does not set its own.
DEFAULT_TIMEOUT_S = 30.0


def service_config(idempotent: Sequence[tuple[str, str]]) -> str:
    """A service config retrying ``UNAVAILABLE`` for the given (service, method) pairs."""
    if not idempotent:
        return json.dumps({})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": s, "method": m} for s, m in idempotent],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class _CallMetadata:
    """Adds the bearer token and the current request id; gives unary calls a default deadline."""

    def __init__(self, token: str, default_timeout_s: float) -> None:
        self._token = token
        self._timeout = default_timeout_s

    def _details(self, details: grpc.aio.ClientCallDetails, unary: bool) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if self._token:
            metadata.add(AUTH_METADATA_KEY, f"Bearer {self._token}")
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id and REQUEST_ID_KEY not in metadata:
            metadata.add(REQUEST_ID_KEY, request_id)
        timeout = details.timeout if details.timeout is not None or not unary else self._timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first call kind it implements only (an if/elif chain), so each
# kind needs an object of its own.
class _UnaryUnary(_CallMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details, True), request)


class _UnaryStream(_CallMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details, False), request)


class _StreamUnary(_CallMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details, False), request_iterator)


class _StreamStream(_CallMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details, False), request_iterator)


def open_channel(
    target: str,
    *,
    token: str = "",
    idempotent: Sequence[tuple[str, str]] = (),
    max_message_mb: int = 16,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> grpc.aio.Channel:
    """A channel to reuse for the life of the process (create once, not per call)."""
    limit = max_message_mb * 1024 * 1024
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", service_config(idempotent)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
        interceptors=[
            kind(token, default_timeout_s) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
        ],
    )
