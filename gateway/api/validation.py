"""SendMessage(s) validation: every rule names the field it checks (google.rpc.BadRequest paths)."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.v1 import messages_pb2

from gateway.config import LimitsSettings
from smsgw_client.envelope import OVERHEAD, EnvelopeError, check_envelope
from smsgw_client.foreign import SMSGATE_PREFIX, httpsms_check, recognise, smsgate_check

from gateway.api.e164 import check_e164
from gateway.errors import InvalidArgument
from gateway.messages.records import NewMessage
from gateway.otp.keys import SEALED_PREFIX
from smsgw_client.segments import Encoding, count_segments

__all__ = [
    "parse_send_request", "parse_send_many", "in_item", "check_e164", "timestamp_field", "require", "MAX_BATCH",
    "Abandoned",
]

MAX_BATCH = 1000
"""Items of one SendMessages call (issue 7): one transaction each, a bounded request."""

_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
# The most UTF-8 bytes one SMS part's text can take: 160 GSM-7 characters, each at most 3
# bytes in UTF-8 (the euro sign), or 70 UCS-2 units of at most 3 bytes (or 4 per pair).
_MAX_UTF8_PER_PART = 480


# The most a foreign format adds to its plaintext, written out (SMSGate's prefix, iterations,
# salt and padding): a bound checked before anything is parsed.
_FOREIGN_OVERHEAD = 128
_CHECKS = {"smsgw1": check_envelope, "smsgate": smsgate_check, "unmarked": httpsms_check}


def _check_envelope(value: str | bytes, field: str, max_plain: int, bad: list[tuple[str, str]]) -> None:
    """An encrypted body must be well-formed ciphertext, checked without decrypting; its
    plaintext no longer than any phone could send. smsgw1 envelopes (by their magic), and the
    formats of SMSGate's clients (by their `$aes-256-cbc/pbkdf2-sha1$` prefix) and httpSMS's
    (other base64 of at least 16 bytes: it has no mark) pass through (docs/e2e.md)."""
    if len(value) > (max_plain + max(OVERHEAD, _FOREIGN_OVERHEAD)) * 4 // 3 + 4:
        bad.append((field, f"envelope too long: its plaintext would exceed {max_plain} bytes"))
        return
    check = _CHECKS.get(recognise(value), check_envelope)  # unknown: smsgw1's check says why
    try:
        plain = check(value)
    except EnvelopeError as exc:
        bad.append((field, f"is_encrypted is set, but {exc}"))
        return
    if plain > max_plain:
        bad.append((field, f"envelope too long: its plaintext would exceed {max_plain} bytes"))


def _sealed_number(number: str) -> str:
    """Why an encrypted message's recipient is refused ("" = fine): E.164, or a number sealed
    by SMSGate's clients (they seal numbers too)."""
    if not number.startswith(SMSGATE_PREFIX):
        return check_e164(number)
    if len(number) > 512:
        return "a sealed number of at most 512 characters"
    try:
        smsgate_check(number)
    except EnvelopeError as exc:
        return f"is_encrypted is set, but {exc}"
    return ""


def require(value: str, field: str) -> str:
    """A required string field: INVALID_ARGUMENT naming it when empty."""
    if not value:
        raise InvalidArgument(field, "required")
    return value


