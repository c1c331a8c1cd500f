"""Plain rows and a batched unit of work for the message hot paths (issue 15, DESIGN "Runtime shape").

SQLAlchemy's ORM costs ~0.3 ms to build a row object and more to track and flush it; on the
message path (dispatch, receipts, session open and close) that was 70-80 % of the server's CPU.
Here rows are read into slotted dataclasses that carry the same attribute names as
`MessageRow` / `RecipientRow` (so the state logic works on either), and `Writes` collects
what changed and writes it at the end as ONE executemany per statement kind. The hot
statements are written once as SQL and run on the DB-API cursor of the transaction
(gateway.storage.raw: Core's per-statement set-up cost more than SQLite takes to run
them); their values go through the same SQLAlchemy type processors as Core's, so the ORM
and Core read back what they write. Cold paths still pass Core expressions (`load_messages`,
`Writes.execute`).

`Writes` stands in for the ORM `Session` in the repository's transactions: `add` of a plain
row marks it changed, `event` / `dispatch_log` queue inserts, and any query (`exec`,
`execute`, `fetch`, `run`, `get`) first writes what is queued, as the ORM's autoflush would, so a query
never misses a change made earlier in the same transaction. ORM rows still go to the
session (cold paths keep using them); the webhook outbox reads `info` and `exec` through it.

Row locks (issue 16): several processes may change the same messages on PostgreSQL (an API's
cancel, a bridge's round or receipts, a worker's expiry sweep). Every read of `message` rows
made to change them (`messages_by_id`, `select_messages`, `load_messages` and `get` through
`Writes`) locks them (`FOR UPDATE`, in id order) until the commit, so a second transaction
waits and then reads what the first stored: no change is lost and no state moves back.
Recipients are changed only under their message's lock. SQLite has one writer per database
file and takes no row locks; a deadlock between two processes' groups is retried
(`gateway.storage.engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from gateway.storage.event_log import log_events
from gateway.storage.models import DispatchLogRow, MessageRow, RecipientRow
from gateway.storage.raw import Sql, fetch, insert_into, run, run_many, types_of

__all__ = [
    "MSG_NAMES", "RCP_NAMES", "Msg", "Rcp", "Writes", "load_messages", "messages_by_id", "load_recipients",
    "in_writes", "messages_sql", "select_messages", "fetch_on",
]

T = TypeVar("T")

_M = MessageRow.__table__.c  # type: ignore[attr-defined]
_R = RecipientRow.__table__.c  # type: ignore[attr-defined]


@dataclass(slots=True, eq=False)
class Msg:
    """A `message` row as plain data (same attribute names as MessageRow)."""

    id: str
    owner_id: str
    idempotency_key: str
    content_hash: str
    device_id: str | None
    pinned: bool
    ever_dispatched: bool
    drop_pending: bool
    sim_number: int
    text: str | None
    data: bytes | None
    port: int
    is_encrypted: bool
    priority: int
    valid_until: datetime | None
    schedule_at: datetime | None
    with_delivery_report: bool
    state: int
    parts: int
    encoding: str
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True, eq=False)
class Rcp:
    """A `recipient` row as plain data (same attribute names as RecipientRow)."""

    message_id: str
    idx: int
    phone_number: str
    state: int
    error: str
    updated_at: datetime
    attempt: int
    session_id: str
    sim: int
    not_before: datetime | None
    paced_until: datetime | None
    parts_sent: int
    parts_delivered: int
    last_error: str


MSG_NAMES = tuple(f.name for f in fields(Msg))  # the columns, as attribute names
RCP_NAMES = tuple(f.name for f in fields(Rcp))
_MSG_COLUMNS = [_M[name] for name in MSG_NAMES]
_RCP_COLUMNS = [_R[name] for name in RCP_NAMES]

# What the state logic may change on a row: written back whole, one statement per table.
_MSG_MUTABLE = ("device_id", "ever_dispatched", "drop_pending", "state", "updated_at")
_RCP_MUTABLE = (
    "state", "error", "updated_at", "attempt", "session_id", "sim", "not_before", "paced_until",
    "parts_sent", "parts_delivered", "last_error",
)

# The hot paths' statements run on the DB-API cursor (gateway.storage.raw): Core's
# execution context cost more than SQLite takes to run them. Values go through the
# columns' SQLAlchemy type processors both ways, so rows read back as Core reads them.
_MESSAGE, _RECIPIENT = MessageRow.__table__, RecipientRow.__table__  # type: ignore[attr-defined]
SELECT_MESSAGES = f"SELECT {', '.join(MSG_NAMES)} FROM message"
MESSAGE_TYPES = tuple(_M[name].type for name in MSG_NAMES)
_UPDATE_MSG = Sql(
    f"UPDATE message SET {', '.join(f'{n} = :{n}' for n in _MSG_MUTABLE)} WHERE id = :k_id",
    binds=types_of(_MESSAGE, _MSG_MUTABLE),
)
_UPDATE_RCP = Sql(
    f"UPDATE recipient SET {', '.join(f'{n} = :{n}' for n in _RCP_MUTABLE)} WHERE message_id = :k_message_id AND idx = :k_idx",
    binds=types_of(_RECIPIENT, _RCP_MUTABLE),
)
_MSGS_BY_ID = Sql(
    f"{SELECT_MESSAGES} WHERE id IN (:ids) ORDER BY id", expand=["ids"], results=MESSAGE_TYPES, for_update=True
)
_MSGS_BY_ID_ON = Sql(
    f"{SELECT_MESSAGES} WHERE id IN (:ids) AND device_id = :device_id ORDER BY id",
    expand=["ids"], results=MESSAGE_TYPES, for_update=True,
)
_RCPS_BY_MESSAGE = Sql(
    f"SELECT {', '.join(RCP_NAMES)} FROM recipient WHERE message_id IN (:ids) ORDER BY message_id, idx",
    expand=["ids"],
    results=[_R[name].type for name in RCP_NAMES],
)
_INSERT_LOG = insert_into(DispatchLogRow.__table__)  # type: ignore[attr-defined]


def messages_sql(where: str, *, limit: str = "", **kwargs: Any) -> Sql:
    """A `message` read for `select_messages`, in id order, its rows locked (see "Row locks"
    in the module docstring): `where` is what follows `FROM message` (with its `:name`
    parameters; `binds` / `expand` as for `Sql`), `limit` e.g. "LIMIT :limit"."""
    return Sql(f"{SELECT_MESSAGES} {where} ORDER BY id {limit}", results=MESSAGE_TYPES, for_update=True, **kwargs)


def select_messages(s: Session | Writes, sql: Sql, params: dict[str, Any]) -> list[Msg]:
    """`message` rows read with a statement of `messages_sql`."""
    return [Msg(*row) for row in fetch_on(s, sql, params)]


def load_messages(s: Session | Writes, *where: Any, order_by: Sequence[Any] = (), limit: int | None = None) -> list[Msg]:
    """`message` rows matching `where` (Core expressions on MessageRow columns; the cold
    paths: the hot ones use `select_messages`)."""
    q = select(*_MSG_COLUMNS).where(*where)
    if isinstance(s, Writes):
        q = q.with_for_update()  # "Row locks" (nothing on SQLite)
    if order_by:
        q = q.order_by(*order_by)
    if limit is not None:
        q = q.limit(limit)
    return [Msg(*row) for row in s.execute(q)] if isinstance(s, Writes) else [Msg(*row) for row in s.connection().execute(q)]


def messages_by_id(s: Session | Writes, message_ids: Iterable[str], device_id: str | None = None) -> list[Msg]:
    """These `message` rows (only those routed to `device_id` when given)."""
    ids = list(message_ids)
    if not ids:
        return []
    q, params = (_MSGS_BY_ID, {"ids": ids}) if device_id is None else (_MSGS_BY_ID_ON, {"ids": ids, "device_id": device_id})
    return [Msg(*row) for row in fetch_on(s, q, params)]


def load_recipients(s: Session | Writes, message_ids: Iterable[str]) -> dict[str, list[Rcp]]:
    """Every recipient of these messages, by message, in index order."""
    ids = list(message_ids)
    out: dict[str, list[Rcp]] = {i: [] for i in ids}
    if ids:
        for row in fetch_on(s, _RCPS_BY_MESSAGE, {"ids": ids}):
            out[row[0]].append(Rcp(*row))
    return out


def fetch_on(s: Session | Writes, sql: Sql, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows of a raw SELECT in the transaction of `s` (a Writes writes what it queued first)."""
    return s.fetch(sql, params) if isinstance(s, Writes) else fetch(s.connection(), sql, params)


