"""The outbox: webhook deliveries written in the transaction of the change that caused them
(RELIABILITY 13: no event without its change, no change without its event).

Writers call `enqueue` inside their own `db.write()` session. The owner's webhooks are read
once per session (cached in `Session.info`), and the payload is only built when some webhook
wants the event, so a change nobody subscribed to costs one indexed query per transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlmodel import Session
from ulid import ULID

from gateway.messages.rows import Writes
from gateway.storage.engine import AFTER_COMMIT
from gateway.storage.models import WebhookDeliveryRow, WebhookRow
from gateway.webhooks.formats import Format, render
from gateway.webhooks.records import WebhookEvent, WebhookState

__all__ = ["enqueue", "new_delivery_id", "render_payload", "ENQUEUED"]

# Set once a transaction that stored deliveries has committed: the worker claims only then,
# so a burst of message changes nobody subscribed to costs it no database round at all.
ENQUEUED = threading.Event()

_CACHE_KEY = "smsgw.webhooks"


def new_delivery_id() -> str:
    """The webhook-id header: unique per delivery, the same on each of its attempts."""
    return f"msg_{ULID()}"


def render_payload(event: WebhookEvent, delivery_id: str, device_id: str, now: datetime, body: dict[str, Any]) -> str:
    """The exact Standard Webhooks body: event, id, the owner's device id, time, then the record(s)."""
    return render(Format.STANDARD, event, delivery_id, "", device_id, now, body)


_W = WebhookRow.__table__.c  # type: ignore[attr-defined]
# FOR KEY SHARE (PostgreSQL): a DeleteWebhook committing meanwhile in another process waits
# for this transaction, instead of failing its delivery's foreign key and with it the change
# that caused the event. SQLite serialises writers anyway. Built once (a hot-path statement:
# every transaction with a SENT/DELIVERED/FAILED change runs it once per owner).
_SUBSCRIBERS = (
    select(_W.id, _W.events, _W.device_id, _W.format, _W.external_id)
    .where(_W.owner_id == bindparam("owner_id"), _W.state != int(WebhookState.DISABLED))
    .with_for_update(key_share=True)
)


def _subscribers(s: Session | Writes, owner_id: str) -> list[Any]:
    """The owner's enabled webhooks (id, events, device_id, format, external_id), read once
    per transaction."""
    cache: dict[str, list[Any]] = s.info.setdefault(_CACHE_KEY, {})
    if owner_id not in cache:
        params = {"owner_id": owner_id}
        rows = s.execute(_SUBSCRIBERS, params) if isinstance(s, Writes) else s.connection().execute(_SUBSCRIBERS, params)
        cache[owner_id] = list(rows)
    return cache[owner_id]


def enqueue(
    s: Session,
    owner_id: str,
    event: WebhookEvent,
    device_id: str,
    body: Callable[[], dict[str, Any]],
    now: datetime,
) -> int:
    """Store one delivery per enabled webhook of `owner_id` that wants `event` from
    `device_id`; `body()` gives the record part of the payload. Returns how many were stored."""
    wanted = [
        w for w in _subscribers(s, owner_id)
        if str(event) in w.events.split() and (not w.device_id or w.device_id == device_id)
    ]
    if not wanted:
        return 0
    record = body()
    for w in wanted:
        delivery_id = new_delivery_id()
        s.add(
            WebhookDeliveryRow(
                id=delivery_id,
                webhook_id=w.id,
                owner_id=owner_id,
                event=str(event),
                payload=render(w.format, event, delivery_id, w.external_id or w.id, device_id, now, record),
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    callbacks = s.info.setdefault(AFTER_COMMIT, [])
    if ENQUEUED.set not in callbacks:
        callbacks.append(ENQUEUED.set)
    return len(wanted)
