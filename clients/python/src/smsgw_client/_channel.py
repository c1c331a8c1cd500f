"""What the sync and the asyncio client share: channel settings, metadata, requests.

`Client` (grpc) and `AsyncClient` (grpc.aio) differ only in how they wait. Every
decision about the wire lives here once, so the two cannot drift apart:

* the channel options, including the service config that makes gRPC retry
  ``UNAVAILABLE`` of unary calls by itself (RELIABILITY 22; streams resume through
  ``WatchCursor`` only) and a keepalive the server accepts (RELIABILITY 23);
* the ``authorization`` call metadata;
* building the request messages (validation of local arguments included);
* the resume cursor and reconnect backoff of ``WatchMessages`` and ``WatchInbound``.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, cast

import grpc
from google.protobuf import timestamp_pb2

from smsgw.v1 import common_pb2, devices_pb2, inbound_pb2, messages_pb2

from . import envelope

_log = logging.getLogger("smsgw_client")

__all__ = [
    "DEFAULT_MAX_RECONNECTS",
    "DEFAULT_OPTIONS",
    "DEFAULT_TIMEOUT",
    "KEEPALIVE_OPTIONS",
    "MAX_RECEIVE_MESSAGE_LENGTH",
    "RETRIED_METHODS",
    "RETRIED_SERVICES",
    "SERVICE_CONFIG",
    "WATCH_START_KEY",
    "WatchCursor",
    "basic_metadata",
    "call_metadata",
    "channel_options",
    "export_messages_request",
    "list_inbound_request",
    "list_messages_request",
    "new_idempotency_key",
    "pairing_code_request",
    "reconnect_delay",
    "send_message_request",
]

DEFAULT_TIMEOUT: Final = 10.0
"""Default deadline of a unary call, in seconds (RELIABILITY 22)."""

DEFAULT_MAX_RECONNECTS: Final = 8
"""Reconnects in a row ``watch_messages`` tries before it gives up."""

# AuthService is not retried: a RefreshToken retried after the server spent the token would
# look like a reuse outside the grace window and revoke the sign-in.
RETRIED_SERVICES: Final = (
    "smsgw.v1.MessageService",
    "smsgw.v1.DeviceService",
    "smsgw.v1.AuditService",
    "smsgw.v1.InboundService",
)

# Only the unary methods, named one by one: gRPC would also re-open a server stream that has
# not answered yet, so a WatchMessages/WatchInbound cut by a server restart came back "from
# now" on the new server behind the client's back, and the resume from the last event id
# (WatchCursor) never ran. ExportMessages is left to the caller for the same reason.
RETRIED_METHODS: Final[Mapping[str, tuple[str, ...]]] = {
    "smsgw.v1.MessageService": (
        "SendMessage", "SendMessages", "GetMessage", "ListMessages", "CancelMessage", "RescheduleMessage",
    ),
    "smsgw.v1.DeviceService": (
        "ListDevices", "CreatePairingCode", "DeleteDevice", "GetDeviceSettings", "UpdateDeviceSettings",
    ),
    "smsgw.v1.AuditService": ("ListAuditEvents",),
    "smsgw.v1.InboundService": ("ListInbound",),
}

WATCH_START_KEY: Final = "smsgw-watch-after"
"""Initial metadata of a watch stream: the event id it starts after (the server's log head
for a watch "from now"), so a reconnect before any event resumes from there."""

MAX_RECEIVE_MESSAGE_LENGTH: Final = 16 * 1024 * 1024
"""Set explicitly (RELIABILITY 25): a page of 500 messages can exceed gRPC's 4 MiB."""

