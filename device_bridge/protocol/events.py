"""Value objects and events of the device protocol (``smsgw.device.v1``).

Everything here is a frozen, slotted dataclass that validates itself in
``__post_init__``, so an invalid one cannot be built (h11's ``_events.py``).
Validation errors are ``ValueError`` / ``TypeError`` whose messages never
quote a field value: the codec turns them into close reasons, and those must
not leak message bodies or phone numbers.

Protobuf classes never appear here; ``codec.py`` converts at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import TypeAlias

from .flow import MAX_WINDOW

__all__ = [
    "AckReceived",
    "Credentials",
    "DeliverReceived",
    "Delivery",
    "DropReceived",
    "Event",
    "FailureClass",
    "HeldRecipient",
    "HelloReceived",
    "InboundReceived",
    "MAX_PUSH_TOKEN",
    "PushTokenReceived",
    "InboundSms",
    "InvalidEventReceived",
    "PacingSettings",
    "Receipt",
    "ReceiptReceived",
    "ReceiptState",
    "RejectReason",
    "RejectReceived",
    "Side",
    "SettingsReceived",
    "SimInfo",
    "SimPacing",
    "WelcomeReceived",
]

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_PORT_MAX = 65535
# Inbound bounds: generous for any carrier's SMS (a long concatenated one stays far below),
# small enough that a hostile phone cannot fill the database with one frame. A longer body is
# cut to the bound and flagged truncated (cut_inbound_body), never refused: refusing it would
# lose the SMS.
MAX_SENDER_CHARS = 64
MAX_INBOUND_TEXT_CHARS = 16 * 1024
MAX_INBOUND_DATA_BYTES = 8 * 1024
MAX_INBOUND_ID_CHARS = 64


class Side(IntEnum):
    """Which end of the WebSocket a session plays."""

    BRIDGE = 1
    PHONE = 2


class ReceiptState(IntEnum):
    """What a Receipt reports; mirrors ``smsgw.device.v1.ReceiptState``."""

    ACCEPTED = 1  # the phone holds the recipients durably (Receipt.recipient_indices)
    SENT = 2  # per recipient
    DELIVERED = 3  # per recipient
    FAILED = 4  # per recipient, with an error and a failure class


class RejectReason(IntEnum):
    """Why the bridge refused a device event; mirrors ``smsgw.device.v1.RejectReason``.

    A phone reads a value it does not know as UNSPECIFIED: every refusal means the same to
    it (forget the event), the reason only helps people.
    """

    UNSPECIFIED = 0
    INVALID_EVENT = 1  # a field missing or out of bounds
    UNKNOWN_MESSAGE = 2  # Receipt: no such message routed to this device
    UNKNOWN_RECIPIENT = 3  # Receipt: a recipient index the message does not have


class FailureClass(IntEnum):
    """Why a send failed; mirrors ``smsgw.device.v1.FailureClass`` (0 reads as GENERIC_FAILURE)."""

    GENERIC_FAILURE = 1
    LIMIT_EXCEEDED = 2
    NO_SERVICE = 3
    RADIO_OFF = 4
    INVALID_NUMBER = 5
    BLOCKED = 6
    DECRYPT_FAILED = 7


# --- validation helpers (messages name the field, never its value) ---------


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")


MAX_PUSH_TOKEN = 1024  # bytes; FCM's registration tokens are ~160


def _check_push_token(value: object, what: str) -> None:
    """"" (none) or printable ASCII without spaces, at most MAX_PUSH_TOKEN bytes: an FCM
    registration token, stored and sent back to FCM as it is."""
    _check_text(value, what)
    assert isinstance(value, str)
    if len(value) > MAX_PUSH_TOKEN:
        raise ValueError(f"{what} must be at most {MAX_PUSH_TOKEN} bytes")
    if any(not "!" <= c <= "~" for c in value):
        raise ValueError(f"{what} must be printable ASCII without spaces")


def _check_id(value: object, what: str) -> None:
    _check_text(value, what)
    if not value:
        raise ValueError(f"{what} must not be empty")


def _check_int(value: object, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}")


def _indices(values: Iterable[int], what: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of ints")
    result = tuple(values)
    for value in result:
        _check_int(value, 0, _UINT32_MAX, f"each of {what}")
    if len(set(result)) != len(result):
        raise ValueError(f"{what} must not repeat an index")
    return result


def _ids(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    result = tuple(values)
    for value in result:
        _check_id(value, f"each of {what}")
    return result


def _utc(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime")
    if value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{what} is out of range") from None


def cut_inbound_body(text: str | None, data: bytes | None) -> tuple[str | None, bytes | None, bool]:
    """(text, data, truncated): the body cut to the Inbound bounds, and whether it was cut.

    The bridge stores an over-long SMS cut rather than refusing it (a refusal would lose it);
    a phone may cut it first to keep its frame under the bridge's size limit.
    """
    if text is not None and len(text) > MAX_INBOUND_TEXT_CHARS:
        return text[:MAX_INBOUND_TEXT_CHARS], data, True
    if data is not None and len(data) > MAX_INBOUND_DATA_BYTES:
        return text, bytes(data[:MAX_INBOUND_DATA_BYTES]), True
    return text, data, False


# --- value objects ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimInfo:
    """A SIM the phone can send from (``Sim``); ``slot`` is 1-based."""

    slot: int
    operator_name: str = ""
    country_iso: str = ""

    def __post_init__(self) -> None:
        _check_int(self.slot, 1, _UINT32_MAX, "Sim.slot")
        _check_text(self.operator_name, "Sim.operator_name")
        _check_text(self.country_iso, "Sim.country_iso")


@dataclass(frozen=True, slots=True)
class Credentials:
    """Device credentials handed out once, in the Welcome of a pairing session.

    ``repr()`` hides the token so that logging a Welcome never leaks it.
    """

    device_id: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        _check_id(self.device_id, "Credentials.device_id")
        _check_id(self.token, "Credentials.token")


@dataclass(frozen=True, slots=True, repr=False)
class Delivery:
    """Everything a phone needs to send one message: the body of a Deliver.

    The bridge builds it (``DeviceSession.send_deliver``); the phone receives
    it in :class:`DeliverReceived`. Exactly one of ``text`` and ``data`` is
    set (``data=b""`` with ``text=None`` is an empty data message). ``port``
    belongs to data messages and stays 0 for text. ``sim_number`` 0 means "any
    SIM". ``phone_numbers[k]`` is recipient ``recipient_indices[k]`` of the
    message (empty indices read as 0..n-1); the phone's duplicate key is
    ``(message_id, recipient_index, attempt)``. ``repr()`` shows sizes, never
    the numbers or the body.
    """

    message_id: str
    phone_numbers: tuple[str, ...]
    text: str | None = None
    data: bytes | None = None
    port: int = 0
    sim_number: int = 0
    is_encrypted: bool = False
    with_delivery_report: bool = True
    priority: int = 0
    valid_until: datetime | None = None
    recipient_indices: tuple[int, ...] = ()
    attempt: int = 1
    parts: int = 0

    def __post_init__(self) -> None:
        _check_id(self.message_id, "Deliver.message_id")
        numbers = _ids(self.phone_numbers, "Deliver.phone_numbers")
        if not numbers:
            raise ValueError("Deliver.phone_numbers must not be empty")
        object.__setattr__(self, "phone_numbers", numbers)
        indices = _indices(self.recipient_indices, "Deliver.recipient_indices") or tuple(range(len(numbers)))
        if len(indices) != len(numbers):
            raise ValueError("Deliver.recipient_indices must have one index per phone number")
        object.__setattr__(self, "recipient_indices", indices)
        _check_int(self.attempt, 1, _UINT32_MAX, "Deliver.attempt")
        _check_int(self.parts, 0, _UINT32_MAX, "Deliver.parts")
        if (self.text is None) == (self.data is None):
            raise ValueError("Deliver needs exactly one of text and data")
        if self.text is not None:
            _check_text(self.text, "Deliver.text")
            if self.port != 0:
                raise ValueError("Deliver.port is only for data messages")
        else:
            if not isinstance(self.data, (bytes, bytearray, memoryview)):
                raise TypeError("Deliver.data must be bytes")
            object.__setattr__(self, "data", bytes(self.data))
            _check_int(self.port, 0, _PORT_MAX, "Deliver.port")
        _check_int(self.sim_number, 0, _UINT32_MAX, "Deliver.sim_number")
        _check_int(self.priority, _INT32_MIN, _INT32_MAX, "Deliver.priority")
        object.__setattr__(self, "valid_until", _utc(self.valid_until, "Deliver.valid_until"))

    def __repr__(self) -> str:
        if self.text is not None:
            content = f"text=<{len(self.text)} chars>"
        else:
            content = f"data=<{len(self.data or b'')} bytes>, port={self.port}"
        return (
            f"Delivery(message_id={self.message_id!r}, "
            f"phone_numbers=<{len(self.phone_numbers)}>, {content}, "
            f"sim_number={self.sim_number}, is_encrypted={self.is_encrypted}, "
            f"with_delivery_report={self.with_delivery_report}, "
            f"priority={self.priority}, valid_until={self.valid_until!r}, "
            f"recipient_indices={self.recipient_indices}, attempt={self.attempt}, parts={self.parts})"
        )

    def numbers_by_index(self) -> dict[int, str]:
        """Recipient index -> phone number, for the recipients of this Deliver."""
        return dict(zip(self.recipient_indices, self.phone_numbers, strict=True))


@dataclass(frozen=True, slots=True)
class Receipt:
    """A phone-made report on a message (``Receipt``).

    The phone builds it (``DeviceSession.send_receipt``); the bridge receives
    it in :class:`ReceiptReceived`. ``event_id`` is unique per device and
    > 0; the bridge Acks it once stored. ACCEPTED covers ``recipient_indices``
    (empty = every recipient dispatched and not yet accepted); the other
    states name one ``recipient_index``. ``attempt`` 0 means "the current
    one". ``parts_done`` counts the parts that reached SENT / DELIVERED so far
    (0 = all); ``failure_class`` says why a FAILED send failed.
    """

    event_id: int
    message_id: str
    state: ReceiptState
    recipient_index: int = 0
    error: str = ""
    time: datetime | None = None
    recipient_indices: tuple[int, ...] = ()
    attempt: int = 0
    failure_class: FailureClass | None = None
    parts_done: int = 0

    def __post_init__(self) -> None:
        _check_int(self.event_id, 1, _UINT64_MAX, "Receipt.event_id")
        _check_id(self.message_id, "Receipt.message_id")
        try:
            state = ReceiptState(self.state)
        except ValueError:
            raise ValueError("Receipt.state must be ACCEPTED, SENT, DELIVERED or FAILED") from None
        object.__setattr__(self, "state", state)
        _check_int(self.recipient_index, 0, _UINT32_MAX, "Receipt.recipient_index")
        _check_text(self.error, "Receipt.error")
        object.__setattr__(self, "time", _utc(self.time, "Receipt.time"))
        object.__setattr__(self, "recipient_indices", _indices(self.recipient_indices, "Receipt.recipient_indices"))
        _check_int(self.attempt, 0, _UINT32_MAX, "Receipt.attempt")
        _check_int(self.parts_done, 0, _UINT32_MAX, "Receipt.parts_done")
        if self.failure_class is not None:
            try:
                object.__setattr__(self, "failure_class", FailureClass(self.failure_class))
            except ValueError:
                raise ValueError("Receipt.failure_class is not a known class") from None
        if state == ReceiptState.FAILED and self.failure_class is None:
            object.__setattr__(self, "failure_class", FailureClass.GENERIC_FAILURE)


@dataclass(frozen=True, slots=True, repr=False)
class InboundSms:
    """An SMS the phone received (``Inbound``).

    The phone builds it (``DeviceSession.send_inbound``); the bridge receives
    it in :class:`InboundReceived`. ``event_id`` is the phone's event counter
    (shared with receipts): the bridge Acks it once stored. ``id`` is the
    phone's own id for the SMS, the same on every re-send: the server stores
    one copy per (device, id). Exactly one of ``text`` and ``data`` is set;
    ``port`` belongs to data SMS. ``sim_number`` 0 means "unknown";
    ``received_at`` None means the phone did not say. ``truncated``: the body is
    only the first part of what the phone received (see :func:`cut_inbound_body`).
    ``repr()`` shows sizes, never the sender or the body.
    """

    event_id: int
    id: str
    sender: str
    text: str | None = None
    data: bytes | None = None
    port: int = 0
    sim_number: int = 0
    received_at: datetime | None = None
    is_encrypted: bool = False
    truncated: bool = False

    def __post_init__(self) -> None:
        _check_int(self.event_id, 1, _UINT64_MAX, "Inbound.event_id")
        _check_id(self.id, "Inbound.id")
        if len(self.id) > MAX_INBOUND_ID_CHARS:
            raise ValueError(f"Inbound.id must be at most {MAX_INBOUND_ID_CHARS} characters")
        _check_id(self.sender, "Inbound.sender")
        if len(self.sender) > MAX_SENDER_CHARS:
            raise ValueError(f"Inbound.sender must be at most {MAX_SENDER_CHARS} characters")
        if (self.text is None) == (self.data is None):
            raise ValueError("Inbound needs exactly one of text and data")
        if self.text is not None:
            _check_text(self.text, "Inbound.text")
            if len(self.text) > MAX_INBOUND_TEXT_CHARS:
                raise ValueError(f"Inbound.text must be at most {MAX_INBOUND_TEXT_CHARS} characters")
            if self.port != 0:
                raise ValueError("Inbound.port is only for data SMS")
        else:
            if not isinstance(self.data, (bytes, bytearray, memoryview)):
                raise TypeError("Inbound.data must be bytes")
            object.__setattr__(self, "data", bytes(self.data))
            if len(self.data) > MAX_INBOUND_DATA_BYTES:
                raise ValueError(f"Inbound.data must be at most {MAX_INBOUND_DATA_BYTES} bytes")
            _check_int(self.port, 0, _PORT_MAX, "Inbound.port")
        _check_int(self.sim_number, 0, _UINT32_MAX, "Inbound.sim_number")
        object.__setattr__(self, "received_at", _utc(self.received_at, "Inbound.received_at"))
        if not isinstance(self.is_encrypted, bool):
            raise TypeError("Inbound.is_encrypted must be a bool")
        if not isinstance(self.truncated, bool):
            raise TypeError("Inbound.truncated must be a bool")

    def __repr__(self) -> str:
        if self.text is not None:
            content = f"text=<{len(self.text)} chars>"
        else:
            content = f"data=<{len(self.data or b'')} bytes>, port={self.port}"
        return (
            f"InboundSms(event_id={self.event_id}, id={self.id!r}, sender=<{len(self.sender)} chars>, {content}, "
            f"sim_number={self.sim_number}, received_at={self.received_at!r}, is_encrypted={self.is_encrypted}, "
            f"truncated={self.truncated})"
        )


@dataclass(frozen=True, slots=True)
class HeldRecipient:
    """One recipient (and attempt) a phone holds, reported in Hello."""

    message_id: str
    recipient_index: int
    attempt: int = 1

    def __post_init__(self) -> None:
        _check_id(self.message_id, "HeldRecipient.message_id")
        _check_int(self.recipient_index, 0, _UINT32_MAX, "HeldRecipient.recipient_index")
        _check_int(self.attempt, 1, _UINT32_MAX, "HeldRecipient.attempt")


@dataclass(frozen=True, slots=True)
class SimPacing:
    """The pacing of one SIM (``SimPacing``); 0 = no such limit."""

    slot: int
    parts_per_minute: int = 0
    min_interval_ms: int = 0
    parts_per_hour: int = 0
    parts_per_day: int = 0
    recipients_per_month: int = 0

    def __post_init__(self) -> None:
        _check_int(self.slot, 1, _UINT32_MAX, "SimPacing.slot")
        for name in ("parts_per_minute", "min_interval_ms", "parts_per_hour", "parts_per_day", "recipients_per_month"):
            _check_int(getattr(self, name), 0, _UINT32_MAX, f"SimPacing.{name}")


@dataclass(frozen=True, slots=True)
class PacingSettings:
    """What the bridge applies to a phone (``Settings``), pushed in Welcome and live."""

    sims: tuple[SimPacing, ...] = ()
    phone_parts_per_minute: int = 0
    priority_bypass: bool = False

    def __post_init__(self) -> None:
        sims = tuple(self.sims)
        for sim in sims:
            if not isinstance(sim, SimPacing):
                raise TypeError("Settings.sims must hold SimPacing")
        object.__setattr__(self, "sims", sims)
        _check_int(self.phone_parts_per_minute, 0, _UINT32_MAX, "Settings.phone_parts_per_minute")


# --- events: what DeviceSession.events_received() returns -------------------


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """BRIDGE side: the phone opened the session.

    ``window`` is what the phone advertised; ``DeviceSession.window`` is what
    the bridge will honour (capped by ``max_window``). Do not re-send the
    ``held_message_ids``: the phone already holds them. Answer with
    ``send_welcome()``.
    """

    app_version: str
    sims: tuple[SimInfo, ...]
    window: int
    held_message_ids: tuple[str, ...] = ()
    held: tuple[HeldRecipient, ...] = ()
    push_token: str = field(default="", repr=False)  # FCM registration token ("" = none): see PushTokenReceived

    def __post_init__(self) -> None:
        _check_text(self.app_version, "Hello.app_version")
        _check_push_token(self.push_token, "Hello.push_token")
        sims = tuple(self.sims)
        for sim in sims:
            if not isinstance(sim, SimInfo):
                raise TypeError("Hello.sims must hold SimInfo")
        object.__setattr__(self, "sims", sims)
        _check_int(self.window, 1, MAX_WINDOW, "Hello.window")
        held = _ids(self.held_message_ids, "Hello.held_message_ids")
        object.__setattr__(self, "held_message_ids", held)
        recipients = tuple(self.held)
        for h in recipients:
            if not isinstance(h, HeldRecipient):
                raise TypeError("Hello.held must hold HeldRecipient")
        object.__setattr__(self, "held", recipients)


@dataclass(frozen=True, slots=True)
class PushTokenReceived:
    """BRIDGE side: the phone's FCM registration token changed (or "" : it has none now).
    Store it; it is not acknowledged (every Hello carries the token again)."""

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        _check_push_token(self.token, "PushToken.token")


@dataclass(frozen=True, slots=True)
class ReceiptReceived:
    """BRIDGE side: the phone reported on a message; store it, then Ack its event id."""

    receipt: Receipt

    def __post_init__(self) -> None:
        if not isinstance(self.receipt, Receipt):
            raise TypeError("receipt must be a Receipt")


@dataclass(frozen=True, slots=True)
class InboundReceived:
    """BRIDGE side: the phone forwarded an SMS it received; store it, then Ack its event id."""

    inbound: InboundSms

    def __post_init__(self) -> None:
        if not isinstance(self.inbound, InboundSms):
            raise TypeError("inbound must be an InboundSms")


@dataclass(frozen=True, slots=True)
class InvalidEventReceived:
    """BRIDGE side: the phone sent a Receipt or Inbound that names its event id but can never
    be stored (a field missing or out of bounds). Answer ``send_reject(event_id,
    RejectReason.INVALID_EVENT, detail)``; the session stays open. ``detail`` names the field,
    never a value."""

    event_id: int
    kind: str  # "Receipt" or "Inbound"
    detail: str

    def __post_init__(self) -> None:
        _check_int(self.event_id, 1, _UINT64_MAX, "event_id")
        _check_text(self.kind, "kind")
        _check_text(self.detail, "detail")


@dataclass(frozen=True, slots=True)
class WelcomeReceived:
    """PHONE side: the bridge accepted the session; it is now OPEN.

    ``window`` is the window the bridge honours (<= what the phone
    advertised). ``credentials`` is set only on a session opened with a
    pairing code: store them, they are shown once.
    """

    device_id: str
    window: int
    ping_interval: int
    server_time: datetime | None = None
    credentials: Credentials | None = None
    settings: PacingSettings | None = None

    def __post_init__(self) -> None:
        _check_id(self.device_id, "Welcome.device_id")
        if self.settings is not None and not isinstance(self.settings, PacingSettings):
            raise TypeError("Welcome.settings must be PacingSettings")
        _check_int(self.window, 1, MAX_WINDOW, "Welcome.window")
        _check_int(self.ping_interval, 0, _UINT32_MAX, "Welcome.ping_interval_seconds")
        object.__setattr__(self, "server_time", _utc(self.server_time, "Welcome.server_time"))
        if self.credentials is not None and not isinstance(self.credentials, Credentials):
            raise TypeError("Welcome.credentials must be Credentials")


@dataclass(frozen=True, slots=True)
class DeliverReceived:
    """PHONE side: the bridge handed over a message to send.

    ``duplicate`` is True when the id was already in flight on this session;
    the phone then does not take it twice (and answers with its receipt again
    if it already holds it).
    """

    delivery: Delivery
    duplicate: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.delivery, Delivery):
            raise TypeError("delivery must be a Delivery")


@dataclass(frozen=True, slots=True)
class AckReceived:
    """PHONE side: the bridge stored these device events; the phone may forget them."""

    event_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if isinstance(self.event_ids, (str, bytes)):
            raise TypeError("Ack.event_ids must be a sequence of ints")
        ids = tuple(self.event_ids)
        if not ids:
            raise ValueError("Ack.event_ids must not be empty")
        for event_id in ids:
            _check_int(event_id, 1, _UINT64_MAX, "each of Ack.event_ids")
        object.__setattr__(self, "event_ids", ids)


@dataclass(frozen=True, slots=True)
class RejectReceived:
    """PHONE side: the bridge will never store this event; forget it as after an Ack and do
    not send it again. An unknown reason reads as UNSPECIFIED."""

    event_id: int
    reason: RejectReason = RejectReason.UNSPECIFIED
    detail: str = ""

    def __post_init__(self) -> None:
        _check_int(self.event_id, 1, _UINT64_MAX, "Reject.event_id")
        if isinstance(self.reason, bool) or not isinstance(self.reason, int):
            raise TypeError("Reject.reason must be an int")
        try:
            reason = RejectReason(self.reason)
        except ValueError:
            reason = RejectReason.UNSPECIFIED
        object.__setattr__(self, "reason", reason)
        _check_text(self.detail, "Reject.detail")


@dataclass(frozen=True, slots=True)
class DropReceived:
    """PHONE side: do not send this message (cancelled or expired); it leaves the window."""

    message_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        _check_id(self.message_id, "Drop.message_id")
        _check_text(self.reason, "Drop.reason")


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    """PHONE side: the owner changed this phone's pacing; it applies from now on."""

    settings: PacingSettings

    def __post_init__(self) -> None:
        if not isinstance(self.settings, PacingSettings):
            raise TypeError("settings must be PacingSettings")


Event: TypeAlias = (
    HelloReceived
    | ReceiptReceived
    | InboundReceived
    | PushTokenReceived
    | InvalidEventReceived
    | WelcomeReceived
    | DeliverReceived
    | AckReceived
    | RejectReceived
    | DropReceived
    | SettingsReceived
)
