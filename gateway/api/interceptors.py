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

import asyncio
import contextvars
import inspect
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway import logs
from gateway.api.decoding import LOCATE_INLINE_BYTES, Deferred, Undecodable, locate, parse_deferred, safe_deserializer
from gateway.api.offload import run_big
from gateway.auth.records import Caller
from gateway.auth.scopes import PUBLIC, RPC_SCOPES
from gateway.auth.service import AuthService
from gateway.errors import (
    MAX_LISTED_VIOLATIONS,
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
from gateway.metrics import GatewayMetrics, RpcMetrics

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


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The client's `x-request-id` (letters, digits, `._-`, at most 64), else a new one."""
    given = metadata_value(context, "x-request-id")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status an aborted call ended with (context.abort() raised AbortError)."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _code_of(exc: SmsgwError) -> grpc.StatusCode:
    """The status of the error's kind, or of the nearest kind it derives from."""
    return next((_CODES[kind] for kind in type(exc).__mro__ if kind in _CODES), grpc.StatusCode.INTERNAL)


def to_status(exc: SmsgwError) -> grpc.Status:
    return rpc_status.to_status(status_of(exc))


def status_of(exc: SmsgwError) -> status_pb2.Status:
    """The google.rpc.Status of `exc`, with its details: the call's error (via `to_status`),
    or one item's error inside a SendMessages response."""
    code = _code_of(exc)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(exc))
    if isinstance(exc, InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in exc.violations[:MAX_LISTED_VIOLATIONS]
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
        # method -> its wrapped handler: a method's handler never changes once the server
        # started, so each is looked up and wrapped once, not per call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method  # type: ignore[attr-defined]
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(await continuation(details), method)
            if wrapped is not None:  # an unknown method stays unknown (UNIMPLEMENTED), uncached
                self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler | None:
        if handler is None:
            return None
        # Every method's request parses through this: bytes that do not parse reach the
        # handler as an Undecodable (answered below), not grpc's UNKNOWN and traceback.
        decode = safe_deserializer(handler.request_deserializer)
        if method.startswith(_PUBLIC_PREFIXES):
            return self._wrap_infrastructure(handler, decode, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, RpcMetrics(self._metrics, method, "unary")),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, RpcMetrics(self._metrics, method, "server_stream")),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _undecodable(self, bad: Undecodable, context: grpc.aio.ServicerContext[Any, Any], method: str) -> InvalidArgument:
        """The error for a request that did not parse, once the caller passed the gate of its
        RPC. A caller without a valid access token (sign-in RPCs, health, reflection) has it
        counted as a failed authentication of its address; a token's call was counted in its
        bucket by `_login`."""
        if RPC_SCOPES.get(method, _MISSING) in (PUBLIC, _MISSING):
            await self._auth.failed(call_source(context), f"undecodable request to {method.rsplit('/', 1)[-1]}")
        found = locate(bad) if len(bad.data) <= LOCATE_INLINE_BYTES else await asyncio.to_thread(locate, bad)
        return InvalidArgument(*found)

    async def _reject_anonymous(self, bad: Undecodable, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        """Abort an undecodable request to health or reflection (which take no credentials):
        refused while its address is locked out, else counted against the address."""
        try:
            self._auth.check_locked(call_source(context))
            raise await self._undecodable(bad, context, method)
        except SmsgwError as exc:
            self._count_limited(exc)
            await self._fail(context, exc)

    async def _parse_anonymous(self, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Any:
        """A health or reflection request, parsed (a big one in the worker thread, which may be
        busy: RESOURCE_EXHAUSTED) and checked; a failure aborts the call with its status."""
        if isinstance(request, Deferred):
            try:
                request = await run_big(parse_deferred, request)
            except SmsgwError as exc:
                self._count_limited(exc)
                await self._fail(context, exc)
        if isinstance(request, Undecodable):
            await self._reject_anonymous(request, context, method)
        return request

    def _wrap_infrastructure(
        self, handler: grpc.RpcMethodHandler, decode: Callable[[bytes], Any] | None, method: str
    ) -> grpc.RpcMethodHandler:
        """Health and reflection as they are, with requests that do not parse answered
        INVALID_ARGUMENT (any of the four kinds of method). `method` has no scope: it only
        names the call in the audit row of the failure counted against the address."""
        serializer = handler.response_serializer

        async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for request in requests:
                request = await self._parse_anonymous(request, context, method)
                yield request

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                request = await self._parse_anonymous(request, context, method)
                result = unary(request, context)
                return await result if inspect.isawaitable(result) else result

            return grpc.unary_unary_rpc_method_handler(unary_unary, decode, serializer)
        if handler.unary_stream is not None:
            unary_to_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                request = await self._parse_anonymous(request, context, method)
                async for item in unary_to_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, decode, serializer)
        if handler.stream_unary is not None:
            stream_to_unary = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await stream_to_unary(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, decode, serializer)
        stream_to_stream = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for item in stream_to_stream(checked(requests, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, serializer)

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
            if limit in ("token", "source", "owner", "server"):
                self._metrics.limited.labels(limit).inc()

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        if isinstance(exc, SmsgwError):
            st = to_status(exc)
        else:
            log.exception("unexpected error in RPC handler")
            st = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))
        await context.abort(st.code, st.details, st.trailing_metadata)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], method: str, rpc: RpcMetrics) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            logs.request_id.set(_request_id(context))  # this call's task: its log lines carry it
            rpc.started.inc()
            rpc.received.inc()
            code = "OK"
            try:
                await self._login(context, method)
                if isinstance(request, Deferred):
                    request = await run_big(parse_deferred, request)
                if isinstance(request, Undecodable):
                    raise await self._undecodable(request, context, method)
                reply = await behavior(request, context)
                rpc.sent.inc()
                return reply
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away or its deadline passed
                raise
            except Exception as exc:  # noqa: BLE001 — mapped to a status, never leaked
                if isinstance(exc, grpc.aio.AbortError):
                    code = _aborted_code(context)
                    raise
                code = _code_of(exc).name
                self._count_limited(exc)
                await self._fail(context, exc)
            finally:
                rpc.handled(code)
                rpc.seconds.observe(time.perf_counter() - started)

        return unary

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str, rpc: RpcMetrics
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = time.perf_counter()
            logs.request_id.set(_request_id(context))
            rpc.started.inc()
            rpc.received.inc()
            code = "OK"
            if rpc.streams is not None:
                rpc.streams.inc()
            try:
                await self._login(context, method)
                if isinstance(request, Deferred):
                    request = await run_big(parse_deferred, request)
                if isinstance(request, Undecodable):
                    raise await self._undecodable(request, context, method)
                sent = rpc.sent
                async for item in behavior(request, context):
                    sent.inc()
                    yield item
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away (the usual end of a watch stream)
                raise
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, grpc.aio.AbortError):
                    code = _aborted_code(context)
                    raise
                code = _code_of(exc).name
                self._count_limited(exc)
                await self._fail(context, exc)
            finally:
                if rpc.streams is not None:
                    rpc.streams.dec()
                rpc.handled(code)
                rpc.seconds.observe(time.perf_counter() - started)

        return stream
