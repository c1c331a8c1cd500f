"""A webhook's wire format: how its body is written and how its requests are signed.

Two formats share one outbox, worker, retry schedule and SSRF guard:

- `Format.STANDARD` (""): smsgw's own body, signed as Standard Webhooks (docs/webhooks.md);
  every webhook created through gRPC or the CLI.
- `Format.SMSGATE` ("smsgate"): SMSGate's envelope `{deviceId, event, id, payload, webhookId}`
  with its payload fields, signed with `X-Timestamp` and `X-Signature` (hex HMAC-SHA256 of body
  + timestamp, keyed with the account's `webhooks.signing_key`); the webhooks registered
  through SMSGate's API (docs/smsgate.md), so receivers written for SMSGate's phones work
  unchanged.

The body is rendered once, when the event is stored (the outbox keeps the exact bytes); the
signature is made at each attempt (its timestamp is the attempt's).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gateway.version import installed_version
from gateway.webhooks.records import WebhookEvent
from gateway.webhooks.signing import signed_headers

__all__ = ["Format", "render", "sign", "SMSGATE_EVENTS", "smsgate_signature"]


class Format(StrEnum):
    STANDARD = ""
    SMSGATE = "smsgate"


#: The SMSGate events smsgw produces (device events are smsgw's own: SMSGate has none).
SMSGATE_EVENTS = (
    WebhookEvent.SMS_RECEIVED, WebhookEvent.SMS_DATA_RECEIVED, WebhookEvent.SMS_SENT, WebhookEvent.SMS_DELIVERED,
    WebhookEvent.SMS_FAILED, WebhookEvent.SYSTEM_PING,
)


def render(
    fmt: str, event: WebhookEvent, delivery_id: str, webhook_ref: str, device_id: str, now: datetime,
    record: dict[str, Any],
) -> str:
    """The exact JSON body. `record` is smsgw's record part (`{"message": ...}`, `{"inbound":
    ...}`, ...); `webhook_ref` is the id the receiver knows the webhook by (SMSGate's id)."""
    if fmt == Format.SMSGATE:
        doc: dict[str, Any] = {
            "deviceId": device_id, "event": str(event), "id": delivery_id,
            "payload": _smsgate_payload(event, now, record), "webhookId": webhook_ref,
        }
    else:
        time = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        doc = {"event": str(event), "id": delivery_id, "device_id": device_id, "time": time, **record}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def sign(fmt: str, secrets: tuple[str, ...], delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The signature headers of one attempt."""
    if fmt == Format.SMSGATE:
        return {"X-Timestamp": str(timestamp), "X-Signature": smsgate_signature(secrets[0], timestamp, body)}
    return signed_headers(secrets, delivery_id, timestamp, body)


def smsgate_signature(key: str, timestamp: int, body: bytes) -> str:
    """SMSGate's: lowercase hex HMAC-SHA256, keyed with the key's UTF-8, over body + timestamp."""
    return hmac.new(key.encode(), body + str(timestamp).encode(), hashlib.sha256).hexdigest()


def _iso(t: datetime) -> str:
    """RFC 3339, milliseconds, Z: what Go, Gson and both SMSGate clients parse."""
    t = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _reformat(stamp: Any, fallback: datetime) -> str:
    """A protobuf JSON timestamp (0-9 fraction digits) in `_iso`'s form."""
    if not isinstance(stamp, str):
        return _iso(fallback)
    head, dot, rest = stamp.removesuffix("Z").partition(".")
    try:
        return _iso(datetime.fromisoformat(head + (dot + rest[:6] if dot else "")))
    except ValueError:
        return _iso(fallback)


def _smsgate_payload(event: WebhookEvent, now: datetime, record: dict[str, Any]) -> dict[str, Any]:
    """SMSGate's payload fields (`../shared/smsgate-api.md` §3.10) from smsgw's record. The
    phone's own number is not known to smsgw: `recipient` of an inbound SMS and `sender` of an
    outbound one are null."""
    at = _iso(now)
    if event is WebhookEvent.SYSTEM_PING:
        return {"health": {"status": "pass", "version": installed_version(), "releaseId": 1, "checks": {}}}
    if "inbound" in record:
        m = record["inbound"]
        sender = m.get("sender", "")
        out: dict[str, Any] = {
            "messageId": m.get("id", ""), "phoneNumber": sender, "sender": sender, "recipient": None,
            "simNumber": m.get("sim_number") or None,
        }
        if event is WebhookEvent.SMS_DATA_RECEIVED:
            out["data"] = m.get("data_message", {}).get("data", "")
        else:
            out["message"] = m.get("text_message", {}).get("text", "")
        out["receivedAt"] = _reformat(m.get("received_at"), now)
        return out
    message = record.get("message", {})
    index = int(record.get("recipient_index", 0))
    recipients = message.get("recipients", [])
    r = recipients[index] if index < len(recipients) else {}
    phone = record.get("phone_number", r.get("phone_number", ""))
    out = {
        "messageId": message.get("id", ""), "phoneNumber": phone, "sender": None, "recipient": phone,
        "simNumber": r.get("sim_number") or message.get("sim_number") or None,
    }
    if event is WebhookEvent.SMS_SENT:
        out.update(partsCount=r.get("parts_total") or message.get("parts") or 1, sentAt=at)
    elif event is WebhookEvent.SMS_DELIVERED:
        out["deliveredAt"] = at
    elif event is WebhookEvent.SMS_FAILED:
        out.update(failedAt=at, reason=record.get("error") or r.get("error") or "failed")
    return out
