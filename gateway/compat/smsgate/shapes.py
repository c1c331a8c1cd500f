"""SMSGate's JSON shapes and states, to and from smsgw's records (`../shared/smsgate-api.md`
§3.3-3.6). A send is turned into smsgw's own SendMessageRequest, so it is validated by the
same code as a gRPC send (gateway.api.validation): one implementation of what a message may be.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.v1 import messages_pb2
from smsgw_client.foreign import SMSGATE_PREFIX

from gateway.auth.records import TokenPair
from gateway.devices.records import DeviceRecord
from gateway.errors import InvalidArgument
from gateway.messages.records import MessageRecord
from gateway.types import State

__all__ = [
    "STATES", "FROM_STATE", "message_state", "data_field", "device", "send_request", "iso", "camel", "token_response", "parse_time",
]

# smsgw state -> SMSGate's ProcessingState. DISPATCHED is still "Pending" there: SMSGate's
# "Processed" means the phone took the message, which is smsgw's ACCEPTED.
STATES = {
    State.PENDING: "Pending", State.DISPATCHED: "Pending", State.ACCEPTED: "Processed", State.SENT: "Sent",
    State.DELIVERED: "Delivered", State.FAILED: "Failed", State.EXPIRED: "Failed", State.CANCELLED: "Cancelled",
}
# SMSGate's state filter -> the smsgw states shown as it (the list's `state` query).
FROM_STATE: dict[str, tuple[State, ...]] = {
    name: tuple(state for state, shown in STATES.items() if shown == name)
    for name in ("Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelled")
}


def iso(at: datetime | None) -> str | None:
    """RFC 3339 with milliseconds and Z: what Go, Gson and both clients parse."""
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def camel(field: str) -> str:
    """smsgw's field path in SMSGate's spelling: text_message.text -> textMessage.text."""
    head, *rest = field.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def message_state(record: MessageRecord, *, content: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "deviceId": record.device_id or "",
        "state": STATES[record.state],
        "isHashed": False,
        "isEncrypted": record.is_encrypted,
        "recipients": [
            {"phoneNumber": r.phone_number, "state": STATES[r.state],
             **({"error": r.error or r.last_error or "failed"} if STATES[r.state] == "Failed" else {})}
            for r in record.recipients
        ],
        "states": {"Pending": iso(record.created_at), **({STATES[record.state]: iso(record.updated_at)})},
        "createdAt": iso(record.created_at),
    }
    if content:
        if record.text is not None:
            out["textMessage"] = {"text": record.text}
        elif record.data is not None:
            out["dataMessage"] = {"data": data_field(record), "port": record.port}
    return out


def data_field(record: MessageRecord) -> str:
    """A data message's `data`: base64 of the bytes, or the SMSGate ciphertext as its client
    sent it (SMSGate seals the base64 text itself)."""
    data = record.data or b""
    if record.is_encrypted and data.startswith(SMSGATE_PREFIX.encode()):
        return data.decode("ascii", "replace")
    return base64.b64encode(data).decode()


def token_response(pair: TokenPair) -> dict[str, Any]:
    """SMSGate's TokenResponse in both spellings: its server and TypeScript client use
    snake_case, its Python client (4.3.3) reads camelCase."""
    fields = {"id": pair.access.jti, "token_type": "Bearer", "access_token": pair.access_token,
              "refresh_token": pair.refresh_token, "expires_at": iso(pair.access.expires_at)}
    return {**fields, **{camel(k): v for k, v in fields.items() if k != "id"}}


def device(record: DeviceRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "createdAt": iso(record.created_at),
        "updatedAt": iso(record.last_seen or record.created_at),
        "lastSeen": iso(record.last_seen or record.created_at),
        "simCards": [{"slotIndex": s.slot - 1, "simNumber": s.slot, "carrierName": s.operator_name} for s in record.sims],
    }


def _e164(number: Any, region: str, index: int) -> str:
    if not isinstance(number, str) or not 1 <= len(number) <= 128:
        raise InvalidArgument(f"phoneNumbers[{index}]", "must be a string of 1..128 characters")
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return number  # smsgw's own check says what is wrong with it
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def parse_time(value: Any, field: str) -> datetime:
    """An RFC 3339 time (a body field or a query parameter; without an offset: UTC)."""
    if not isinstance(value, str):
        raise InvalidArgument(field, "must be an RFC 3339 time")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(field, "must be an RFC 3339 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _time(value: Any, field: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(parse_time(value, field))
    return stamp


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(key, f"must be an integer {low}..{high}")
    return value


def send_request(
    body: Any, *, region: str, skip_validation: bool, max_recipients: int
) -> messages_pb2.SendMessageRequest:
    """SMSGate's `Message` -> smsgw's SendMessageRequest (InvalidArgument names SMSGate's field)."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    req = messages_pb2.SendMessageRequest()
    numbers = body.get("phoneNumbers")
    if not isinstance(numbers, list) or not numbers:
        raise InvalidArgument("phoneNumbers", "at least one phone number is required")
    if len(numbers) > max_recipients:  # before parsing any: each costs ~20 µs on the API's loop
        raise InvalidArgument("phoneNumbers", f"at most {max_recipients} recipients")
    encrypted = bool(body.get("isEncrypted", False))
    keep = encrypted or skip_validation
    req.phone_numbers.extend(n if keep and isinstance(n, str) else _e164(n, region, i) for i, n in enumerate(numbers))
    req.is_encrypted = encrypted
    text, data, legacy = body.get("textMessage"), body.get("dataMessage"), body.get("message")
    if sum(x is not None for x in (text, data, legacy)) != 1:
        raise InvalidArgument("textMessage", "give exactly one of textMessage, dataMessage or message")
    if legacy is not None:
        if not isinstance(legacy, str):
            raise InvalidArgument("message", "must be a string")
        req.text_message.text = legacy
    elif text is not None:
        if not isinstance(text, dict) or not isinstance(text.get("text"), str):
            raise InvalidArgument("textMessage.text", "must be a string")
        req.text_message.text = text["text"]
    else:
        if not isinstance(data, dict) or not isinstance(data.get("data"), str):
            raise InvalidArgument("dataMessage.data", "must be a base64 string")
        if encrypted and data["data"].startswith(SMSGATE_PREFIX):
            req.data_message.data = data["data"].encode("ascii", "replace")  # sealed by SMSGate's client: kept as is
        else:
            try:
                req.data_message.data = base64.b64decode(data["data"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument("dataMessage.data", "must be base64") from None
        port = _int(data, "port", 1, 65535)
        if port is None:
            raise InvalidArgument("dataMessage.port", "must be an integer 1..65535")
        req.data_message.port = port
    for key, low, high, field in (("simNumber", 1, 8, "sim_number"), ("priority", -128, 127, "priority")):
        value = _int(body, key, low, high)
        if value is not None:
            setattr(req, field, value)
    if "withDeliveryReport" in body and body["withDeliveryReport"] is not None:
        req.with_delivery_report = bool(body["withDeliveryReport"])
    ttl, valid_until = body.get("ttl"), body.get("validUntil")
    if ttl is not None and valid_until is not None:
        raise InvalidArgument("ttl", "ttl and validUntil exclude each other")
    if ttl is not None:
        req.ttl = _int(body, "ttl", 1, 2**31) or 0
    elif valid_until is not None:
        req.valid_until.CopyFrom(_time(valid_until, "validUntil"))
    if body.get("scheduleAt") is not None:
        req.schedule_at.CopyFrom(_time(body["scheduleAt"], "scheduleAt"))
    for key in ("deviceId", "id"):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 64):
            raise InvalidArgument(key, "must be a string of at most 64 characters")
    req.device_id = body.get("deviceId") or ""
    req.idempotency_key = body.get("id") or ""
    return req
