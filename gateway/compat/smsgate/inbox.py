"""SMSGate's inbox refresh and export requests (`../shared/smsgate-api.md` §3.8), checked.

SMSGate's server only asks the phone to re-read its inbox and fire the `sms:received`
webhooks again. smsgw stores every inbound SMS when the phone forwards it (and sends its
webhooks then), so an accepted request changes nothing; it is still validated, so a client's
mistake is an error here as on SMSGate's server.
"""

from __future__ import annotations

from typing import Any

from gateway.compat.smsgate.shapes import parse_time
from gateway.errors import InvalidArgument

__all__ = ["refresh_request", "export_request"]

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
