"""SMSGate's webhook registrations (`/3rdparty/v1/webhooks`) as smsgw webhooks.

One registration = one smsgw webhook with one event, in SMSGate's format (its envelope and
`X-Signature`, gateway.webhooks.formats), known by SMSGate's `id` (the client's, or a ULID),
unique per account. smsgw's server sends them, with its outbox, retries and SSRF guard; in
SMSGate the phone does. Only the events smsgw produces are accepted: the rest of SMSGate's
list (sms:cancelled, mms:*, app:started, the batch events) are refused with 400 rather than
stored and never sent.

The API lists and deletes only these registrations; webhooks made through gRPC (Standard
Webhooks, several events) are not shown here, and gRPC sees both.
"""

from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session
from ulid import ULID

from gateway.compat.smsgate.settings import SettingsStore, signing_key
from gateway.errors import InvalidArgument
from gateway.types import utcnow
from gateway.webhooks.formats import SMSGATE_EVENTS, Format
from gateway.webhooks.records import WebhookEvent, WebhookRecord
from gateway.webhooks.service import WebhookService
from gateway.webhooks.ssrf import ForbiddenTarget, check_url

__all__ = ["SmsgateWebhooks", "shown"]

_EVENTS = {str(e): e for e in SMSGATE_EVENTS}
_NEVER = ("sms:cancelled", "mms:received", "mms:downloaded", "app:started", "sms:batch:received",
          "sms:batch:data-received", "mms:batch:received", "mms:batch:downloaded")
_ID = re.compile(r"[^\s/?#]{1,36}")  # it ends up in DELETE /webhooks/{id}
_MAX_URL = 2048


def shown(record: WebhookRecord) -> dict[str, Any]:
    """SMSGate's `Webhook`."""
    return {"id": record.external_id, "deviceId": record.device_id or None, "url": record.url,
            "event": str(record.events[0]) if record.events else ""}


class SmsgateWebhooks:
    def __init__(self, service: WebhookService, store: SettingsStore) -> None:
        self.service = service
        self.store = store

    async def list(self, owner_id: str) -> list[dict[str, Any]]:
        return [shown(w) for w in await self.service.list(owner_id) if w.format == Format.SMSGATE and w.external_id]

    async def upsert(self, owner_id: str, body: Any) -> dict[str, Any]:
        """POST: create, or replace the registration with the same `id`."""
        if not isinstance(body, dict):
            raise InvalidArgument("body", "must be a JSON object")
        external_id = body.get("id")
        if external_id is None or external_id == "":
            external_id = str(ULID())
        elif not isinstance(external_id, str) or not _ID.fullmatch(external_id):
            raise InvalidArgument("id", "must be 1..36 characters without spaces, '/', '?' or '#'")
        event = self._event(body.get("event"))
        url = await self._url(body.get("url"))
        device_id = body.get("deviceId")
        if device_id is not None and not isinstance(device_id, str):
            raise InvalidArgument("deviceId", "must be a string or null")
        made: list[bool] = []

        def key(s: Session) -> str:
            value, new = signing_key(s, owner_id)
            made.append(new)
            return value

        try:
            record = await self.service.upsert_external(
                owner_id, external_id, url, event, device_id or "", Format.SMSGATE, key, utcnow()
            )
        except InvalidArgument as exc:
            first, *more = [("deviceId" if f == "device_id" else f, r) for f, r in exc.violations]
            raise InvalidArgument(*first, *more) from None
        if any(made):  # the account's first signing key: the settings changed too
            await self.store.notify(owner_id, "settings")
        await self.store.notify(owner_id, "webhooks")
        return shown(record)

    async def delete(self, owner_id: str, external_id: str) -> None:
        """DELETE: nothing happens (and nothing is said) when there is no such registration."""
        if await self.service.delete_external(owner_id, external_id):
            await self.store.notify(owner_id, "webhooks")

    @staticmethod
    def _event(value: Any) -> WebhookEvent:
        if not isinstance(value, str):
            raise InvalidArgument("event", f"required: one of {', '.join(_EVENTS)}")
        if value in _EVENTS:
            return _EVENTS[value]
        if value in _NEVER:
            raise InvalidArgument("event", f"{value} is never sent by smsgw; one of {', '.join(_EVENTS)}")
        raise InvalidArgument("event", f"unknown event; one of {', '.join(_EVENTS)}")

    async def _url(self, value: Any) -> str:
        """https:// (http:// too where the server's webhook policy allows plain http, as for
        gRPC's webhooks), then smsgw's SSRF guard."""
        if not isinstance(value, str) or not value or len(value) > _MAX_URL:
            raise InvalidArgument("url", f"required: an https:// URL of at most {_MAX_URL} characters")
        schemes = ("https://", "http://") if self.service.policy.allow_http else ("https://",)
        if not value.lower().startswith(schemes):
            raise InvalidArgument("url", "must start with https://")
        try:
            await check_url(value, self.service.policy)
        except ForbiddenTarget as exc:
            raise InvalidArgument("url", str(exc)) from None
        return value