def parse_send_request(req: messages_pb2.SendMessageRequest, limits: LimitsSettings, now: datetime) -> NewMessage:
    """Validate a SendMessageRequest; raises InvalidArgument listing every bad field."""
    bad: list[tuple[str, str]] = []

    numbers = list(req.phone_numbers)
    if not numbers:
        bad.append(("phone_numbers", "at least one recipient is required"))
    elif len(numbers) > limits.max_recipients:
        bad.append(("phone_numbers", f"at most {limits.max_recipients} recipients"))
    seen: dict[str, int] = {}
    for i, n in enumerate(numbers[: limits.max_recipients]):
        why = _sealed_number(n) if req.is_encrypted else check_e164(n)
        if why:
            bad.append((f"phone_numbers[{i}]", why))
        elif n in seen:
            bad.append((f"phone_numbers[{i}]", f"duplicate of phone_numbers[{seen[n]}]"))
        seen.setdefault(n, i)

    text: str | None = None
    data: bytes | None = None
    port = 0
    parts, encoding = 1, Encoding.DATA
    kind = req.WhichOneof("content")
    if kind is None:
        bad.append(("content", "set text_message or data_message"))
    elif kind == "text_message":
        text = req.text_message.text
        if not text:
            bad.append(("text_message.text", "must not be empty"))
        elif req.is_encrypted:
            # The server cannot count parts of ciphertext (it never decrypts); it checks the
            # envelope's form and size, and the phone counts the plaintext's parts.
            parts, encoding = 0, Encoding.UCS_2
            _check_envelope(text, "text_message.text", limits.max_parts * _MAX_UTF8_PER_PART, bad)
        elif text.startswith(SEALED_PREFIX):
            # Only the OTP service writes such texts (gateway.otp.keys); the bridge opens them.
            bad.append(("text_message.text", f"must not start with {SEALED_PREFIX!r}: it marks a one-time password's sealed SMS"))
        elif len(text) > limits.max_parts * 160:
            # Longer than any text that fits (GSM-7 packs at most 160 characters a part);
            # refused before counting, which walks the whole text.
            bad.append(("text_message.text", f"longer than {limits.max_parts} SMS parts can carry"))
        else:
            count = count_segments(text)
            parts, encoding = count.parts, count.encoding
            if count.parts > limits.max_parts:
                bad.append(
                    ("text_message.text", f"needs {count.parts} SMS parts ({count.encoding}); at most {limits.max_parts}")
                )
    else:
        data, port = req.data_message.data, req.data_message.port
        if not data:
            bad.append(("data_message.data", "must not be empty"))
        elif req.is_encrypted:
            _check_envelope(data, "data_message.data", limits.max_data_bytes, bad)
        elif len(data) > limits.max_data_bytes:
            bad.append(("data_message.data", f"at most {limits.max_data_bytes} bytes"))
        if not 1 <= port <= 65535:
            bad.append(("data_message.port", "must be 1..65535"))

    if req.sim_number > 8:
        bad.append(("sim_number", "must be 0 (default SIM) or a slot 1..8"))
    if not -128 <= req.priority <= 127:
        bad.append(("priority", "must be -128..127"))

    valid_until: datetime | None = None
    expiry = req.WhichOneof("expiry")
    if expiry == "ttl":
        if not 1 <= req.ttl <= limits.max_ttl_seconds:
            bad.append(("ttl", f"must be 1..{limits.max_ttl_seconds} seconds"))
        else:
            valid_until = now + timedelta(seconds=req.ttl)
    elif expiry == "valid_until":
        valid_until = timestamp_field(req.valid_until, "valid_until", bad)
        if valid_until is None:
            pass
        elif valid_until <= now:
            bad.append(("valid_until", "must be in the future"))
        elif valid_until > now + timedelta(seconds=limits.max_ttl_seconds):
            bad.append(("valid_until", f"at most {limits.max_ttl_seconds} seconds ahead"))

    schedule_at: datetime | None = None
    if req.HasField("schedule_at"):
        schedule_at = timestamp_field(req.schedule_at, "schedule_at", bad)
        if schedule_at is None:
            pass
        elif schedule_at <= now:
            schedule_at = None  # a time already past: send now
        elif schedule_at > now + timedelta(seconds=limits.max_schedule_seconds):
            bad.append(("schedule_at", f"at most {limits.max_schedule_seconds // 86400} days ahead"))
        elif valid_until is not None and schedule_at >= valid_until:
            bad.append(("schedule_at", "must be before valid_until (the message would expire unsent)"))

    key = req.idempotency_key
    if len(key) > limits.max_idempotency_key:
        bad.append(("idempotency_key", f"at most {limits.max_idempotency_key} characters"))
    elif key and not _KEY.fullmatch(key):
        bad.append(("idempotency_key", "printable ASCII without spaces"))

    InvalidArgument.raise_if_any(bad)

    return NewMessage(
        phone_numbers=tuple(numbers),
        text=text,
        data=data,
        port=port,
        device_id=req.device_id,
        sim_number=req.sim_number,
        priority=req.priority,
        valid_until=valid_until,
        with_delivery_report=req.with_delivery_report if req.HasField("with_delivery_report") else True,
        is_encrypted=req.is_encrypted,
        # Without a key the message is not deduplicated; the client library always sends one.
        idempotency_key=key or "srv-" + uuid.uuid4().hex,
        content_hash=_content_hash(req),
        parts=parts,
        encoding=str(encoding),
        schedule_at=schedule_at,
    )


