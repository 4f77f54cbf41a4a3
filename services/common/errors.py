"""The one error family of CLaaS.

Cores raise these; the server interceptor (``services.common.interceptors``) turns them into a gRPC
status, and the proxy's HTTP layer into an OpenAI-style error envelope. Each class declares its codes
once, here.
"""

from __future__ import annotations

import grpc


class ClaasError(Exception):
    """Base of every error a client may see. ``str(error)`` is the status details."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    #: OpenAI error ``type`` for the HTTP surface.
    kind: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidArgument(ClaasError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    kind = "invalid_request_error"


class NotFound(ClaasError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    kind = "not_found_error"


class AlreadyExists(ClaasError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    kind = "conflict_error"


class Aborted(ClaasError):
    """A lost race, e.g. a compare-and-swap on an adapter head that moved."""

    grpc_code = grpc.StatusCode.ABORTED
    http_status = 409
    kind = "conflict_error"


class FailedPrecondition(ClaasError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400
    kind = "invalid_request_error"


class RequestTooLarge(InvalidArgument):
    """Over a size limit: ``INVALID_ARGUMENT`` on gRPC, HTTP 413. Retrying the same request cannot help."""

    http_status = 413


class ResourceExhausted(ClaasError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    kind = "rate_limit_error"


class Unavailable(ClaasError):
    """A dependency (vLLM, storage, trainer, ...) cannot be reached."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    kind = "service_unavailable"


class DataLoss(ClaasError):
    """A checksum or size did not match."""

    grpc_code = grpc.StatusCode.DATA_LOSS
    http_status = 500
    kind = "internal_error"


class Unauthenticated(ClaasError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    kind = "authentication_error"


class PermissionDenied(ClaasError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    kind = "permission_error"


class Cancelled(ClaasError):
    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499
    kind = "cancelled"


class DeadlineExceeded(ClaasError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    kind = "timeout_error"


_BY_CODE: dict[grpc.StatusCode, type[ClaasError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Aborted,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DataLoss,
        Unauthenticated,
        PermissionDenied,
        Cancelled,
        DeadlineExceeded,
    )
}


#: How gRPC words a message over its size limit ("Received message larger than max (N vs. M)", "Sent ...").
_MESSAGE_SIZE = "message larger than max"


def from_rpc_error(error: grpc.RpcError) -> ClaasError:
    """The ClaasError matching a failed outgoing call, so a dependency's status propagates unchanged."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and details and _MESSAGE_SIZE in details:
        # gRPC's own message-size limit: the request is too large, not the service too busy (429 would invite
        # the same request again).
        return RequestTooLarge(f"the request is too large for the service: {details}")
    cls = _BY_CODE.get(code, ClaasError)
    return cls(details or code.name)
