"""Typed errors of the smsgw client.

Every ``grpc.RpcError`` a client method meets is re-raised, at one boundary
(:func:`map_rpc_errors`), as one of these, named by the gRPC outcome so the
caller can act on it without comparing status codes::

    SmsgwError                  any other code (UNKNOWN, INTERNAL, CANCELLED, ...)
    ├── InvalidArgument         .field_violations from google.rpc.BadRequest
    ├── NotFound                unknown id, or another owner's
    ├── AlreadyExists           idempotency key reused with other content
    ├── PermissionDenied
    ├── Unauthenticated         missing, expired or revoked token
    ├── FailedPrecondition      e.g. cancel after a phone accepted the message
    ├── ResourceExhausted       .retry_delay from google.rpc.RetryInfo
    ├── Unavailable             gRPC already retried; safe to retry later
    └── DeadlineExceeded        the call's deadline passed

The original ``grpc.RpcError`` stays reachable as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf import message as _message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SmsgwError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "from_status",
    "map_rpc_errors",
]

_DETAILS_KEY: Final = "grpc-status-details-bin"


class SmsgwError(Exception):
    """A call to smsgw failed; base of every error the client raises for an RPC.

    Args:
        details: The status message the server (or gRPC) gave.
        code: The status code; subclasses fix it, the base class needs it.
        status: The rich ``google.rpc.Status`` from the trailers, if any.

    Attributes:
        code: The gRPC status code.
        details: The status message.
        status: The rich status (with its packed details), or None.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(details)
        if code is not None:
            self.code = code
        self.details = details
        self.status = status

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name

    def _unpack(self, kind: type[_message.Message]) -> list[Any]:
        """Return the details of type ``kind`` packed in the rich status."""
        found: list[Any] = []
        if self.status is None:
            return found
        for detail in self.status.details:
            value = kind()
            if detail.Unpack(value):  # False when the packed type is another
                found.append(value)
        return found


class InvalidArgument(SmsgwError):
    """The request was refused as malformed; fix it rather than retry it.

    Attributes:
        field_violations: ``(field path, reason)`` pairs from the
            ``google.rpc.BadRequest`` detail, e.g. ``("phone_numbers[0]", ...)``.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
        field_violations: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(details, code=code, status=status)
        if field_violations is not None:
            self.field_violations = list(field_violations)
        else:
            self.field_violations = [
                (violation.field, violation.description)
                for bad_request in self._unpack(error_details_pb2.BadRequest)
                for violation in bad_request.field_violations
            ]


class NotFound(SmsgwError):
    """No such message or device for this caller (other owners' ids included)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SmsgwError):
    """The idempotency key was already used for a message with other content."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(SmsgwError):
    """The token is valid but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(SmsgwError):
    """The token is missing, malformed, expired or revoked."""

    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(SmsgwError):
    """The resource is not in a state that allows this (e.g. cancel after ACCEPTED)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(SmsgwError):
    """A rate limit or quota refused the call; wait ``retry_delay`` before retrying.

    Attributes:
        retry_delay: Seconds the server asks the caller to wait
            (``google.rpc.RetryInfo``), or None when it gave none.
        quota_violations: ``(subject, description)`` pairs from the
            ``google.rpc.QuotaFailure`` detail.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(details, code=code, status=status)
        if retry_delay is None:
            for info in self._unpack(error_details_pb2.RetryInfo):
                retry_delay = info.retry_delay.ToTimedelta().total_seconds()
        self.retry_delay = retry_delay
        self.quota_violations = [
            (violation.subject, violation.description)
            for failure in self._unpack(error_details_pb2.QuotaFailure)
            for violation in failure.violations
        ]


class Unavailable(SmsgwError):
    """The server could not be reached, even after gRPC's own retries."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(SmsgwError):
    """The call's deadline passed; the server may or may not have done the work."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


# The one mapping table (httpx's map_exceptions style). Codes not listed map to
# the base class, which still carries the code.
_ERRORS: Final[Mapping[grpc.StatusCode, type[SmsgwError]]] = {
    error.code: error
    for error in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}

def _status_from_trailers(metadata: Iterable[Any] | None) -> status_pb2.Status | None:
    """Parse the rich status that grpc.aio leaves in the trailing metadata."""
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except _message.DecodeError:
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> SmsgwError:
    """Return the typed error for ``error`` (sync ``grpc.Call`` or ``grpc.aio.AioRpcError``).

    Use it to wrap calls made on the raw generated stubs; the client methods
    already do. It does not set ``__cause__``: ``raise from_rpc_error(e) from e``.
    """
    status: status_pb2.Status | None = None
    if isinstance(error, grpc.aio.AioRpcError):
        code, details = error.code(), error.details() or ""
        status = _status_from_trailers(error.trailing_metadata())
    elif isinstance(error, grpc.Call):
        code, details = error.code(), error.details() or ""
        try:
            status = rpc_status.from_call(error)
        except ValueError:  # code or message disagree with the trailer: ignore it
            status = None
    else:  # an RpcError that is no call at all (should not happen)
        code, details = grpc.StatusCode.UNKNOWN, str(error)
    if status is not None and status.code != code.value[0]:
        status = None
    cls = _ERRORS.get(code, SmsgwError)
    return cls(details, code=code, status=status)


def from_status(status: status_pb2.Status) -> SmsgwError:
    """Return the typed error for a ``google.rpc.Status`` that is not a call's own, such
    as one item's error in a ``SendMessages`` response (its details parsed as for a call)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    cls = _ERRORS.get(code, SmsgwError)
    return cls(status.message, code=code, status=status)


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` in the block as its typed :class:`SmsgwError`.

    A plain ``with`` works around ``await`` and inside async generators too, so
    the sync and the asyncio client share this one boundary.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