class Abandoned(Exception):
    """The call was cancelled while its items were checked: the rest is not worth checking."""


def parse_send_many(
    req: messages_pb2.SendMessagesRequest, limits: LimitsSettings, now: datetime, stop: threading.Event | None = None
) -> list[NewMessage | InvalidArgument]:
    """Validate each item of a SendMessagesRequest as SendMessage would, with its fields named
    `messages[i].<field>`; a bad item is its own error, never the call's.

    The key is required per item (a retried call must be a replay, never a second copy), and
    a key already used by an earlier item of the call is an error of the later item naming
    both. The call itself is refused (InvalidArgument on `messages`) when it is empty or has
    more than MAX_BATCH items. Raises Abandoned once `stop` is set (checked between items:
    a cancelled call stops costing CPU within one item).
    """
    items = req.messages
    if not items:
        raise InvalidArgument("messages", "at least one message is required")
    if len(items) > MAX_BATCH:
        raise InvalidArgument("messages", f"at most {MAX_BATCH} messages per call; split the batch")
    out: list[NewMessage | InvalidArgument] = []
    first: dict[str, int] = {}  # idempotency key -> index of its first item
    for i, item in enumerate(items):
        if stop is not None and stop.is_set():
            raise Abandoned
        prefix = f"messages[{i}]."
        bad: list[tuple[str, str]] = []
        key = item.idempotency_key
        if not key:
            bad.append((prefix + "idempotency_key", "required in SendMessages: a retried call must be a replay"))
        elif key in first:
            bad.append((prefix + "idempotency_key", f"same key as messages[{first[key]}]; each item needs its own"))
        else:
            first[key] = i
        try:
            new = parse_send_request(item, limits, now)
        except InvalidArgument as exc:
            bad.extend((prefix + f, r) for f, r in exc.violations)
        out.append(InvalidArgument(*bad[0], *bad[1:]) if bad else new)
    return out


def in_item(exc: InvalidArgument, index: int) -> InvalidArgument:
    """`exc` (raised for one item of SendMessages) with its fields named `messages[index].<field>`."""
    violations = [(f"messages[{index}].{f}", r) for f, r in exc.violations]
    return InvalidArgument(*violations[0], *violations[1:])


def timestamp_field(ts: Timestamp, field: str, bad: list[tuple[str, str]]) -> datetime | None:
    """An aware datetime, or None after recording why `ts` is not a valid timestamp."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        bad.append((field, "not a valid timestamp (years 1..9999, nanos 0..999999999)"))
        return None


def _content_hash(req: messages_pb2.SendMessageRequest) -> str:
    """Same request (ttl as given, not as a deadline) = same hash, so a retry matches."""
    copy = messages_pb2.SendMessageRequest()
    copy.CopyFrom(req)
    copy.ClearField("idempotency_key")
    if not copy.HasField("with_delivery_report"):
        copy.with_delivery_report = True  # the default, spelled out: unset and true are one request
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
