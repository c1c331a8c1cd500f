"""The phone protocol, sans I/O (DESIGN, "Phone protocol (WebSocket)").

A :class:`DeviceSession` is fed WebSocket messages and commands and returns
events and encoded frames; it never does I/O or reads a clock, so the bridge
(trio) and the device agent share it, and it is tested without sockets.
The wire contract is ``proto/smsgw/device/v1/device.proto``.
"""

from __future__ import annotations

from .codec import PRIVATE_TOKEN_HEADER, SUBPROTOCOLS, CloseCode, Encoding, decode, encode
from .errors import MAX_REASON_BYTES, InvalidEvent, InvalidState, ProtocolError, RemoteProtocolError
from .events import (
    AckReceived,
    Credentials,
    DeliverReceived,
    Delivery,
    DropReceived,
    Event,
    FailureClass,
    HeldRecipient,
    HelloReceived,
    InboundReceived,
    InboundSms,
    InvalidEventReceived,
    MAX_PUSH_TOKEN,
    PacingSettings,
    PushTokenReceived,
    Receipt,
    ReceiptReceived,
    ReceiptState,
    RejectReason,
    RejectReceived,
    SettingsReceived,
    Side,
    SimInfo,
    SimPacing,
    WelcomeReceived,
    cut_inbound_body,
)
from .flow import MAX_WINDOW, FlowWindow
from .session import DeviceSession, SessionState, SessionStatistics

__all__ = [
    "MAX_PUSH_TOKEN",
    "MAX_REASON_BYTES",
    "MAX_WINDOW",
    "PRIVATE_TOKEN_HEADER",
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
    "FailureClass",
    "FlowWindow",
    "HeldRecipient",
    "HelloReceived",
    "InboundReceived",
    "InboundSms",
    "InvalidEvent",
    "InvalidEventReceived",
    "InvalidState",
    "PacingSettings",
    "ProtocolError",
    "PushTokenReceived",
    "Receipt",
    "ReceiptReceived",
    "ReceiptState",
    "RejectReason",
    "RejectReceived",
    "RemoteProtocolError",
    "SessionState",
    "SessionStatistics",
    "SettingsReceived",
    "Side",
    "SimInfo",
    "SimPacing",
    "WelcomeReceived",
    "cut_inbound_body",
    "decode",
    "encode",
]