# Only UNAVAILABLE is retried: it means the request never reached a handler or
# the server is going away, so a retry cannot do the work twice (and SendMessage
# carries an idempotency key anyway). Other codes are answers, not accidents.
# retryThrottling stops a client from multiplying load on a struggling server:
# retries pause once failures outweigh successes ten to one.
SERVICE_CONFIG: Final[Mapping[str, Any]] = {
    "methodConfig": [
        {
            "name": [
                {"service": service, "method": method}
                for service in RETRIED_SERVICES
                for method in RETRIED_METHODS[service]
            ],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}

# The server accepts a ping at most every 10 s without data and pings every
# 30 s itself, so idle connections are already watched from its side. A client
# pinging more often than allowed gets GOAWAY too_many_pings; 60 s, and no pings
# on a connection without calls, stays well inside the limit.
KEEPALIVE_OPTIONS: Final[Sequence[tuple[str, Any]]] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
)

DEFAULT_OPTIONS: Final[Sequence[tuple[str, Any]]] = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG, separators=(",", ":"))),
    *KEEPALIVE_OPTIONS,
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
)

_RECONNECT_INITIAL: Final = 0.2
_RECONNECT_MAX: Final = 5.0
_RECONNECT_JITTER: Final = 0.2


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Return the channel options: the defaults, overridden key by key by ``extra``.

    Args:
        extra: Caller options; a key given here replaces the default of that key
            instead of being passed twice (gRPC would keep an unspecified one).
    """
    merged = dict(DEFAULT_OPTIONS)
    merged.update(extra)
    return list(merged.items())


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Return the metadata sent on every call.

    Call metadata rather than call credentials, because gRPC refuses call
    credentials on insecure channels, which loopback deployments use.
    """
    if token is None:
        return ()
    return (("authorization", f"Bearer {token}"),)


def basic_metadata(username: str, password: str) -> tuple[tuple[str, str], ...]:
    """Return the metadata of ``IssueToken``: ``authorization: Basic base64(username:password)``."""
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return (("authorization", f"Basic {raw}"),)


def export_messages_request(
    *, state: int | str, device_id: str, created_after: datetime | None, created_before: datetime | None
) -> messages_pb2.ExportMessagesRequest:
    """Build an ``ExportMessagesRequest`` with the filter rules of :func:`list_messages_request`."""
    listed = list_messages_request(
        state=state, device_id=device_id, created_after=created_after, created_before=created_before,
        page_size=0, page_token="",
    )
    request = messages_pb2.ExportMessagesRequest(state=listed.state, device_id=listed.device_id)
    if listed.HasField("created_after"):
        request.created_after.CopyFrom(listed.created_after)
    if listed.HasField("created_before"):
        request.created_before.CopyFrom(listed.created_before)
    return request


def new_idempotency_key() -> str:
    """Return a fresh idempotency key (uuid4, 32 hex characters)."""
    return uuid.uuid4().hex


def _timestamp(value: datetime, name: str) -> timestamp_pb2.Timestamp:
    # A naive datetime would be read as UTC by protobuf: a caller thinking in
    # local time would silently shift the expiry or the filter window.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def send_message_request(
    phone_numbers: Sequence[str],
    text: str | None,
    *,
    data: bytes | None,
    port: int,
    device_id: str,
    sim_number: int,
    priority: int,
    ttl: int | None,
    valid_until: datetime | None,
    with_delivery_report: bool | None,
    is_encrypted: bool,
    idempotency_key: str | None,
    schedule_at: datetime | None = None,
    passphrase: str | None = None,
) -> messages_pb2.SendMessageRequest:
    """Build a ``SendMessageRequest``, filling in the idempotency key if missing.

    The caller builds the request once per ``send_message`` call, so every
    retry of that call (gRPC's own or a reconnect) carries the same key and the
    server stores the message at most once. With ``passphrase`` the text or data
    is sealed into an smsgw1 envelope here, before anything leaves the process
    (``envelope.seal_for_key``: the same key and content give the same envelope,
    so a retry of the call with the caller's own key is still a replay).

    Raises:
        ValueError: Not exactly one of ``text``/``data``, both ``ttl`` and
            ``valid_until``, or a naive ``valid_until``.
    """
    if isinstance(phone_numbers, str):
        # A bare string is a Sequence[str] too: "+4912..." would become digits.
        raise TypeError("phone_numbers must be a sequence of strings, not a string")
    if (text is None) == (data is None):
        raise ValueError("give exactly one of text or data")
    if ttl is not None and valid_until is not None:
        raise ValueError("give at most one of ttl or valid_until")
    key = new_idempotency_key() if idempotency_key is None else idempotency_key
    if passphrase is not None:
        if text is not None:
            text = envelope.seal_for_key(passphrase, text.encode("utf-8"), key)
        else:
            data = envelope.seal_for_key(passphrase, bytes(data or b""), key).encode("ascii")
        is_encrypted = True
    request = messages_pb2.SendMessageRequest(
        phone_numbers=list(phone_numbers),
        device_id=device_id,
        sim_number=sim_number,
        priority=priority,
        is_encrypted=is_encrypted,
        idempotency_key=key,
    )
    if text is not None:
        request.text_message.text = text
    elif data is not None:
        request.data_message.data = data
        request.data_message.port = port
    if ttl is not None:
        request.ttl = ttl
    elif valid_until is not None:
        request.valid_until.CopyFrom(_timestamp(valid_until, "valid_until"))
    if with_delivery_report is not None:
        request.with_delivery_report = with_delivery_report
    if schedule_at is not None:
        request.schedule_at.CopyFrom(_timestamp(schedule_at, "schedule_at"))
    return request


