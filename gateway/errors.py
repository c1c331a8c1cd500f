"""The core's one error tree, named by gRPC outcome (mapped once, in gateway.api.interceptors).

    SmsgwError
    ├── InvalidArgument(field, reason)   -> INVALID_ARGUMENT + google.rpc.BadRequest
    ├── NotFound                         -> NOT_FOUND (also for other owners' resources)
    ├── AlreadyExists                    -> ALREADY_EXISTS
    ├── FailedPrecondition               -> FAILED_PRECONDITION
    ├── PermissionDenied                 -> PERMISSION_DENIED
    ├── Unauthenticated                  -> UNAUTHENTICATED
    ├── ResourceExhausted(retry_after)   -> RESOURCE_EXHAUSTED + RetryInfo + QuotaFailure
    └── Unavailable                      -> UNAVAILABLE (retry; e.g. a stream ended by shutdown)
"""

from __future__ import annotations

__all__ = [
    "MAX_LISTED_VIOLATIONS",
    "SmsgwError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "Unavailable",
]


class SmsgwError(Exception):
    """Base of every error the core raises on purpose; the message is safe to show a client."""


MAX_LISTED_VIOLATIONS = 10
"""An error's message (and its google.rpc.BadRequest) lists the first this many violations and
says how many more there were: 1,000 items × 100 bad numbers would otherwise answer 15 MB."""


class InvalidArgument(SmsgwError):
    """A request field is invalid; `violations` names each field path and why (all of them;
    the message, shown to clients, only the first MAX_LISTED_VIOLATIONS)."""

    def __init__(self, field: str, reason: str, *more: tuple[str, str]) -> None:
        self.violations: list[tuple[str, str]] = [(field, reason), *more]
        listed = "; ".join(f"{f}: {r}" for f, r in self.violations[:MAX_LISTED_VIOLATIONS])
        unlisted = len(self.violations) - MAX_LISTED_VIOLATIONS
        super().__init__(listed + (f"; and {unlisted} more not listed" if unlisted > 0 else ""))

    @classmethod
    def raise_if_any(cls, violations: list[tuple[str, str]]) -> None:
        """Raise one error listing every (field, reason) collected, if there are any."""
        if violations:
            raise cls(*violations[0], *violations[1:])


class NotFound(SmsgwError):
    """No such resource for this caller."""


class AlreadyExists(SmsgwError):
    """The idempotency key names a different message."""


class FailedPrecondition(SmsgwError):
    """The resource is not in a state that allows the operation."""


class PermissionDenied(SmsgwError):
    """The caller is known but may not do this."""


class Unauthenticated(SmsgwError):
    """Missing or bad credentials."""


class ResourceExhausted(SmsgwError):
    """A limit was hit; retry after `retry_after` seconds.

    `subject` names what is limited (google.rpc.QuotaFailure: "token:<jti>", "owner:<id>",
    "source:<address>") and the message says which limit.
    """

    def __init__(self, message: str, retry_after: float, subject: str = "") -> None:
        self.retry_after = retry_after
        self.subject = subject
        super().__init__(message)


class Unavailable(SmsgwError):
    """Try again (elsewhere or later): the server is shutting down."""
