"""The read that refills the event ring: the log's newest events of every owner, both kinds.

It belongs with the repositories' per-owner `events_after` (same joins, same records); it is
here while gateway/messages/repository.py is being rewritten. Synchronous: run in a worker
thread.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from gateway.events.ring import RingEvent, Tail
from gateway.inbound.records import InboundEventRecord
from gateway.inbound.repository import _record as inbound_record  # the same record WatchInbound's storage path makes
from gateway.messages.records import EventRecord
from gateway.storage.engine import Database
from gateway.storage.models import EventRow, InboundRow, RecipientRow
from gateway.types import EventKind, State

__all__ = ["read_tail"]

_E = EventRow.__table__.c  # type: ignore[attr-defined]
_RC = RecipientRow.__table__.c  # type: ignore[attr-defined]


def read_tail(db: Database, after: int, limit: int) -> Tail:
    """Every message and inbound event with `after` < id <= the newest id, or only the newest
    `limit` of them (then `Tail.after` says where they start).

    The newest id is read first, as the watch streams' storage path reads its bound: every id
    below it is committed when the writes commit in id order (one writer per process, as
    SQLite and `smsgw serve` have it; several PostgreSQL writers need a commit-ordered cursor,
    docs/design.md "Event log")."""
    with db.read() as s:
        upto = int(s.exec(select(func.max(EventRow.id))).one() or 0)
        if upto <= after:
            return Tail(after, after, [])
        in_range = (col(EventRow.id) > after) & (col(EventRow.id) <= upto)
        # Columns, not ORM rows, on the connection: this read runs after every commit that
        # logged events, and an EventRow object per event cost more than the query.
        messages = s.connection().execute(
            select(_E.id, _E.owner_id, _E.message_id, _E.recipient_index, _E.state, _E.message_state, _E.error,
                   _E.created_at, _RC.phone_number)
            .join(RecipientRow.__table__, (_RC.message_id == _E.message_id) & (_RC.idx == _E.recipient_index))
            .where(_E.kind == EventKind.MESSAGE.value, _E.id > after, _E.id <= upto)
            .order_by(_E.id.desc())
            .limit(limit)
        ).all()
        inbound = s.exec(
            select(EventRow.id, EventRow.owner_id, InboundRow)
            .join(InboundRow, col(InboundRow.id) == col(EventRow.inbound_id))
            .where(EventRow.kind == EventKind.INBOUND.value, in_range)
            .order_by(col(EventRow.id).desc())
            .limit(limit)
        ).all()
    # A kind whose read was cut at `limit` is complete only above its oldest id read.
    start = after
    if len(messages) == limit:
        start = max(start, messages[-1][0] - 1)
    if len(inbound) == limit:
        start = max(start, (inbound[-1][0] or 0) - 1)
    events = [_message_event(*row) for row in messages]
    events += [_inbound_event(event_id or 0, owner_id, row) for event_id, owner_id, row in inbound]
    events = sorted((e for e in events if e.id > start), key=lambda e: e.id)
    if len(events) > limit:
        events = events[-limit:]
        start = events[0].id - 1
    return Tail(start, upto, events)


def _message_event(
    event_id: int, owner_id: str, message_id: str, index: int, state: int, message_state: int, error: str,
    created_at: datetime, phone_number: str,
) -> RingEvent:
    record = EventRecord(
        id=event_id,
        message_id=message_id,
        recipient_index=index,
        phone_number=phone_number,
        state=State(state),
        message_state=State(message_state),
        error=error,
        created_at=created_at,
    )
    return RingEvent(event_id, owner_id, EventKind.MESSAGE, record)


def _inbound_event(event_id: int, owner_id: str, row: InboundRow) -> RingEvent:
    record = InboundEventRecord(id=event_id, inbound=inbound_record(row))
    return RingEvent(event_id, owner_id, EventKind.INBOUND, record)
