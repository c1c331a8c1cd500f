"""Python client for smsgw.

:class:`Client` (blocking) and :class:`AsyncClient` (asyncio) wrap the
generated stubs in :mod:`smsgw.v1` with a default deadline, retries of
UNAVAILABLE, idempotent sends (one by one, or up to 1,000 per call as
:class:`OutgoingMessage` items answered by :class:`SendResult`), a self-resuming
status stream and the typed errors of :mod:`smsgw_client.errors`. :func:`tls_credentials` builds the
``credentials`` argument for a TLS (or mutual TLS) server. :class:`WebhookReceiver`
verifies and dedupes the webhooks smsgw sends.
"""

from ._batch import OutgoingMessage, SendResult
from ._webhooks import EVENTS as WEBHOOK_EVENTS
from .aio import AsyncClient
from .client import Client
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SmsgwError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
    from_status,
    map_rpc_errors,
)
from .tls import tls_credentials
from .webhook_receiver import WebhookReceiver, WebhookVerificationError

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "OutgoingMessage",
    "PermissionDenied",
    "ResourceExhausted",
    "SendResult",
    "SmsgwError",
    "Unauthenticated",
    "Unavailable",
    "WEBHOOK_EVENTS",
    "WebhookReceiver",
    "WebhookVerificationError",
    "from_rpc_error",
    "from_status",
    "map_rpc_errors",
    "tls_credentials",
]