def reschedule_request(message_id: str, schedule_at: datetime | None) -> messages_pb2.RescheduleMessageRequest:
    """Build a ``RescheduleMessageRequest``; None = send now."""
    request = messages_pb2.RescheduleMessageRequest(id=message_id)
    if schedule_at is not None:
        request.schedule_at.CopyFrom(_timestamp(schedule_at, "schedule_at"))
    return request


def list_messages_request(
    *,
    state: int | str,
    device_id: str,
    created_after: datetime | None,
    created_before: datetime | None,
    page_size: int,
    page_token: str,
) -> messages_pb2.ListMessagesRequest:
    """Build a ``ListMessagesRequest``; unset datetimes mean "no bound".

    Args:
        state: A ``common_pb2.State`` value or its name ("PENDING"); 0 = any.
        device_id: Only this device's messages ("" = any).
        created_after: Inclusive lower bound, timezone-aware.
        created_before: Exclusive upper bound, timezone-aware.
        page_size: 0 = the server's default.
        page_token: ``next_page_token`` of the previous page ("" = first).

    Raises:
        ValueError: An unknown state name or a naive datetime.
    """
    request = messages_pb2.ListMessagesRequest(
        state=cast(common_pb2.State, common_pb2.State.Value(state) if isinstance(state, str) else state),
        device_id=device_id,
        page_size=page_size,
        page_token=page_token,
    )
    if created_after is not None:
        request.created_after.CopyFrom(_timestamp(created_after, "created_after"))
    if created_before is not None:
        request.created_before.CopyFrom(_timestamp(created_before, "created_before"))
    return request


def list_inbound_request(
    *,
    device_id: str,
    received_after: datetime | None,
    received_before: datetime | None,
    page_size: int,
    page_token: str,
) -> inbound_pb2.ListInboundRequest:
    """Build a ``ListInboundRequest``; unset datetimes mean "no bound".

    Raises:
        ValueError: A naive datetime.
    """
    request = inbound_pb2.ListInboundRequest(device_id=device_id, page_size=page_size, page_token=page_token)
    if received_after is not None:
        request.received_after.CopyFrom(_timestamp(received_after, "received_after"))
    if received_before is not None:
        request.received_before.CopyFrom(_timestamp(received_before, "received_before"))
    return request


def pairing_code_request(device_name: str, ttl_seconds: int) -> devices_pb2.CreatePairingCodeRequest:
    """Build a ``CreatePairingCodeRequest`` (0 = the server's default TTL)."""
    return devices_pb2.CreatePairingCodeRequest(device_name=device_name, ttl_seconds=ttl_seconds)


