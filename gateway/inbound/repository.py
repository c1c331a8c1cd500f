"""Inbound SMS storage: each stored once per (device, phone id), logged as an event and handed to
the webhook outbox in the same transaction (DESIGN.md "Event log"; RELIABILITY 13).

Methods are synchronous; callers run them in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy import func
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.api.convert import inbound_to_pb
from gateway.inbound.records import InboundEventRecord, InboundRecord, NewInbound
from gateway.messages.repository import to_utc
from gateway.storage.engine import Database
from gateway.storage.event_log import log_events
from gateway.storage.models import EventRow, InboundRow
from gateway.types import EventKind
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.payloads import proto_json
from gateway.webhooks.records import WebhookEvent

__all__ = ["InboundRepository"]

log = logging.getLogger(__name__)

# A lost race on uq_inbound_device_phone_id (two sessions of one phone storing the same SMS
# at once) rolls the batch back; the next try sees the winner's rows and skips them.
_STORE_TRIES = 3


class InboundRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def store(self, owner_id: str, device_id: str, items: Sequence[NewInbound], now: datetime) -> list[InboundRecord]:
        """Store the SMS of `items` not stored before (by phone id) and return those new ones.

        Each new one gets its event-log row and its webhook deliveries in the same
        transaction; a re-sent one (its Ack was lost) is neither stored nor logged again.
        """
        now, tries = to_utc(now), 1
        while True:
            try:
                with self.db.write() as s:
                    stored = self._store(s, owner_id, device_id, items, now)
            except IntegrityError:
                if tries >= _STORE_TRIES:
                    raise
                tries += 1
                log.info("inbound of device %s raced another session; retrying", device_id)
                continue
            log.debug("inbound of device %s: %d stored, %d repeated", device_id, len(stored), len(items) - len(stored))
            return stored

    @staticmethod
    def _store(
        s: Session, owner_id: str, device_id: str, items: Sequence[NewInbound], now: datetime
    ) -> list[InboundRecord]:
        phone_ids = {i.phone_id for i in items}
        seen = set(
            s.exec(select(InboundRow.phone_id).where(InboundRow.device_id == device_id, col(InboundRow.phone_id).in_(phone_ids)))
        )
        stored = []
        for item in items:
            if item.phone_id in seen:
                continue
            seen.add(item.phone_id)
            row = InboundRow(
                id=str(ULID()),
                owner_id=owner_id,
                device_id=device_id,
                phone_id=item.phone_id,
                sim=item.sim,
                sender=item.sender,
                text=item.text,
                data=item.data if item.text is None else None,
                port=item.port if item.text is None else 0,
                is_encrypted=item.is_encrypted,
                truncated=item.truncated,
                received_at=to_utc(item.received_at) if item.received_at else now,
                created_at=now,
            )
            s.add(row)
            log_events(s, [_inbound_event(owner_id, row.id, now)])
            record = _record(row)
            event = WebhookEvent.SMS_RECEIVED if record.text is not None else WebhookEvent.SMS_DATA_RECEIVED
            enqueue(s, owner_id, event, device_id, lambda r=record: {"inbound": proto_json(inbound_to_pb(r))}, now)
            stored.append(record)
        return stored

    def list(
        self,
        owner_id: str,
        device_id: str = "",
        received_after: datetime | None = None,
        received_before: datetime | None = None,
        *,
        limit: int,
        before_id: str | None = None,
    ) -> list[InboundRecord]:
        """Newest first (by server id) below `before_id`; `received_after` inclusive,
        `received_before` exclusive; `device_id` "" = any of the owner's phones."""
        with self.db.read() as s:
            q = select(InboundRow).where(InboundRow.owner_id == owner_id)
            if device_id:
                q = q.where(InboundRow.device_id == device_id)
            if received_after is not None:
                q = q.where(InboundRow.received_at >= to_utc(received_after))
            if received_before is not None:
                q = q.where(InboundRow.received_at < to_utc(received_before))
            if before_id:
                q = q.where(InboundRow.id < before_id)
            rows = s.exec(q.order_by(col(InboundRow.id).desc()).limit(limit))
            return [_record(r) for r in rows]

    def events_after(
        self, owner_id: str, after_id: int, *, limit: int, device_id: str = "", upto: int | None = None
    ) -> list[InboundEventRecord]:
        """The owner's inbound events with after_id < id (<= upto), oldest first."""
        with self.db.read() as s:
            q = (
                select(EventRow.id, InboundRow)
                .join(InboundRow, col(InboundRow.id) == col(EventRow.inbound_id))
                .where(
                    EventRow.owner_id == owner_id,
                    EventRow.kind == EventKind.INBOUND.value,
                    col(EventRow.id) > after_id,
                )
            )
            if upto is not None:
                q = q.where(col(EventRow.id) <= upto)
            if device_id:
                q = q.where(InboundRow.device_id == device_id)
            rows = s.exec(q.order_by(col(EventRow.id)).limit(limit)).all()
            return [InboundEventRecord(id=event_id or 0, inbound=_record(row)) for event_id, row in rows]

    def last_event_id(self) -> int:
        """The newest event id of any kind: the cursor is shared with WatchMessages."""
        with self.db.read() as s:
            return int(s.exec(select(func.max(EventRow.id))).one() or 0)


def _record(row: InboundRow) -> InboundRecord:
    return InboundRecord(
        id=row.id,
        owner_id=row.owner_id,
        device_id=row.device_id,
        phone_id=row.phone_id,
        sim=row.sim,
        sender=row.sender,
        text=row.text,
        data=row.data,
        port=row.port,
        is_encrypted=row.is_encrypted,
        received_at=to_utc(row.received_at),
        created_at=to_utc(row.created_at),
        truncated=row.truncated,
    )


def _inbound_event(owner_id: str, inbound_id: str, now: datetime) -> dict[str, object]:
    """The event-log row of a stored inbound SMS (what WatchInbound streams)."""
    return {"owner_id": owner_id, "kind": EventKind.INBOUND.value, "inbound_id": inbound_id, "created_at": now}
