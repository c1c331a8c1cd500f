"""The read that refills the event ring: the log's newest events of every owner, both kinds.

It belongs with the repositories' per-owner `events_after` (same joins, same records); it is
here while gateway/messages/repository.py is being rewritten. Synchronous: run in a worker
thread.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, select

from gateway.events.ring import RingEvent, Tail
from gateway.inbound.records import InboundEventRecord
from gateway.inbound.repository import _record as inbound_record  # the same record WatchInbound's storage path makes
from gateway.messages.records import EventRecord
from gateway.storage.engine import Database
from gateway.storage.models import EventRow, InboundRow
from gateway.storage.raw import Sql, fetch
from gateway.types import EventKind, State

__all__ = ["read_tail"]

_E = EventRow.__table__.c  # type: ignore[attr-defined]


_MAX_ID = Sql("SELECT MAX(id) FROM event")
# Columns, not ORM rows, on the DB-API (gateway.storage.raw): this read runs after every
# commit that logged events, and the ORM's statement and row objects cost more than the query.
_MESSAGE_TAIL = Sql(
    "SELECT event.id, event.owner_id, event.message_id, event.recipient_index, event.state,"
    " event.message_state, event.error, event.created_at, recipient.phone_number"
    " FROM event JOIN recipient"
    " ON recipient.message_id = event.message_id AND recipient.idx = event.recipient_index"
    f" WHERE event.kind = '{EventKind.MESSAGE.value}' AND event.id > :after AND event.id <= :upto"
    " ORDER BY event.id DESC LIMIT :limit",
    results=[None, None, None, None, None, None, None, _E.created_at.type, None],
)
_INBOUND_TAIL = Sql(
    "SELECT id, owner_id, inbound_id FROM event"
    f" WHERE kind = '{EventKind.INBOUND.value}' AND id > :after AND id <= :upto ORDER BY id DESC LIMIT :limit"
)


def read_tail(db: Database, after: int, limit: int) -> Tail:
    """Every message and inbound event with `after` < id <= the newest id, or only the newest
    `limit` of them (then `Tail.after` says where they start).

    The newest id is read first, as the watch streams' storage path reads its bound: every id
    below it is committed when the writes commit in id order (one writer per process, as
    SQLite and `smsgw serve` have it; several PostgreSQL writers need a commit-ordered cursor,
    docs/design.md "Event log")."""
    with db.read() as s:
        connection = s.connection()
        upto = int(fetch(connection, _MAX_ID)[0][0] or 0)
        if upto <= after:
            return Tail(after, after, [])
        bounds = {"after": after, "upto": upto, "limit": limit}
        messages = fetch(connection, _MESSAGE_TAIL, bounds)
        inbound_ids = fetch(connection, _INBOUND_TAIL, bounds)
        inbound: list[tuple[int, str, InboundRow]] = []
        if inbound_ids:  # rare next to message events: the ORM rows the storage path makes
            rows = {r.id: r for r in s.exec(select(InboundRow).where(col(InboundRow.id).in_([i for _, _, i in inbound_ids])))}
            inbound = [(event_id, owner_id, rows[i]) for event_id, owner_id, i in inbound_ids if i in rows]
    # A kind whose read was cut at `limit` is complete only above its oldest id read.
    start = after
    if len(messages) == limit:
        start = max(start, messages[-1][0] - 1)
    if len(inbound_ids) == limit:
        start = max(start, inbound_ids[-1][0] - 1)
    events = [_message_event(*row) for row in messages]
    events += [_inbound_event(event_id, owner_id, row) for event_id, owner_id, row in inbound]
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
