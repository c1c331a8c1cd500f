"""The phone protocol, sans I/O (DESIGN, "Phone protocol (WebSocket)").

A :class:`DeviceSession` is fed WebSocket messages and commands and returns
events and encoded frames; it never does I/O or reads a clock, so the bridge
(trio) and the device agent share it, and it is tested without sockets.
The wire contract is ``proto/smsgw/device/v1/device.proto``.
"""

from __future__ import annotations

from .codec import SUBPROTOCOLS, CloseCode, Encoding, decode, encode
from .errors import MAX_REASON_BYTES, InvalidState, ProtocolError, RemoteProtocolError
from .events import (
    AckReceived,
    Credentials,
    DeliverReceived,
    Delivery,
    DropReceived,
    Event,
    HelloReceived,
    Receipt,
    ReceiptReceived,
    ReceiptState,
    Side,
    SimInfo,
    WelcomeReceived,
)
from .flow import MAX_WINDOW, FlowWindow
from .session import DeviceSession, SessionState, SessionStatistics

__all__ = [
    "MAX_REASON_BYTES",
    "MAX_WINDOW",
    "SUBPROTOCOLS",
    "AckReceived",
    "CloseCode",
    "Credentials",
    "DeliverReceived",
    "Delivery",
    "DeviceSession",
    "DropReceived",
    "Encoding",
    "Event",
    "FlowWindow",
    "HelloReceived",
    "InvalidState",
    "ProtocolError",
    "Receipt",
    "ReceiptReceived",
    "ReceiptState",
    "RemoteProtocolError",
    "SessionState",
    "SessionStatistics",
    "Side",
    "SimInfo",
    "WelcomeReceived",
    "decode",
    "encode",
]
