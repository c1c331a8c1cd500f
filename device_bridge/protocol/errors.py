"""Errors raised by the sans-I/O device protocol.

The tree says who is at fault (as in h11):

    ProtocolError
    ├── RemoteProtocolError   the peer broke the rules: close the WebSocket
    │                         with ``exc.code`` and ``exc.reason``
    ├── InvalidEvent          one device event (Receipt, Inbound) that names its
    │                         event id is invalid: refuse that event, keep the
    │                         session (the codec raises it; the session turns it
    │                         into an ``InvalidEventReceived``)
    └── InvalidState          we (the caller) misused the API: a bug, hence
                              also an ``AssertionError``

Bad arguments to a command (an empty message id, a naive datetime) raise the
ordinary ``ValueError`` / ``TypeError`` from the event constructors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # codec imports this module; a runtime import would cycle.
    from .codec import CloseCode

__all__ = ["MAX_REASON_BYTES", "InvalidEvent", "InvalidState", "ProtocolError", "RemoteProtocolError"]

#: Longest close reason, in UTF-8 bytes. RFC 6455 §5.5 caps a control frame
#: payload at 125 bytes, 2 of which carry the close code; we keep a margin.
MAX_REASON_BYTES = 120


def _truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded.decode("utf-8")
    return encoded[:limit].decode("utf-8", "ignore")


class ProtocolError(Exception):
    """Base class of every error the device protocol raises."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the device protocol; the session is now CLOSED.

    Close the connection with :attr:`code` and :attr:`reason`. The reason
    never carries a message body or a phone number, so it is safe to log and
    to send in the WebSocket close frame.

    Attributes:
        code: The application close code (4000-4999) for the close frame.
        reason: At most :data:`MAX_REASON_BYTES` UTF-8 bytes.
    """

    code: CloseCode
    reason: str

    def __init__(self, code: CloseCode, reason: str) -> None:
        reason = _truncate_utf8(reason, MAX_REASON_BYTES)
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        name = getattr(self.code, "name", "close code")
        return f"{self.reason} ({name} {int(self.code)})"


class InvalidEvent(ProtocolError):
    """A device event names its event id but can never be stored; refuse it, keep the session.

    Closing the session instead would wedge the phone: it re-sends unacknowledged events in
    order after every Welcome, so the same event would close every session.

    Attributes:
        event_id: The refused event's id (> 0).
        kind: "Receipt" or "Inbound".
        detail: What is wrong, naming fields, never values; at most
            :data:`MAX_REASON_BYTES` UTF-8 bytes.
    """

    def __init__(self, event_id: int, kind: str, detail: str) -> None:
        detail = _truncate_utf8(detail, MAX_REASON_BYTES)
        super().__init__(event_id, kind, detail)
        self.event_id = event_id
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind} {self.event_id} refused: {self.detail}"


class InvalidState(ProtocolError, AssertionError):
    """The caller used the session API wrongly (wrong side, wrong state, full window).

    This is a bug in the caller, never something the peer can cause.
    """
