"""Wire format of the phone protocol: one schema, two encodings.

``smsgw.device.v1+proto`` carries one ``DeviceFrame`` / ``BridgeFrame`` per
binary WebSocket message; ``smsgw.device.v1+json`` carries the protobuf JSON
mapping of the same messages in text messages (see ``device.proto``).

This is the only module of the protocol package that touches protobuf
classes: :func:`encode` / :func:`decode` handle whole frames, and the
``*_to_proto`` / ``*_from_proto`` pairs convert between the wire messages and
the dataclasses of ``events.py``. Everything a peer can send is turned into
:class:`RemoteProtocolError` (``BAD_FRAME``) here, except a Receipt or Inbound
that names its event id: that one is :class:`InvalidEvent` (refuse the event,
keep the session). No other exception escapes :func:`decode` or a
``*_from_proto`` function.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.device.v1 import device_pb2

from .errors import InvalidEvent, ProtocolError, RemoteProtocolError
from .events import (
    AckReceived,
    Credentials,
    Delivery,
    DropReceived,
    FailureClass,
    HeldRecipient,
    HelloReceived,
    InboundSms,
    PacingSettings,
    PushTokenReceived,
    Receipt,
    RejectReceived,
    SettingsReceived,
    SimInfo,
    SimPacing,
    WelcomeReceived,
    cut_inbound_body,
)

__all__ = [
    "PRIVATE_TOKEN_HEADER",
    "SUBPROTOCOLS",
    "CloseCode",
    "Encoding",
    "ack_from_proto",
    "ack_to_proto",
    "decode",
    "delivery_from_proto",
    "delivery_to_proto",
    "drop_from_proto",
    "drop_to_proto",
    "encode",
    "hello_from_proto",
    "hello_to_proto",
    "push_token_from_proto",
    "inbound_from_proto",
    "inbound_to_proto",
    "receipt_from_proto",
    "receipt_to_proto",
    "reject_from_proto",
    "reject_to_proto",
    "settings_from_proto",
    "settings_to_proto",
    "timestamp_from_proto",
    "timestamp_to_proto",
    "welcome_from_proto",
    "welcome_to_proto",
]


class CloseCode(IntEnum):
    """Application close codes; mirrors ``smsgw.device.v1.CloseCode`` (see the proto)."""

    BAD_FRAME = 4000  # undecodable frame, wrong frame type, invalid field values, an event without event_id
    PROTOCOL_VIOLATION = 4001  # a valid frame at the wrong time
    WINDOW_EXCEEDED = 4002  # more Delivers in flight than the window
    REPLACED = 4003  # a newer session for the same device took over
    CREDENTIALS_REVOKED = 4004  # the device was deleted or its pairing code spent
    HELLO_TIMEOUT = 4005  # no Hello within the handshake time
    UNSUPPORTED_SUBPROTOCOL = 4006  # neither subprotocol was offered


class Encoding(StrEnum):
    """The two WebSocket subprotocols; the value is the subprotocol name."""

    PROTO = "smsgw.device.v1+proto"  # binary frames, protobuf wire format
    JSON = "smsgw.device.v1+json"  # text frames, protobuf JSON mapping


#: Subprotocols in order of preference, for the WebSocket handshake.
SUBPROTOCOLS: tuple[str, ...] = (Encoding.PROTO, Encoding.JSON)

#: Upgrade header a phone pairing with a private-mode server adds (the server's private token).
PRIVATE_TOKEN_HEADER = "X-Smsgw-Private-Token"

_Frame = TypeVar("_Frame", device_pb2.DeviceFrame, device_pb2.BridgeFrame)

_BAD_FRAME = CloseCode.BAD_FRAME


# --- frames -------------------------------------------------------------------


def encode(frame: device_pb2.DeviceFrame | device_pb2.BridgeFrame, encoding: Encoding) -> bytes | str:
    """Serialize one frame for a WebSocket message.

    Args:
        frame: The frame; exactly one member of its ``frame`` oneof is set.
        encoding: The session's subprotocol.

    Returns:
        ``bytes`` for a binary message (PROTO), ``str`` for a text message
        (JSON: compact, lowerCamelCase field names per the protobuf JSON
        mapping).
    """
    if Encoding(encoding) is Encoding.PROTO:
        return frame.SerializeToString()
    obj = json_format.MessageToDict(frame, preserving_proto_field_name=False)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def decode(data: bytes | str, frame_type: type[_Frame], encoding: Encoding) -> _Frame:
    """Parse one WebSocket message into a frame of ``frame_type``.

    Unknown fields are ignored in both encodings, so a newer peer can add
    fields; a frame whose ``frame`` oneof is unset (including one that only
    carries a frame kind we do not know) is refused.

    Args:
        data: The message: ``bytes`` on PROTO sessions, ``str`` on JSON ones.
        frame_type: ``DeviceFrame`` on the bridge, ``BridgeFrame`` on the phone.
        encoding: The session's subprotocol.

    Returns:
        The frame, with one member of its ``frame`` oneof set. Field values
        are not validated here; the ``*_from_proto`` functions do that.

    Raises:
        RemoteProtocolError: ``BAD_FRAME``, for any input that is not such a
            frame. Nothing else escapes, whatever ``data`` holds.
    """
    frame = frame_type()
    if Encoding(encoding) is Encoding.PROTO:
        if isinstance(data, str):
            raise RemoteProtocolError(_BAD_FRAME, "text frame on a binary subprotocol")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise RemoteProtocolError(_BAD_FRAME, "frame is neither bytes nor text")
        try:
            frame.ParseFromString(bytes(data))
        except DecodeError as exc:
            raise RemoteProtocolError(_BAD_FRAME, "undecodable protobuf frame") from exc
    else:
        if isinstance(data, (bytes, bytearray, memoryview)):
            raise RemoteProtocolError(_BAD_FRAME, "binary frame on a text subprotocol")
        if not isinstance(data, str):
            raise RemoteProtocolError(_BAD_FRAME, "frame is neither bytes nor text")
        try:
            obj = json.loads(data, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError):
            raise RemoteProtocolError(_BAD_FRAME, "invalid JSON") from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError(_BAD_FRAME, "JSON frame is not an object")
        try:
            json_format.ParseDict(obj, frame, ignore_unknown_fields=True)
        # ParseDict raises ParseError mostly, but also ValueError, TypeError,
        # AttributeError... on odd shapes (json_format.Parse catches Exception
        # too). Its messages may quote field values, hence "from None".
        except Exception:
            raise RemoteProtocolError(_BAD_FRAME, "JSON frame does not match the schema") from None
    if frame.WhichOneof("frame") is None:
        raise RemoteProtocolError(_BAD_FRAME, "frame carries no known message")
    return frame


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _invalid(kind: str, exc: Exception) -> RemoteProtocolError:
    # Validation messages from events.py name fields, never values.
    return RemoteProtocolError(_BAD_FRAME, f"invalid {kind}: {exc}")


def _invalid_event(kind: str, event_id: int, exc: Exception) -> ProtocolError:
    """A device event that can be named (event_id > 0) is refused alone; one that cannot
    (event_id 0) leaves nothing to refuse, so the frame is bad."""
    if event_id == 0:
        return _invalid(kind, exc)
    return InvalidEvent(event_id, kind, str(exc))


# --- timestamps ---------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# google.protobuf.Timestamp's documented range: 0001-01-01 to 9999-12-31.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def timestamp_to_proto(value: datetime) -> Timestamp:
    """Convert an aware datetime to a ``Timestamp`` (microsecond precision)."""
    if value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


def timestamp_from_proto(value: Timestamp) -> datetime:
    """Convert a ``Timestamp`` to an aware UTC datetime, truncated to microseconds.

    Raises:
        ValueError: The timestamp is outside the range ``Timestamp`` allows.
    """
    if not _MIN_SECONDS <= value.seconds <= _MAX_SECONDS or not 0 <= value.nanos <= 999_999_999:
        raise ValueError("timestamp out of range")
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1_000)


def _optional_timestamp(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    return timestamp_from_proto(getattr(message, name))


# --- messages -----------------------------------------------------------------


def _put_content(
    message: device_pb2.Deliver | device_pb2.Inbound, text: str | None, data: bytes | None, port: int
) -> None:
    """Fill the `content` oneof (text, or data + port) of a Deliver or an Inbound."""
    if text is not None:
        message.text = text
    else:
        # SetInParent keeps an empty data message distinguishable from no content.
        message.data.SetInParent()
        message.data.data = data or b""
        message.data.port = port


def _content(message: device_pb2.Deliver | device_pb2.Inbound) -> tuple[str | None, bytes | None, int]:
    """(text, data, port) of a `content` oneof; neither set means no content (refused later)."""
    kind = message.WhichOneof("content")
    if kind == "text":
        return message.text, None, 0
    if kind == "data":
        return None, message.data.data, message.data.port
    return None, None, 0


def hello_to_proto(hello: HelloReceived) -> device_pb2.Hello:
    """Build the ``Hello`` a phone sends first."""
    return device_pb2.Hello(
        app_version=hello.app_version,
        sims=[
            device_pb2.Sim(slot=sim.slot, operator_name=sim.operator_name, country_iso=sim.country_iso)
            for sim in hello.sims
        ],
        window=hello.window,
        held_message_ids=hello.held_message_ids,
        held=[
            device_pb2.HeldRecipient(message_id=h.message_id, recipient_index=h.recipient_index, attempt=h.attempt)
            for h in hello.held
        ],
        push_token=hello.push_token,
    )


def hello_from_proto(message: device_pb2.Hello) -> HelloReceived:
    """Validate a received ``Hello``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (e.g. a window outside 1..1000).
    """
    try:
        return HelloReceived(
            app_version=message.app_version,
            sims=tuple(SimInfo(sim.slot, sim.operator_name, sim.country_iso) for sim in message.sims),
            window=message.window,
            held_message_ids=tuple(message.held_message_ids),
            held=tuple(HeldRecipient(h.message_id, h.recipient_index, h.attempt or 1) for h in message.held),
            push_token=message.push_token,
        )
    except (ValueError, TypeError) as exc:
        raise _invalid("Hello", exc) from None


def push_token_from_proto(message: device_pb2.PushToken) -> PushTokenReceived:
    """Validate a received ``PushToken``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (not printable ASCII, too long).
    """
    try:
        return PushTokenReceived(message.token)
    except (ValueError, TypeError) as exc:
        raise _invalid("PushToken", exc) from None


def welcome_to_proto(welcome: WelcomeReceived) -> device_pb2.Welcome:
    """Build the ``Welcome`` the bridge answers a Hello with."""
    message = device_pb2.Welcome(
        device_id=welcome.device_id,
        window=welcome.window,
        ping_interval_seconds=welcome.ping_interval,
    )
    if welcome.server_time is not None:
        message.server_time.CopyFrom(timestamp_to_proto(welcome.server_time))
    if welcome.credentials is not None:
        message.credentials.device_id = welcome.credentials.device_id
        message.credentials.token = welcome.credentials.token
    if welcome.settings is not None:
        message.settings.CopyFrom(settings_to_proto(welcome.settings))
    return message


def welcome_from_proto(message: device_pb2.Welcome) -> WelcomeReceived:
    """Validate a received ``Welcome``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME``.
    """
    try:
        credentials = None
        if message.HasField("credentials"):
            credentials = Credentials(message.credentials.device_id, message.credentials.token)
        return WelcomeReceived(
            device_id=message.device_id,
            window=message.window,
            ping_interval=message.ping_interval_seconds,
            server_time=_optional_timestamp(message, "server_time"),
            credentials=credentials,
            settings=_pacing(message.settings) if message.HasField("settings") else None,
        )
    except (ValueError, TypeError) as exc:
        raise _invalid("Welcome", exc) from None


def delivery_to_proto(delivery: Delivery) -> device_pb2.Deliver:
    """Build the ``Deliver`` that hands ``delivery`` to a phone.

    Raises:
        ValueError: A string is not valid Unicode (e.g. a lone surrogate).
    """
    message = device_pb2.Deliver(
        message_id=delivery.message_id,
        phone_numbers=delivery.phone_numbers,
        sim_number=delivery.sim_number,
        is_encrypted=delivery.is_encrypted,
        with_delivery_report=delivery.with_delivery_report,
        priority=delivery.priority,
        recipient_indices=delivery.recipient_indices,
        attempt=delivery.attempt,
        parts=delivery.parts,
    )
    _put_content(message, delivery.text, delivery.data, delivery.port)
    if delivery.valid_until is not None:
        message.valid_until.CopyFrom(timestamp_to_proto(delivery.valid_until))
    return message


def delivery_from_proto(message: device_pb2.Deliver) -> Delivery:
    """Validate a received ``Deliver``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (no content, no phone numbers,
            empty id, out-of-range values).
    """
    try:
        text, data, port = _content(message)
        return Delivery(
            message_id=message.message_id,
            phone_numbers=tuple(message.phone_numbers),
            text=text,
            data=data,
            port=port,
            sim_number=message.sim_number,
            is_encrypted=message.is_encrypted,
            with_delivery_report=message.with_delivery_report,
            priority=message.priority,
            valid_until=_optional_timestamp(message, "valid_until"),
            recipient_indices=tuple(message.recipient_indices),
            attempt=message.attempt or 1,
            parts=message.parts,
        )
    except (ValueError, TypeError) as exc:
        raise _invalid("Deliver", exc) from None


def receipt_to_proto(receipt: Receipt) -> device_pb2.Receipt:
    """Build the ``Receipt`` a phone reports with."""
    message = device_pb2.Receipt(
        event_id=receipt.event_id,
        message_id=receipt.message_id,
        state=int(receipt.state),  # type: ignore[arg-type]  # the stub wants the proto enum
        recipient_index=receipt.recipient_index,
        error=receipt.error,
        recipient_indices=receipt.recipient_indices,
        attempt=receipt.attempt,
        failure_class=int(receipt.failure_class or 0),  # type: ignore[arg-type]
        parts_done=receipt.parts_done,
    )
    if receipt.time is not None:
        message.time.CopyFrom(timestamp_to_proto(receipt.time))
    return message


def receipt_from_proto(message: device_pb2.Receipt) -> Receipt:
    """Validate a received ``Receipt``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME``: event id 0 (the event cannot be named).
        InvalidEvent: any other invalid field (empty message id, unspecified or
            unknown state, ...): refuse this event, keep the session.
    """
    try:
        return Receipt(
            event_id=message.event_id,
            message_id=message.message_id,
            state=message.state,  # type: ignore[arg-type]  # coerced and checked by Receipt
            recipient_index=message.recipient_index,
            error=message.error,
            time=_optional_timestamp(message, "time"),
            recipient_indices=tuple(message.recipient_indices),
            attempt=message.attempt,
            failure_class=FailureClass(message.failure_class) if message.failure_class else None,
            parts_done=message.parts_done,
        )
    except (ValueError, TypeError) as exc:
        raise _invalid_event("Receipt", message.event_id, exc) from None


def inbound_to_proto(inbound: InboundSms) -> device_pb2.Inbound:
    """Build the ``Inbound`` a phone forwards a received SMS with.

    Raises:
        ValueError: A string is not valid Unicode (e.g. a lone surrogate).
    """
    message = device_pb2.Inbound(
        event_id=inbound.event_id,
        id=inbound.id,
        sim_number=inbound.sim_number,
        sender=inbound.sender,
        is_encrypted=inbound.is_encrypted,
        truncated=inbound.truncated,
    )
    _put_content(message, inbound.text, inbound.data, inbound.port)
    if inbound.received_at is not None:
        message.received_at.CopyFrom(timestamp_to_proto(inbound.received_at))
    return message


def inbound_from_proto(message: device_pb2.Inbound) -> InboundSms:
    """Validate a received ``Inbound``; a body over its bound is cut and flagged truncated.

    Raises:
        RemoteProtocolError: ``BAD_FRAME``: event id 0 (the event cannot be named).
        InvalidEvent: any other invalid field (empty or long id or sender, no
            content, a port over 65535, ...): refuse this event, keep the session.
    """
    try:
        text, data, port = _content(message)
        text, data, cut = cut_inbound_body(text, data)
        return InboundSms(
            event_id=message.event_id,
            id=message.id,
            sender=message.sender,
            text=text,
            data=data,
            port=port,
            sim_number=message.sim_number,
            received_at=_optional_timestamp(message, "received_at"),
            is_encrypted=message.is_encrypted,
            truncated=cut or message.truncated,
        )
    except (ValueError, TypeError) as exc:
        raise _invalid_event("Inbound", message.event_id, exc) from None


def ack_to_proto(ack: AckReceived) -> device_pb2.Ack:
    """Build the ``Ack`` for device events the bridge has stored."""
    return device_pb2.Ack(event_ids=ack.event_ids)


def ack_from_proto(message: device_pb2.Ack) -> AckReceived:
    """Validate a received ``Ack``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (no ids, or an id of 0).
    """
    try:
        return AckReceived(tuple(message.event_ids))
    except (ValueError, TypeError) as exc:
        raise _invalid("Ack", exc) from None


def reject_to_proto(reject: RejectReceived) -> device_pb2.Reject:
    """Build the ``Reject`` that refuses one device event."""
    return device_pb2.Reject(
        event_id=reject.event_id,
        reason=int(reject.reason),  # type: ignore[arg-type]  # the stub wants the proto enum
        detail=reject.detail,
    )


def reject_from_proto(message: device_pb2.Reject) -> RejectReceived:
    """Validate a received ``Reject`` (a reason this side does not know reads as UNSPECIFIED).

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (event id 0: nothing to forget).
    """
    try:
        return RejectReceived(message.event_id, message.reason, message.detail)
    except (ValueError, TypeError) as exc:
        raise _invalid("Reject", exc) from None


def drop_to_proto(drop: DropReceived) -> device_pb2.Drop:
    """Build the ``Drop`` that withdraws a message from a phone."""
    return device_pb2.Drop(message_id=drop.message_id, reason=drop.reason)


def drop_from_proto(message: device_pb2.Drop) -> DropReceived:
    """Validate a received ``Drop``.

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (empty message id).
    """
    try:
        return DropReceived(message.message_id, message.reason)
    except (ValueError, TypeError) as exc:
        raise _invalid("Drop", exc) from None


def settings_to_proto(settings: PacingSettings) -> device_pb2.Settings:
    """Build the ``Settings`` the bridge pushes (in Welcome, or as a frame)."""
    return device_pb2.Settings(
        sims=[
            device_pb2.SimPacing(
                slot=p.slot,
                parts_per_minute=p.parts_per_minute,
                min_interval_ms=p.min_interval_ms,
                parts_per_hour=p.parts_per_hour,
                parts_per_day=p.parts_per_day,
                recipients_per_month=p.recipients_per_month,
            )
            for p in settings.sims
        ],
        phone_parts_per_minute=settings.phone_parts_per_minute,
        priority_bypass=settings.priority_bypass,
    )


def _pacing(message: device_pb2.Settings) -> PacingSettings:
    return PacingSettings(
        sims=tuple(
            SimPacing(
                p.slot, p.parts_per_minute, p.min_interval_ms, p.parts_per_hour, p.parts_per_day, p.recipients_per_month
            )
            for p in message.sims
        ),
        phone_parts_per_minute=message.phone_parts_per_minute,
        priority_bypass=message.priority_bypass,
    )


def settings_from_proto(message: device_pb2.Settings) -> SettingsReceived:
    """Validate a received ``Settings`` frame.

    Raises:
        RemoteProtocolError: ``BAD_FRAME`` (a SIM slot of 0).
    """
    try:
        return SettingsReceived(_pacing(message))
    except (ValueError, TypeError) as exc:
        raise _invalid("Settings", exc) from None