class Writes:
    """The write side of one transaction on the hot paths: changed plain rows and queued
    inserts, written as one executemany per statement kind (see the module docstring)."""

    __slots__ = ("s", "_msgs", "_rcps", "_events", "_logs", "_conn")

    def __init__(self, s: Session) -> None:
        self.s = s
        self._msgs: dict[int, Msg] = {}
        self._rcps: dict[int, Rcp] = {}
        self._events: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []
        self._conn: Connection | None = None  # the transaction's (Session.connection() costs ~25 µs a call)

    @property
    def info(self) -> dict[Any, Any]:
        return self.s.info

    def add(self, obj: Any) -> None:
        """Mark a plain row changed; an ORM row goes to the session as before."""
        if isinstance(obj, Rcp):
            self._rcps[id(obj)] = obj
        elif isinstance(obj, Msg):
            self._msgs[id(obj)] = obj
        else:
            self.s.add(obj)

    def take_rows(self) -> tuple[list[Msg], list[Rcp]]:
        """The changed plain rows, taken out unwritten: rows not stored yet, which their
        caller inserts as they are now (a claim at create: `_Adder.replace_last`)."""
        msgs, rcps = list(self._msgs.values()), list(self._rcps.values())
        self._msgs.clear()
        self._rcps.clear()
        return msgs, rcps

    def event(self, values: dict[str, Any]) -> None:
        """Queue one event-log row (the `event` table's columns, without id)."""
        self._events.append(values)

    def dispatch_log(self, values: dict[str, Any]) -> None:
        """Queue one dispatch-log row (pacing history)."""
        self._logs.append(values)

    def exec(self, q: Any) -> Any:
        self.flush()
        return self.s.exec(q)

    def execute(self, q: Any, params: Any = None) -> Any:
        """A Core statement on the transaction's connection (the ORM's Session.execute costs
        more than the statement on these paths), after writing what is queued and whatever
        ORM changes are pending (autoflush)."""
        connection = self._connection()
        return connection.execute(q, params) if params is not None else connection.execute(q)

    def fetch(self, sql: Sql, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """A raw SELECT (gateway.storage.raw), after the autoflush `execute` does."""
        return fetch(self._connection(), sql, params)

    def run(self, sql: Sql, params: dict[str, Any] | None = None) -> int:
        """A raw INSERT / UPDATE / DELETE after the autoflush; returns its rowcount."""
        return run(self._connection(), sql, params)

    def run_many(self, sql: Sql, rows: Sequence[dict[str, Any]]) -> None:
        """A raw statement as one executemany, after the autoflush."""
        run_many(self._connection(), sql, rows)

    def _connection(self) -> Connection:
        """The transaction's connection, once what is queued and whatever ORM changes are
        pending are written (autoflush)."""
        self.flush()
        if not self.s._is_clean():
            self.s.flush()
        return self._transaction()

    def _transaction(self) -> Connection:
        connection = self._conn
        if connection is None:
            connection = self._conn = self.s.connection()
        return connection

    def get(self, model: Any, key: Any) -> Any:
        """The row, locked for this transaction ("Row locks"; read again if the session had it)."""
        self.flush()
        return self.s.get(model, key, with_for_update=True)

    def flush(self) -> None:
        """Write what is queued: updates first (inserts may refer to the rows), one statement each."""
        if not (self._msgs or self._rcps or self._events or self._logs):
            return
        connection = self._transaction()
        if self._msgs:
            run_many(
                connection,
                _UPDATE_MSG,
                [{"k_id": m.id, **{n: getattr(m, n) for n in _MSG_MUTABLE}} for m in self._msgs.values()],
            )
            self._msgs.clear()
        if self._rcps:
            run_many(
                connection,
                _UPDATE_RCP,
                [
                    {"k_message_id": r.message_id, "k_idx": r.idx, **{n: getattr(r, n) for n in _RCP_MUTABLE}}
                    for r in self._rcps.values()
                ],
            )
            self._rcps.clear()
        if self._events:
            log_events(self.s, self._events)  # inserted last, at commit (gateway.storage.event_log)
            self._events = []
        if self._logs:
            run_many(connection, _INSERT_LOG, self._logs)
            self._logs = []


def in_writes(fn: Callable[[Writes], T]) -> Callable[[Session], T]:
    """Adapt a transaction body written against `Writes` to `Database.group` / `write`.

    After the body: what it queued is written, the ORM's own changes are flushed, and the
    ORM rows are expired, because a group commit shares one session among several bodies
    and a later body must not be handed a row an earlier one changed behind the ORM's back.
    """

    def run(s: Session) -> T:
        w = Writes(s)
        result = fn(w)
        w.flush()
        s.flush()
        s.expire_all()
        return result

    return run
