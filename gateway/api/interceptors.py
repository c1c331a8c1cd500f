"""One server interceptor for what every RPC shares: authentication, the error mapping, timing.

Servicers never call `abort`: they raise from the `gateway.errors` tree and this module
maps it, once, to a status with google.rpc details (BadRequest, RetryInfo).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SmsgwError,
    Unauthenticated,
    Unavailable,
)
from gateway.metrics import GatewayMetrics

__all__ = ["ApiInterceptor", "current_owner", "to_status"]

log = logging.getLogger(__name__)

_owner: contextvars.ContextVar[str] = contextvars.ContextVar("smsgw_owner")

# Services that answer without credentials (standard infrastructure).
_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

_CODES: dict[type[SmsgwError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def current_owner() -> str:
    """The authenticated owner of the RPC being served."""
    return _owner.get()


def to_status(exc: SmsgwError) -> grpc.Status:
    code = _CODES.get(type(exc), grpc.StatusCode.INTERNAL)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(exc))
    if isinstance(exc, InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations
            ]
        )
        status.details.add().Pack(detail)
    elif isinstance(exc, ResourceExhausted):
        delay = Duration()
        delay.FromNanoseconds(int(exc.retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.add().Pack(
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=str(exc))]
            )
        )
    return rpc_status.to_status(status)


Authenticate = Callable[[str], Awaitable[str | None]]


class ApiInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticate, metrics: GatewayMetrics) -> None:
        self._authenticate = authenticate
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        rpc = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, rpc),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _login(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        owner = await self._authenticate(token.strip())
        if owner is None:
            raise Unauthenticated("invalid token")
        _owner.set(owner)

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        if isinstance(exc, SmsgwError):
            st = to_status(exc)
        else:
            log.exception("unexpected error in RPC handler")
            st = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))
        await context.abort(st.code, st.details, st.trailing_metadata)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], rpc: str) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                await self._login(context)
                return await behavior(request, context)
            except Exception as exc:  # noqa: BLE001 — mapped to a status, never leaked
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code = _CODES.get(type(exc), grpc.StatusCode.INTERNAL).name
                await self._fail(context, exc)
            finally:
                self._metrics.rpc_seconds.labels(rpc, code).observe(time.perf_counter() - started)

        return unary

    def _wrap_stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                await self._login(context)
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await self._fail(context, exc)

        return stream
