"""The hot path's raw DB-API statements (gateway.storage.raw, gateway.messages.rows) store
and read exactly what SQLModel / Core do, on SQLite and on PostgreSQL (issue 15).

A message and its recipients written raw read back the same through the ORM, and written
through the ORM read back the same raw, as Core reads them: aware UTC datetimes (None
stays None), bools, ints, bytes. On SQLite the stored text of a datetime is SQLAlchemy's
own format either way, so SQL comparisons (`valid_until <= :now`) and the ORM agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import astuple, fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from gateway.devices.repository import DeviceRepository
from gateway.messages.repository import MessageRepository
from gateway.messages.rows import Msg, Rcp, Writes, load_messages, load_recipients, messages_by_id
from gateway.storage.engine import Database
from gateway.storage.models import EventRow, MessageRow, RecipientRow
from gateway.storage.raw import Sql, fetch, insert_into, run, run_many
from gateway.types import State
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import T0, UNPACED

_M = MessageRow.__table__.c  # type: ignore[attr-defined]
_INSERT_MESSAGE = insert_into(MessageRow.__table__)  # type: ignore[attr-defined]
_INSERT_RECIPIENT = insert_into(RecipientRow.__table__)  # type: ignore[attr-defined]
_DATA = bytes(range(256)) + b"\x00end"
# Not UTC on purpose: stored as UTC, read back as aware UTC.
_PLUS2 = timezone(timedelta(hours=2))


class Store:
    def __init__(self, url: str) -> None:
        self.db = Database(url, sqlite_synchronous="NORMAL")
        self.db.migrate()  # the migrations' column types, as in production
        self.owner = create_owner(self.db, "owner", T0)
        devices = DeviceRepository(self.db)
        code, _ = devices.create_pairing_code(self.owner, "phone", timedelta(minutes=5), T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        self.device = redeemed[0].device_id


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'smsgw.db'}")
        yield s
        s.db.close()
        return
    with throwaway_database() as url:
        s = Store(url)
        yield s
        s.db.close()


def _message(store: Store, mid: str, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": mid,
        "owner_id": store.owner,
        "idempotency_key": f"key-{mid}",
        "content_hash": "h",
        "device_id": store.device,
        "pinned": True,
        "ever_dispatched": False,
        "drop_pending": True,
        "sim_number": 2,
        "text": None,
        "data": _DATA,
        "port": 2948,
        "is_encrypted": True,
        "priority": -3,
        "valid_until": None,
        "schedule_at": datetime(2030, 1, 1, 14, 0, 0, 123456, tzinfo=_PLUS2),
        "with_delivery_report": False,
        "state": int(State.PENDING),
        "parts": 3,
        "encoding": "UCS_2",
        "created_at": T0,
        "updated_at": T0 + timedelta(microseconds=1),
    }
    values.update(over)
    return values


def _recipients(mid: str) -> list[dict[str, Any]]:
    return [
        # Left out: the columns' defaults, as a Core insert gives them.
        {"message_id": mid, "idx": 0, "phone_number": "+14155550000", "state": int(State.PENDING), "updated_at": T0},
        {
            "message_id": mid,
            "idx": 1,
            "phone_number": "+14155550001",
            "state": int(State.FAILED),
            "error": "e",
            "updated_at": T0.astimezone(_PLUS2),
            "attempt": 3,
            "session_id": "s",
            "sim": 2,
            "not_before": None,
            "paced_until": datetime(2030, 2, 3, 4, 5, 6, 7, tzinfo=UTC),
            "parts_sent": 2,
            "parts_delivered": 1,
            "last_error": "boom",
        },
    ]


def _utc(v: Any) -> Any:
    return v.astimezone(UTC) if isinstance(v, datetime) else v


def _assert_same_value(got: Any, want: Any, what: str) -> None:
    want = _utc(want)
    assert got == want, what
    assert type(got) is type(want), f"{what}: {type(got).__name__}, not {type(want).__name__}"
    if isinstance(got, datetime):
        assert got.tzinfo is not None and got.utcoffset() == timedelta(0), what


def test_raw_writes_read_back_through_sqlmodel(store: Store) -> None:
    msg = _message(store, "01RAW")
    with store.db.write() as s:
        run(s.connection(), _INSERT_MESSAGE, msg)
        run_many(s.connection(), _INSERT_RECIPIENT, _recipients("01RAW"))
    with store.db.read() as s:
        row = s.get(MessageRow, "01RAW")
        assert row is not None
        for name, want in msg.items():
            _assert_same_value(getattr(row, name), want, name)
        rs = s.scalars(select(RecipientRow).where(RecipientRow.message_id == "01RAW").order_by(RecipientRow.idx)).all()
    defaults = {"error": "", "attempt": 1, "session_id": "", "sim": 0, "not_before": None, "paced_until": None,
                "parts_sent": 0, "parts_delivered": 0, "last_error": ""}
    for r, want in zip(rs, _recipients("01RAW"), strict=True):
        for name, value in {**defaults, **want}.items():
            _assert_same_value(getattr(r, name), value, f"recipient {r.idx} {name}")


def test_sqlmodel_writes_read_back_raw_as_core_reads_them(store: Store) -> None:
    with store.db.write() as s:
        s.add(MessageRow(**_message(store, "01ORM", valid_until=T0 + timedelta(hours=1), schedule_at=None, text="hi", data=None)))
        s.add(MessageRow(**_message(store, "01ORM2", pinned=False, ever_dispatched=True, drop_pending=False)))
        s.flush()
        for values in _recipients("01ORM") + _recipients("01ORM2"):
            s.add(RecipientRow(**values))
    with store.db.read() as s:
        raw = sorted(messages_by_id(s, ["01ORM", "01ORM2"]), key=lambda m: m.id)
        core = sorted(load_messages(s, _M.id.in_(["01ORM", "01ORM2"])), key=lambda m: m.id)
        orm = [s.get(MessageRow, "01ORM"), s.get(MessageRow, "01ORM2")]
        raw_rcps = load_recipients(s, ["01ORM", "01ORM2"])
        orm_rcps = s.scalars(select(RecipientRow).order_by(RecipientRow.message_id, RecipientRow.idx)).all()
    for r, c, o in zip(raw, core, orm, strict=True):
        for f in fields(Msg):
            _assert_same_value(getattr(r, f.name), getattr(c, f.name), f"core {f.name}")
            _assert_same_value(getattr(r, f.name), getattr(o, f.name), f"orm {f.name}")
    assert raw[0].valid_until == T0 + timedelta(hours=1) and raw[0].schedule_at is None and raw[0].data is None
    assert raw[1].data == _DATA and raw[1].text is None
    flat = raw_rcps["01ORM"] + raw_rcps["01ORM2"]
    assert [(r.message_id, r.idx) for r in flat] == [(r.message_id, r.idx) for r in orm_rcps]
    for r, o in zip(flat, orm_rcps, strict=True):
        for f in fields(Rcp):
            _assert_same_value(getattr(r, f.name), getattr(o, f.name), f"recipient {f.name}")


def test_writes_flush_updates_and_inserts_read_back_through_sqlmodel(store: Store) -> None:
    with store.db.write() as s:
        run(s.connection(), _INSERT_MESSAGE, _message(store, "01UPD"))
        run_many(s.connection(), _INSERT_RECIPIENT, _recipients("01UPD"))
    later = datetime(2031, 6, 7, 8, 9, 10, 999999, tzinfo=_PLUS2)
    with store.db.write() as s:
        w = Writes(s)
        [m] = messages_by_id(w, ["01UPD"], store.device)
        rs = load_recipients(w, ["01UPD"])["01UPD"]
        m.device_id, m.ever_dispatched, m.drop_pending, m.state, m.updated_at = None, True, False, int(State.SENT), later
        rs[0].not_before, rs[0].paced_until, rs[0].updated_at, rs[0].state = later, None, later, int(State.SENT)
        rs[1].paced_until, rs[1].not_before = None, later
        for x in (m, *rs):
            w.add(x)
        w.event({"owner_id": store.owner, "message_id": "01UPD", "recipient_index": 0, "state": 4, "message_state": 4,
                 "error": "", "created_at": later})  # kind and inbound_id: the columns' defaults
        # A query through the Writes sees its own queued writes (autoflush).
        [again] = messages_by_id(w, ["01UPD"])
        assert again.updated_at == later and again.device_id is None and again.ever_dispatched is True
        w.flush()
    with store.db.read() as s:
        row = s.get(MessageRow, "01UPD")
        assert row is not None
        assert (row.device_id, row.ever_dispatched, row.drop_pending, row.state) == (None, True, False, int(State.SENT))
        _assert_same_value(row.updated_at, later, "updated_at")
        r0, r1 = s.scalars(select(RecipientRow).where(RecipientRow.message_id == "01UPD").order_by(RecipientRow.idx))
        _assert_same_value(r0.not_before, later, "not_before")
        assert r0.paced_until is None and r1.paced_until is None
        _assert_same_value(r1.not_before, later, "not_before")
        [e] = s.scalars(select(EventRow).where(EventRow.message_id == "01UPD")).all()
        assert (e.kind, e.inbound_id, e.recipient_index) == ("message", "", 0)
        _assert_same_value(e.created_at, later, "created_at")


def test_datetime_comparisons_in_sql_agree_with_the_values(store: Store) -> None:
    """`valid_until <= :now` bound raw compares as the stored values do (on SQLite: the same text format)."""
    with store.db.write() as s:
        run(s.connection(), _INSERT_MESSAGE, _message(store, "01A", valid_until=T0 + timedelta(microseconds=5)))
        s.add(MessageRow(**_message(store, "01B", idempotency_key="kb", valid_until=T0 + timedelta(microseconds=6))))
    due = Sql("SELECT id FROM message WHERE valid_until <= :now ORDER BY id", binds={"now": _M.valid_until.type})
    with store.db.read() as s:
        for micros, want in ((4, []), (5, ["01A"]), (6, ["01A", "01B"])):
            at = (T0 + timedelta(microseconds=micros)).astimezone(_PLUS2)
            assert [i for (i,) in fetch(s.connection(), due, {"now": at})] == want
    if store.db.is_sqlite:
        with store.db.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT id, valid_until FROM message ORDER BY id").all()
        assert stored == [("01A", "2030-01-01 12:00:00.000005"), ("01B", "2030-01-01 12:00:00.000006")]


def test_engine_events_fire_and_errors_are_sqlalchemys(store: Store) -> None:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(store.db.engine, "before_cursor_execute", record)
    try:
        with store.db.write() as s:
            run(s.connection(), _INSERT_MESSAGE, _message(store, "01E"))
    finally:
        event.remove(store.db.engine, "before_cursor_execute", record)
    assert any(q.startswith("INSERT INTO message") for q in seen)
    with pytest.raises(IntegrityError):  # the same key again: what `create` catches
        with store.db.write() as s:
            run(s.connection(), _INSERT_MESSAGE, _message(store, "01E2", idempotency_key="key-01E"))
    with store.db.read() as s:
        assert [m.id for m in messages_by_id(s, ["01E", "01E2"])] == ["01E"]


def test_the_repository_round_trip_on_the_raw_path(store: Store) -> None:
    """A message through create, a dispatch round, receipts, expiry and drops: the records
    the repository answers equal what the ORM reads."""
    from gateway.config import SchedulerSettings
    from gateway.messages.records import ReceiptUpdate
    from tests.unit.gateway.test_gw_repository import new_message

    paced = SchedulerSettings(sim_parts_per_minute=20, sim_min_interval=0, phone_parts_per_minute=30,
                              sim_recipients_per_month=1000)
    repo = MessageRepository(store.db, paced)
    rec, created = repo.create(store.owner, new_message(2, device_id=store.device), T0)
    assert created
    assert repo.create(store.owner, new_message(2, key=rec.idempotency_key, device_id=store.device), T0) == (rec, False)
    expiring, _ = repo.create(store.owner, new_message(1, device_id=store.device, valid_until=T0 + timedelta(seconds=30)), T0)
    queue, batch = repo.dispatch_round(None, store.device, "s1", 8, T0, [])
    assert sorted(u.message.id for u in batch.units) == sorted([rec.id, expiring.id])
    queue.busy = False  # type: ignore[union-attr]
    # The pacing history (dispatch log, month's numbers) is read back on the next full load.
    queue2, _ = repo.dispatch_round(None, store.device, "s1", 8, T0 + timedelta(seconds=1), [])
    assert queue2 is not None and queue2.history is not None
    receipts = [ReceiptUpdate(rec.id, st, i, attempt=1) for st in (State.ACCEPTED, State.SENT, State.DELIVERED) for i in (0, 1)]
    repo.apply_receipts_checked(store.device, receipts, T0 + timedelta(seconds=2))
    assert repo.expire_due(T0 + timedelta(minutes=1)) == {store.device}
    assert repo.final_states(store.device, [rec.id, expiring.id]) == {expiring.id: State.EXPIRED}
    _, batch = repo.dispatch_round(None, store.device, "s1", 8, T0 + timedelta(minutes=2), [])
    assert batch.drops == {expiring.id: State.EXPIRED}  # flagged once, then unflagged
    _, batch = repo.dispatch_round(None, store.device, "s1", 8, T0 + timedelta(minutes=2), [])
    assert batch.drops == {}
    got = repo.get(store.owner, rec.id)
    with store.db.read() as s:
        row = s.get(MessageRow, rec.id)
        assert row is not None and row.state == int(got.state) == int(State.DELIVERED)
        assert row.ever_dispatched is True and row.drop_pending is False
        assert [astuple(r)[:4] for r in got.recipients] == [
            (r.idx, r.phone_number, State(r.state), r.error)
            for r in s.scalars(select(RecipientRow).where(RecipientRow.message_id == rec.id).order_by(RecipientRow.idx))
        ]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_executemany_args_equal_one_by_one_args(dialect: str) -> None:
    """`args_many` (a column at a time, a datetime converted once per distinct value) gives
    each row exactly what `args` gives it alone: shared and distinct datetimes, None, naive
    and offset values, a column left to its default."""
    from sqlalchemy.dialects import postgresql, sqlite

    d = sqlite.pysqlite.dialect() if dialect == "sqlite" else postgresql.psycopg.dialect()
    form = _INSERT_MESSAGE.form(d)
    base = {c.name: None for c in MessageRow.__table__.c}  # type: ignore[attr-defined]
    shared = datetime(2026, 12, 6, 10, 0, 0, 123456, tzinfo=UTC)
    rows = []
    for i in range(6):
        row = {**base, "id": f"m{i}", "owner_id": "o", "idempotency_key": f"k{i}", "created_at": shared,
               "updated_at": shared + timedelta(microseconds=i % 2), "schedule_at": None if i % 3 else shared.astimezone(_PLUS2),
               "valid_until": shared + timedelta(days=i), "pinned": bool(i % 2)}
        if i == 4:
            del row["valid_until"]  # nullable: its default, None
        if i == 5:
            row["created_at"] = shared.astimezone(_PLUS2)  # the same instant, equal to `shared`
        rows.append(row)
    assert form.args_many(rows) == [tuple(form.args(r)) for r in rows]
