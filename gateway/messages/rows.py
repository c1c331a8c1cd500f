"""Plain rows and a batched unit of work for the message hot paths (issue 15, DESIGN "Runtime shape").

SQLAlchemy's ORM costs ~0.3 ms to build a row object and more to track and flush it; on the
message path (dispatch, receipts, session open and close) that was 70-80 % of the server's CPU.
Here rows are read with Core into slotted dataclasses that carry the same attribute names as
`MessageRow` / `RecipientRow` (so the state logic works on either), and `Writes` collects
what changed and writes it at the end as ONE executemany per statement kind, each statement
compiled once (SQLAlchemy caches the compiled form of these module-level statements).

`Writes` stands in for the ORM `Session` in the repository's transactions: `add` of a plain
row marks it changed, `event` / `dispatch_log` queue inserts, and any query (`exec`,
`execute`, `get`) first writes what is queued, as the ORM's autoflush would, so a query
never misses a change made earlier in the same transaction. ORM rows still go to the
session (cold paths keep using them); the webhook outbox reads `info` and `exec` through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert, select, update
from sqlmodel import Session

from gateway.storage.models import DispatchLogRow, EventRow, MessageRow, RecipientRow

__all__ = ["Msg", "Rcp", "Writes", "load_messages", "messages_by_id", "load_recipients", "in_writes"]

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


_MSG_COLUMNS = [_M[f.name] for f in fields(Msg)]
_RCP_COLUMNS = [_R[f.name] for f in fields(Rcp)]

# What the state logic may change on a row: written back whole, one statement per table.
_MSG_MUTABLE = ("device_id", "ever_dispatched", "drop_pending", "state", "updated_at")
_RCP_MUTABLE = (
    "state", "error", "updated_at", "attempt", "session_id", "sim", "not_before", "paced_until",
    "parts_sent", "parts_delivered", "last_error",
)
_UPDATE_MSG = (
    update(MessageRow.__table__)  # type: ignore[arg-type]
    .where(_M.id == bindparam("k_id"))
    .values({name: bindparam(name) for name in _MSG_MUTABLE})
)
_UPDATE_RCP = (
    update(RecipientRow.__table__)  # type: ignore[arg-type]
    .where(_R.message_id == bindparam("k_message_id"), _R.idx == bindparam("k_idx"))
    .values({name: bindparam(name) for name in _RCP_MUTABLE})
)
# Built once: a statement built per call costs more in SQLAlchemy (construction, cache key)
# than SQLite takes to run it; these compile once and run with the ids expanded.
_MSGS_BY_ID = select(*_MSG_COLUMNS).where(_M.id.in_(bindparam("ids", expanding=True)))
_MSGS_BY_ID_ON = _MSGS_BY_ID.where(_M.device_id == bindparam("device_id"))
_RCPS_BY_MESSAGE = (
    select(*_RCP_COLUMNS).where(_R.message_id.in_(bindparam("ids", expanding=True))).order_by(_R.message_id, _R.idx)
)
_INSERT_EVENT = insert(EventRow.__table__)  # type: ignore[arg-type]
_INSERT_LOG = insert(DispatchLogRow.__table__)  # type: ignore[arg-type]


def load_messages(s: Session | Writes, *where: Any, order_by: Sequence[Any] = (), limit: int | None = None) -> list[Msg]:
    """`message` rows matching `where` (Core expressions on MessageRow columns)."""
    q = select(*_MSG_COLUMNS).where(*where)
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
    return [Msg(*row) for row in _run(s, q, params)]


def load_recipients(s: Session | Writes, message_ids: Iterable[str]) -> dict[str, list[Rcp]]:
    """Every recipient of these messages, by message, in index order."""
    ids = list(message_ids)
    out: dict[str, list[Rcp]] = {i: [] for i in ids}
    if ids:
        for row in _run(s, _RCPS_BY_MESSAGE, {"ids": ids}):
            out[row[0]].append(Rcp(*row))
    return out


def _run(s: Session | Writes, q: Any, params: dict[str, Any]) -> Any:
    return s.execute(q, params) if isinstance(s, Writes) else s.connection().execute(q, params)


class Writes:
    """The write side of one transaction on the hot paths: changed plain rows and queued
    inserts, written as one executemany per statement kind (see the module docstring)."""

    __slots__ = ("s", "_msgs", "_rcps", "_events", "_logs")

    def __init__(self, s: Session) -> None:
        self.s = s
        self._msgs: dict[int, Msg] = {}
        self._rcps: dict[int, Rcp] = {}
        self._events: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []

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
        self.flush()
        if not self.s._is_clean():
            self.s.flush()
        connection = self.s.connection()
        return connection.execute(q, params) if params is not None else connection.execute(q)

    def get(self, model: Any, key: Any) -> Any:
        self.flush()
        return self.s.get(model, key)

    def flush(self) -> None:
        """Write what is queued: updates first (inserts may refer to the rows), one statement each."""
        if not (self._msgs or self._rcps or self._events or self._logs):
            return
        connection = self.s.connection()
        if self._msgs:
            connection.execute(
                _UPDATE_MSG, [{"k_id": m.id, **{n: getattr(m, n) for n in _MSG_MUTABLE}} for m in self._msgs.values()]
            )
            self._msgs.clear()
        if self._rcps:
            connection.execute(
                _UPDATE_RCP,
                [
                    {"k_message_id": r.message_id, "k_idx": r.idx, **{n: getattr(r, n) for n in _RCP_MUTABLE}}
                    for r in self._rcps.values()
                ],
            )
            self._rcps.clear()
        if self._events:
            connection.execute(_INSERT_EVENT, self._events)
            self._events = []
        if self._logs:
            connection.execute(_INSERT_LOG, self._logs)
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
