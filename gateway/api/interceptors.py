"""One server interceptor for what every RPC shares: authentication, scopes, rate limits, the
error mapping, timing.

Per call, in order: an RPC missing from `RPC_SCOPES` is refused (fail closed); public RPCs
(IssueToken, RefreshToken, CreateAccount) are refused to an address locked out by failed
authentications, rate-limited per address, and check their own credential; every other RPC
needs a valid access token carrying its scope (an invalid one from a locked-out address gets
RESOURCE_EXHAUSTED), and is rate-limited per token.

Servicers never call `abort`: they raise from the `gateway.errors` tree and this module
maps it, once, to a status with google.rpc details (BadRequest, RetryInfo, QuotaFailure).
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.auth.records import Caller
from gateway.auth.scopes import PUBLIC, RPC_SCOPES
from gateway.auth.service import AuthService
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

__all__ = ["ApiInterceptor", "current_owner", "current_caller", "call_source", "metadata_value", "to_status", "status_of"]

log = logging.getLogger(__name__)

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("smsgw_caller")

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


def current_caller() -> Caller:
    """Who makes the RPC being served (set by the interceptor before the servicer runs)."""
    return _caller.get()


def current_owner() -> str:
    """The authenticated owner of the RPC being served."""
    return _caller.get().owner_id


def call_source(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The peer's address without its port ("ipv4:127.0.0.1:5000" -> "127.0.0.1"): a client
    reconnecting from a new port is still the same source."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer or "unknown"


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


def to_status(exc: SmsgwError) -> grpc.Status:
    return rpc_status.to_status(status_of(exc))


def status_of(exc: SmsgwError) -> status_pb2.Status:
    """The google.rpc.Status of `exc`, with its details: the call's error (via `to_status`),
    or one item's error inside a SendMessages response."""
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
        # Whole microseconds, rounded up: a positive delay must not read as 0 (timedelta has µs).
        delay.FromMicroseconds(math.ceil(exc.retry_after * 1e6))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.add().Pack(
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=str(exc))]
            )
        )
    return status


_MISSING = object()


class ApiInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: AuthService, metrics: GatewayMetrics) -> None:
        self._auth = auth
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
                self._wrap_unary(handler.unary_unary, method, rpc),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _login(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        source = call_source(context)
        scope = RPC_SCOPES.get(method, _MISSING)
        if scope is _MISSING:
            raise PermissionDenied(f"{method} has no scope: refused")
        if scope is PUBLIC:
            self._auth.check_locked(source)
            self._auth.limit_source(source)
            _caller.set(Caller("", "", frozenset(), source))
            return
        scheme, _, token = metadata_value(context, "authorization").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing 'authorization: Bearer <access token>' metadata")
        try:
            caller = self._auth.authenticate(token.strip(), source)
        except Unauthenticated as exc:
            # A locked-out address gets no more verdicts on tokens (nor audit rows); a valid
            # token is never locked out, so guessers behind a shared address (a proxy, NAT)
            # cannot shut out the services that hold real tokens.
            self._auth.check_locked(source)
            await self._auth.failed(source, f"bearer: {exc}")
            raise
        if scope not in caller.scopes:
            raise PermissionDenied(f"the token lacks scope {scope}")
        self._auth.limit_token(caller)
        _caller.set(caller)

    def _count_limited(self, exc: BaseException) -> None:
        if isinstance(exc, ResourceExhausted) and exc.subject:
            limit = exc.subject.partition(":")[0]
            if limit in ("token", "source", "owner"):
                self._metrics.limited.labels(limit).inc()

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        if isinstance(exc, SmsgwError):
            st = to_status(exc)
        else:
            log.exception("unexpected error in RPC handler")
            st = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))
        await context.abort(st.code, st.details, st.trailing_metadata)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], method: str, rpc: str) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                await self._login(context, method)
                return await behavior(request, context)
            except Exception as exc:  # noqa: BLE001 — mapped to a status, never leaked
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code = _CODES.get(type(exc), grpc.StatusCode.INTERNAL).name
                self._count_limited(exc)
                await self._fail(context, exc)
            finally:
                self._metrics.rpc_seconds.labels(rpc, code).observe(time.perf_counter() - started)

        return unary

    def _wrap_stream(self, behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                await self._login(context, method)
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                self._count_limited(exc)
                await self._fail(context, exc)

        return stream