def reconnect_delay(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Return the pause before reconnect number ``attempt`` (0-based) of a stream.

    0.2 s × 2ⁿ with ±20 % jitter, capped at 5 s: the same curve as gRPC's own
    retries, jittered so that clients cut off by one server restart do not all
    come back in the same instant.
    """
    base = _RECONNECT_INITIAL * 2.0 ** min(attempt, 32)
    jitter = 1.0 + _RECONNECT_JITTER * (2.0 * rng() - 1.0)
    return min(_RECONNECT_MAX, base * jitter)


class WatchCursor:
    """The resume state of one ``watch_messages`` / ``watch_inbound`` iteration.

    Both watches are ordered by ``event_id``, and a new stream resumes after
    the ``after_event_id`` it is given. Remembering the last event handed to
    the caller, and starting each reconnect from it, gives the caller every
    event exactly once across disconnects. A watch "from now" cut before its
    first event resumes from the position the server named when the stream
    began (:data:`WATCH_START_KEY`, :meth:`learn_start`).

    Args:
        after_event_id: The caller's starting point (None = only new events).
        message_ids: Only these messages (empty = all of the caller's).
        timeout: Overall deadline for the whole watch, in seconds, or None.
        max_reconnects: Reconnects in a row (without an event in between)
            before giving up.
    """

    __slots__ = ("_deadline", "_message_ids", "after_event_id", "failures", "max_reconnects")

    def __init__(
        self,
        after_event_id: int | None,
        message_ids: Sequence[str],
        *,
        timeout: float | None,
        max_reconnects: int,
    ) -> None:
        if isinstance(message_ids, str):
            raise TypeError("message_ids must be a sequence of strings, not a string")
        if max_reconnects < 0:
            raise ValueError("max_reconnects must be >= 0")
        self.after_event_id = after_event_id
        self._message_ids = list(message_ids)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.max_reconnects = max_reconnects
        self.failures = 0

    def request(self) -> messages_pb2.WatchMessagesRequest:
        """Return the request for the next stream, resuming after the last event."""
        request = messages_pb2.WatchMessagesRequest(message_ids=self._message_ids)
        if self.after_event_id is not None:
            request.after_event_id = self.after_event_id
        return request

    def inbound_request(self, device_id: str) -> inbound_pb2.WatchInboundRequest:
        """Return the ``WatchInbound`` request for the next stream (``message_ids`` unused)."""
        request = inbound_pb2.WatchInboundRequest(device_id=device_id)
        if self.after_event_id is not None:
            request.after_event_id = self.after_event_id
        return request

    def timeout(self) -> float | None:
        """Return the deadline left for the next stream, or None for no deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def learn_start(self, initial_metadata: Sequence[tuple[str, Any]] | None) -> None:
        """Take the stream's start from its initial metadata when no event has fixed it yet.

        A watch opened "from now" that is cut before its first event must resume from where it
        began, not from "now" again: events logged while the server restarted would be lost.
        """
        for key, value in initial_metadata or ():
            if key != WATCH_START_KEY:
                continue
            try:
                start = int(value)
            except (TypeError, ValueError):
                return
            if self.after_event_id is None:
                self.after_event_id = start
            _log.debug("watch stream open after event %d", start)
            return

    def accept(self, event: messages_pb2.MessageEvent | inbound_pb2.InboundEvent) -> bool:
        """Record ``event``; return False if it was already handed out.

        The server should never repeat an event after ``after_event_id``; the
        check keeps the no-duplicate promise even if one does.
        """
        if self.after_event_id is not None and event.event_id <= self.after_event_id:
            return False
        self.after_event_id = event.event_id
        self.failures = 0
        return True

    def reconnect_after(self, error: grpc.RpcError) -> float | None:
        """Return the pause before reconnecting after ``error``, or None to give up.

        Only UNAVAILABLE (server restart, GOAWAY, network) is resumed; any other
        code is an answer the caller must see.
        """
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code is not grpc.StatusCode.UNAVAILABLE or self.failures >= self.max_reconnects:
            return None
        delay = reconnect_delay(self.failures)
        self.failures += 1
        timeout = self.timeout()
        if timeout is not None and timeout <= delay:
            return None
        return delay
