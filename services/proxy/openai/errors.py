"""Errors on the HTTP surface: every failure leaves as OpenAI's envelope, built by ``error_body``.

Also the ASGI middleware in front of every route: request ids, the body size limit, access logs and
request metrics.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import ClaasError, InvalidArgument, NotFound, RequestTooLarge, Unauthenticated
from services.common.logs import REQUEST_ID_KEY

log = structlog.get_logger("claas.proxy.http")

HTTP_REQUESTS = Counter("claas_proxy_http_requests_total", "HTTP requests by method and status.", ["method", "code"])
HTTP_SECONDS = Histogram("claas_proxy_http_seconds", "HTTP request latency (to the end of the body).", ["method"])

#: Errors raised by the HTTP framework itself (unknown route, wrong method, body over the limit).
_BY_STATUS: dict[int, type[ClaasError]] = {401: Unauthenticated, 404: NotFound, 413: RequestTooLarge}


def error_body(error: ClaasError) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {message, type, param, code}}``."""
    return {
        "error": {
            "message": error.message,
            "type": error.kind,
            "param": error.param,
            "code": error.grpc_code.name.lower(),
        }
    }


def error_response(error: ClaasError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.http_status)


def sse_error(error: ClaasError) -> str:
    """A failure after the stream began: one last event carrying the envelope."""
    return f"data: {json.dumps(error_body(error))}\n\n"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClaasError)
    async def _claas(request: Request, exc: ClaasError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        response = error_response(_BY_STATUS.get(exc.status_code, InvalidArgument)(str(exc.detail)))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http_internal_error", path=request.url.path)
        return error_response(ClaasError(f"internal error: {type(exc).__name__}"))


def _validation_error(exc: RequestValidationError) -> InvalidArgument:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error") or first.get("msg")
        return InvalidArgument(f"malformed JSON body: {reason}")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    where = f"{param}: " if param else "body: "  # no location: the body as a whole is not the route's object
    return InvalidArgument(f"invalid request: {where}{first.get('msg')}", param=param)


class RequestGate:
    """Pure ASGI middleware (streams pass through untouched): binds a request id, refuses bodies over
    ``max_body_bytes`` (or the ``larger`` limit of the path's prefix) with 413, and logs and counts every
    request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, larger: Mapping[str, int] | None = None) -> None:
        self._app = app
        self._max = max_body_bytes
        self._larger = dict(larger or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, path=scope["path"])
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", []).append((REQUEST_ID_KEY.encode(), request_id.encode()))
            await send(message)

        limit = next((n for prefix, n in self._larger.items() if scope["path"].startswith(prefix)), self._max)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(_limit_error(limit))(scope, receive, send_with_id)
        else:
            received = 0

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    # The framework passes HTTPException through its body parsing; anything else becomes 400.
                    raise HTTPException(413, detail=_limit_error(limit).message)
                return message

            await self._app(scope, counted, send_with_id)
        HTTP_REQUESTS.labels(scope["method"], str(status["code"])).inc()
        HTTP_SECONDS.labels(scope["method"]).observe(time.perf_counter() - started)
        log.info(
            "http", method=scope["method"], code=status["code"], ms=round((time.perf_counter() - started) * 1e3, 2)
        )


def _limit_error(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"request body over the limit of {limit} bytes")
