"""The event log's rows are inserted last in their transaction, all at once (issue 16).

WatchMessages and WatchInbound read the log up to its largest id and resume after an id, so
ids must become visible in id order: a reader that saw id N must never later find a smaller
id committed. One writer per process gives that on SQLite. On PostgreSQL, several processes
draw ids from one sequence and commit in any order, so a transaction that logs events takes
a transaction-level advisory lock just before inserting them, and holds it until its commit
is visible: event-logging commits happen one at a time, in the order their ids were drawn
(docs/design.md, "Event log across processes"; the alternatives weighed are in
docs/scale-out-plan.md).

Writers queue rows with `log_events`; `Database.write` calls `write_events` after the rest of
the transaction is flushed and before the commit, so no row lock is taken while the event
lock is held (it is always the last lock: it cannot be part of a deadlock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Connection
from sqlmodel import Session

from gateway.storage.models import EventRow
from gateway.storage.raw import Sql, fetch, insert_into, run_many

__all__ = ["EVENT_LOCK_KEY", "log_events", "write_events"]

_QUEUED = "smsgw.events"  # session.info key: the rows to insert at commit
_INSERT_EVENT = insert_into(EventRow.__table__)  # type: ignore[attr-defined]
# pg_advisory_xact_lock(bigint): "smsgw" in ASCII, then 1 for the event log.
EVENT_LOCK_KEY = 0x736D736777_01
_LOCK = Sql("SELECT pg_advisory_xact_lock(:key)")


def log_events(s: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Queue event rows (the `event` table's columns, without id) for this transaction."""
    s.info.setdefault(_QUEUED, []).extend(rows)


def write_events(s: Session) -> list[Mapping[str, Any]]:
    """Insert the queued rows, in the order they were queued, as one executemany; on
    PostgreSQL under the event lock. Call with everything else already flushed. Returns the
    rows (for the commit's observer)."""
    rows: list[Mapping[str, Any]] | None = s.info.pop(_QUEUED, None)
    if not rows:
        return []
    connection: Connection = s.connection()
    if connection.dialect.name == "postgresql":
        fetch(connection, _LOCK, {"key": EVENT_LOCK_KEY})
    run_many(connection, _INSERT_EVENT, rows)
    return rows
