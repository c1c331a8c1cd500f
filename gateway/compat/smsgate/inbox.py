"""SMSGate's inbox refresh and export requests (`../shared/smsgate-api.md` §3.8), checked,
and turned into the `MessagesExportRequested` event SMSGate's app acts on.

SMSGate's server only asks the phone to re-read its inbox and fire the `sms:received`
webhooks again. smsgw's own phones forward every SMS as it arrives (stored once, webhooks sent
then), so for them nothing happens; an SMSGate app (the mobile API) re-reads its inbox and
posts what it finds to smsgw's inbound endpoint, which stores what it had missed (deduplicated
by the app's message id).
"""

from __future__ import annotations

from typing import Any

from gateway.compat.smsgate.shapes import parse_time
from gateway.errors import InvalidArgument

__all__ = ["refresh_request", "export_request", "export_event"]

_TYPES = ("SMS", "DATA_SMS", "MMS", "MMS_DOWNLOADED")
_DELIVERY = ("Disabled", "Individual", "Batch")


def _range(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    since, until = parse_time(body.get("since"), "since"), parse_time(body.get("until"), "until")
    if until < since:
        raise InvalidArgument("until", "must not be before since")
    return body


def _device(body: dict[str, Any], *, required: bool) -> str:
    value = body.get("deviceId")
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise InvalidArgument("deviceId", "must be a device id")
    return value


def export_event(body: dict[str, Any]) -> dict[str, str]:
    """The `MessagesExportRequested` event's data, from a checked request: every value a
    string, as SMSGate's app reads them."""
    types = body.get("messageTypes") or ["SMS"]
    trigger = body.get("triggerWebhooks")
    return {
        "since": str(body["since"]), "until": str(body["until"]), "messageTypes": ",".join(types),
        "webhookDelivery": str(body.get("webhookDelivery") or "Individual"),
        "triggerWebhooks": "false" if trigger is False else "true",
    }


def refresh_request(body: Any) -> str:
    """`InboxRefreshRequest`; returns its deviceId ("" = every device)."""
    body = _range(body)
    types = body.get("messageTypes")
    if types is not None and (not isinstance(types, list) or any(t not in _TYPES for t in types)):
        raise InvalidArgument("messageTypes", f"a list of {', '.join(_TYPES)}")
    delivery = body.get("webhookDelivery")
    if delivery is not None and delivery not in _DELIVERY:
        raise InvalidArgument("webhookDelivery", f"one of {', '.join(_DELIVERY)}")
    trigger = body.get("triggerWebhooks")
    if trigger is not None and not isinstance(trigger, bool):
        raise InvalidArgument("triggerWebhooks", "must be true or false")
    return _device(body, required=False)


def export_request(body: Any) -> str:
    """The deprecated `MessagesExportRequest` `{deviceId, since, until}`; returns its deviceId."""
    return _device(_range(body), required=True)
