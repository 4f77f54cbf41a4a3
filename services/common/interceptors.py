"""The server interceptor every service uses: request ids, auth, access logs, errors -> status codes.

Everything happens inside the wrapped handler so that context variables (request id, caller) are bound
in the task that runs the RPC, for streaming RPCs too.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from prometheus_client import Histogram

from services.common.auth import AUTH_METADATA_KEY, Authenticator, bearer_from_header, bind_principal
from services.common.errors import ClaasError
from services.common.logs import REQUEST_ID_KEY

log = structlog.get_logger("claas.rpc")

#: Methods that never need credentials (probes and tooling).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

RPC_SECONDS = Histogram(
    "claas_rpc_seconds",
    "Time to serve an RPC, by service, method and status code (streams: until the last message).",
    ["service", "method", "code"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        public = method.startswith(PUBLIC_PREFIXES)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, public, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, public, handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, public, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, public, handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _enter(self, method: str, public: bool, context: grpc.aio.ServicerContext) -> str:
        metadata = _metadata(context)
        request_id = metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
        if not public:
            bind_principal(self._auth.authenticate(bearer_from_header(metadata.get(AUTH_METADATA_KEY))))
        return request_id

    def _wrap_unary(self, method: str, public: bool, behavior: Callable) -> Callable:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                self._enter(method, public, context)
                response = await behavior(request, context)
            except BaseException as exc:
                await _fail(method, exc, context, started)
                raise
            _access(method, started, public)
            return response

        return wrapper

    def _wrap_stream(self, method: str, public: bool, behavior: Callable) -> Callable:
        if not inspect.isasyncgenfunction(behavior):
            # A streaming handler that sends with ``await context.write`` (the health service's Watch)
            # is a plain coroutine: wrapped like a unary one.
            return self._wrap_unary(method, public, behavior)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                self._enter(method, public, context)
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                await _fail(method, exc, context, started)
                raise
            _access(method, started, public)

        return wrapper


def _observe(method: str, code: str, started: float) -> float:
    """Record the call in the latency histogram; the elapsed milliseconds, for the access log."""
    elapsed = time.perf_counter() - started
    service, _, name = method.lstrip("/").rpartition("/")
    RPC_SECONDS.labels(service, name, code).observe(elapsed)
    return round(elapsed * 1000, 2)


def _access(method: str, started: float, public: bool) -> None:
    ms = _observe(method, "OK", started)
    if not public:
        log.info("rpc", code="OK", ms=ms)


async def _fail(method: str, exc: BaseException, context: grpc.aio.ServicerContext, started: float) -> None:
    """Log the failure and abort with its status; re-raises nothing itself (the caller re-raises)."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        log.info("rpc", code=code_name, ms=_observe(method, code_name, started))
        return
    if isinstance(exc, ClaasError):
        log.info("rpc", code=exc.grpc_code.name, ms=_observe(method, exc.grpc_code.name, started), error=exc.message)
        await context.abort(exc.grpc_code, exc.message)
    if isinstance(exc, Exception):
        log.exception("rpc", code="INTERNAL", ms=_observe(method, "INTERNAL", started))
        # The exception's text (paths, keys, another tenant's data) stays in the log; the caller gets the
        # request id that finds it there.
        request_id = structlog.contextvars.get_contextvars().get("request_id", "")
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in {method} (request {request_id}); the service's log has it"
        )
    log.info("rpc", code="CANCELLED", ms=_observe(method, "CANCELLED", started))
