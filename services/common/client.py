"""Outgoing gRPC channels: credentials and request ids on every call, default deadlines, and retries
for ``UNAVAILABLE`` on idempotent methods only (from the channel's service config)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar, Self

import grpc
import structlog

from services.common.auth import AUTH_METADATA_KEY
from services.common.errors import InvalidArgument, from_rpc_error
from services.common.logs import REQUEST_ID_KEY
from services.common.peers import parse_static

#: Deadline of a unary call that does not set its own.
DEFAULT_TIMEOUT_S = 30.0


def grpc_target(spec: str) -> str:
    """The gRPC target of an address setting: ``host:port`` as it is, a replica list ``ip:port,ip:port`` as
    gRPC's static ``ipv4:`` target (calls then spread over the replicas that are up), or a target gRPC
    resolves itself (``dns:///name:port``, e.g. a headless Service, whose records list the replicas).

    Raises ``InvalidArgument`` on a list that is malformed or names hosts: gRPC has no static list of names,
    and a name that stands for several replicas is one DNS name with several records."""
    if "," not in spec:
        return spec.strip()
    members = parse_static(spec)
    for member in members:
        host = member.rpartition(":")[0]
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidArgument(
                f"invalid replica list {spec!r}: {host!r} is not an IPv4 address (a list takes ip:port entries; "
                "for names give one DNS name whose records list the replicas, dns:///name:port)"
            ) from None
    return "ipv4:" + ",".join(members)


#: Targets that name a set of replicas: their channels balance round robin over them.
REPLICA_SET_SCHEMES = ("ipv4:", "ipv6:", "dns:")


def service_config(idempotent: Sequence[tuple[str, str]], *, balanced: bool = False) -> str:
    """A service config that retries ``UNAVAILABLE`` for the given (service, method) pairs and, when
    ``balanced``, spreads calls over every address of the target (round robin: a replica that is down is
    skipped). A single ``host:port`` keeps gRPC's default (pick first): with round robin, calls to one
    server that was just restarted failed ("connections to all backends failing") where pick first
    reconnected."""
    balancing: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]} if balanced else {}
    if not idempotent:
        return json.dumps(balancing)
    return json.dumps(
        balancing
        | {
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
    """A channel to ``target`` (see ``grpc_target``) to reuse for the life of the process (create once, not
    per call)."""
    limit = max_message_mb * 1024 * 1024
    resolved = grpc_target(target)
    return grpc.aio.insecure_channel(
        resolved,
        options=[
            ("grpc.service_config", service_config(idempotent, balanced=resolved.startswith(REPLICA_SET_SCHEMES))),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # The receive window stays at its fixed size instead of growing with the measured bandwidth:
            # a stream the process does not read then holds at most that window, not a whole file.
            ("grpc.http2.bdp_probe", 0),
        ],
        interceptors=[
            kind(token, default_timeout_s) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
        ],
    )


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """A failed outgoing call raises the ``services.common.errors`` class of its status, with its details, so a
    dependency's status reaches our own callers unchanged. The one place that maps a call's failure."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


class ServiceClient:
    """Base of every service's ``client.py``: one channel, created once and reused; every call's failure is one
    of our errors. A subclass names its service and the methods safe to retry on ``UNAVAILABLE``."""

    SERVICE: ClassVar[str]
    IDEMPOTENT: ClassVar[tuple[str, ...]] = ()

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    @classmethod
    def connect(cls, target: str, *, token: str = "", max_message_mb: int = 16, **kwargs: Any) -> Self:
        """A client over a new channel to ``target`` ("host:port") carrying ``token``."""
        idempotent = [(cls.SERVICE, method) for method in cls.IDEMPOTENT]
        return cls(open_channel(target, token=token, idempotent=idempotent, max_message_mb=max_message_mb), **kwargs)

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method: Callable[..., Any], request: Any, *, timeout: float | None = None) -> Any:
        with rpc_errors():
            return await method(request, timeout=timeout)

    async def _stream(self, method: Callable[..., Any], request: Any, *, timeout: float | None = None) -> AsyncIterator:
        """The messages of a server stream; the call is cancelled when the caller stops reading."""
        call = method(request, timeout=timeout)
        try:
            with rpc_errors():
                async for message in call:
                    yield message
        finally:
            call.cancel()
