"""MessageRepository.create_many (SendMessages' storage): one transaction per batch, one
outcome per item in order, each what `create` would have answered for that item alone.

On SQLite (a real file) and, for the lost race on a key, on PostgreSQL too.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func
from sqlmodel import select

from gateway.devices.repository import DeviceRepository
from gateway.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from gateway.messages.records import MessageFilter, SendOutcome
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.storage.models import DailyUsageRow, EventRow, MessageRow, RecipientRow
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import UNPACED, T0, World, new_message, world  # noqa: F401 (the fixture)

ALL = MessageFilter()




def count(db: Database, table: Any) -> int:
    with db.read() as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def kinds(outcomes: list[SendOutcome]) -> list[str]:
    """Each outcome as 'new', 'replay' or the error's class name."""
    return [
        type(o.error).__name__ if o.error is not None else ("new" if o.created else "replay") for o in outcomes
    ]


def test_mixed_batch_answers_each_item_in_order(world: World) -> None:
    repo, owner = world.repo, world.owner
    old, _ = repo.create(owner, new_message(2, key="old"), T0)
    foreign = world.pair(create_owner(world.db, "other", T0))
    items = [
        new_message(1, key="a"),
        new_message(2, key="old"),  # same content: the stored message
        new_message(2, key="old", text="other text"),  # same key, other content
        new_message(1, key="b", device_id=foreign),  # another owner's phone
        new_message(3, key="c"),
    ]
    outcomes = repo.create_many(owner, items, T0 + timedelta(seconds=1))
    assert kinds(outcomes) == ["new", "replay", "AlreadyExists", "InvalidArgument", "new"]
    assert outcomes[1].message == repo.get(owner, old.id)
    assert old.id in str(outcomes[2].error)
    assert isinstance(outcomes[3].error, InvalidArgument)
    assert outcomes[3].error.violations[0][0] == "device_id"  # the API puts it in messages[3]
    new_ids = [o.message.id for o in outcomes if o.created and o.message]
    assert new_ids == sorted(new_ids), "ids (FIFO order) follow the request order"
    listed = {m.idempotency_key for m in repo.list(owner, ALL, limit=10, before_id=None)}
    assert listed == {"old", "a", "c"}
    # Every stored recipient has its first event, and nothing else was logged.
    assert count(world.db, EventRow) == 2 + 1 + 3


def test_records_are_what_a_read_returns(world: World) -> None:
    """The batch builds its records from the values it inserts: they must equal the rows."""
    items = [
        new_message(2, key="plain"),
        new_message(1, key="pinned", device_id=world.device_ids[1], priority=5, sim_number=2),
        new_message(
            1, key="timed", valid_until=T0 + timedelta(hours=2), schedule_at=T0 + timedelta(hours=1),
            with_delivery_report=False,
        ),
    ]
    outcomes = world.repo.create_many(world.owner, items, T0)
    for o in outcomes:
        assert o.created and o.message is not None
        assert o.message == world.repo.get(world.owner, o.message.id)
    assert outcomes[1].message is not None and outcomes[1].message.device_id == world.device_ids[1]


def test_a_key_twice_in_one_batch_is_stored_once(world: World) -> None:
    """The API refuses such a call item by item; storage still answers like sequential sends."""
    outcomes = world.repo.create_many(
        world.owner, [new_message(key="k"), new_message(key="k"), new_message(key="k", text="else")], T0
    )
    assert kinds(outcomes) == ["new", "replay", "AlreadyExists"]
    assert outcomes[0].message == outcomes[1].message
    assert count(world.db, MessageRow) == 1


def test_daily_cap_per_item_later_items_that_fit_are_stored(world: World) -> None:
    repo, owner = world.repo, world.owner
    first, _ = repo.create(owner, new_message(1, key="early"), T0, daily_segments=6)
    items = [
        new_message(2, key="two"),  # 1 + 2 = 3
        new_message(1, key="tall", parts=3),  # 3 + 3 = 6: fits exactly
        new_message(1, key="over"),  # 7 > 6: refused
        new_message(1, key="early"),  # a replay is answered even at the cap
    ]
    outcomes = repo.create_many(owner, items, T0, daily_segments=6)
    assert kinds(outcomes) == ["new", "new", "ResourceExhausted", "replay"]
    error = outcomes[2].error
    assert isinstance(error, ResourceExhausted) and error.subject == f"owner:{owner}" and error.retry_after > 0
    assert outcomes[3].message is not None and outcomes[3].message.id == first.id
    with world.db.read() as s:
        assert s.get(DailyUsageRow, (owner, T0.date().isoformat())).segments == 6  # type: ignore[union-attr]
    # The refused one left no trace: the same item fits again the next (UTC) day.
    [again] = repo.create_many(owner, [items[2]], T0 + timedelta(days=1), daily_segments=6)
    assert again.created


def test_batch_spreads_over_online_devices_like_single_sends(world: World) -> None:
    world.online(world.device_ids[0], "s0")
    world.online(world.device_ids[1], "s1")
    outcomes = world.repo.create_many(world.owner, [new_message(key=f"k{i}") for i in range(10)], T0)
    devices = [o.message.device_id for o in outcomes if o.message]
    assert sorted(devices.count(d) for d in world.device_ids) == [5, 5]


def test_one_commit_for_the_whole_batch(world: World) -> None:
    commits = []
    event.listen(world.db.engine, "commit", lambda conn: commits.append(1))
    outcomes = world.repo.create_many(world.owner, [new_message(key=f"k{i}") for i in range(1000)], T0)
    assert sum(o.created for o in outcomes) == 1000
    assert len(commits) == 1
    assert count(world.db, MessageRow) == count(world.db, RecipientRow) == count(world.db, EventRow) == 1000


def test_a_failure_in_the_transaction_stores_nothing(world: World) -> None:
    """The last write (the event rows) fails: the messages and recipients before it, and the
    day's usage, are rolled back with it."""

    def fail_on_events(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO event"):
            raise RuntimeError("disk on fire")

    event.listen(world.db.engine, "before_cursor_execute", fail_on_events)
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            world.repo.create_many(world.owner, [new_message(key=f"k{i}") for i in range(20)], T0, daily_segments=100)
    finally:
        event.remove(world.db.engine, "before_cursor_execute", fail_on_events)
    assert count(world.db, MessageRow) == count(world.db, RecipientRow) == count(world.db, EventRow) == 0
    assert count(world.db, DailyUsageRow) == 0


# ---- a key committed by another writer between the pre-read and the insert ------------


class Store:
    """One owner with one phone, on any database URL."""

    def __init__(self, url: str) -> None:
        self.db = Database(url, sqlite_synchronous="NORMAL")
        self.db.create_all()
        self.repo = MessageRepository(self.db, UNPACED)
        self.owner = create_owner(self.db, "owner", T0)
        devices = DeviceRepository(self.db)
        code, _ = devices.create_pairing_code(self.owner, "phone", timedelta(minutes=5), T0)
        assert devices.redeem_pairing_code(code, T0) is not None


def _race(url: str) -> None:
    """After the batch read the keys, before its first write, a second connection (another
    gateway) commits a message under the key of item 1: the batch rolls back and each item
    is stored alone, item 1 as a replay of the winner's message (same content): nothing is
    lost and nothing is stored twice. (On SQLite the first write is where the transaction
    takes the database's write lock; the other writer must come before it.)"""
    store = Store(url)
    other = MessageRepository(Database(url, sqlite_synchronous="NORMAL"), UNPACED)
    items = [new_message(key="a"), new_message(key="b"), new_message(key="c")]
    winner: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(("INSERT", "UPDATE")) and not winner:
            record, _ = other.create(store.owner, items[1], T0)
            winner.append(record.id)

    event.listen(store.db.engine, "before_cursor_execute", before)
    try:
        outcomes = store.repo.create_many(store.owner, items, T0)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", before)
        other.db.close()
    try:
        assert kinds(outcomes) == ["new", "replay", "new"]
        assert outcomes[1].message is not None and outcomes[1].message.id == winner[0]
        assert count(store.db, MessageRow) == 3
        assert count(store.db, EventRow) == 3
    finally:
        store.db.close()


def test_lost_race_on_a_key_sqlite(tmp_path: Path) -> None:
    _race(f"sqlite:///{tmp_path / 'smsgw.db'}")


def test_lost_race_on_a_key_postgresql() -> None:
    with throwaway_database() as url:
        _race(url)


def test_conflicting_race_is_that_items_error_only(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'smsgw.db'}")
    other = MessageRepository(Database(store.db.url, sqlite_synchronous="NORMAL"), UNPACED)
    done: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(("INSERT", "UPDATE")) and not done:
            done.append(True)
            other.create(store.owner, new_message(key="b", text="the other body"), T0)

    event.listen(store.db.engine, "before_cursor_execute", before)
    try:
        outcomes = store.repo.create_many(store.owner, [new_message(key="a"), new_message(key="b")], T0)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", before)
        other.db.close()
    assert kinds(outcomes) == ["new", "AlreadyExists"]
    assert isinstance(outcomes[1].error, AlreadyExists)
    store.db.close()


def test_a_batch_pinned_to_one_phone_reads_it_once(world: World) -> None:
    """The session's identity map holds rows weakly; without the router's memory every
    message of the batch would read the device again (a third of the batch's time)."""
    reads: list[str] = []

    def count_device_reads(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM device" in statement:
            reads.append(statement)

    device = world.device_ids[0]
    event.listen(world.db.engine, "before_cursor_execute", count_device_reads)
    try:
        outcomes = world.repo.create_many(world.owner, [new_message(key=f"k{i}", device_id=device) for i in range(100)], T0)
    finally:
        event.remove(world.db.engine, "before_cursor_execute", count_device_reads)
    assert all(o.created and o.message and o.message.device_id == device for o in outcomes)
    assert len(reads) == 1


# ---- routing reads the batch's devices in one query (issue 15) ----------------------


def _statements(db: Database, run: Any) -> list[str]:
    """Every statement `run()` sends to the database."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return seen


def _pinned_batches_cost_the_same(store: Store, devices: list[str]) -> None:
    """A batch pinned round-robin to N phones issues as many statements for N = 1 as for
    N = 12, and reads the devices once: never one read per phone."""
    costs = []
    for n in (1, len(devices)):
        items = [new_message(key=f"n{n}-{k}", device_id=devices[k % n]) for k in range(2 * len(devices))]
        outcomes: list[SendOutcome] = []
        seen = _statements(store.db, lambda: outcomes.extend(store.repo.create_many(store.owner, items, T0)))
        assert [o.message.device_id for o in outcomes if o.created and o.message] == [i.device_id for i in items]
        assert len([q for q in seen if "FROM device" in q]) == 1, seen
        costs.append(len(seen))
    assert costs[0] == costs[1]


def _phones(store: Store, n: int) -> list[str]:
    devices = DeviceRepository(store.db)
    out = []
    for _ in range(n):
        code, _ = devices.create_pairing_code(store.owner, "phone", timedelta(minutes=5), T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        out.append(redeemed[0].device_id)
    return out


def test_a_batch_pinned_to_many_phones_reads_them_in_one_query_sqlite(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'smsgw.db'}")
    try:
        _pinned_batches_cost_the_same(store, _phones(store, 12))
    finally:
        store.db.close()


def test_a_batch_pinned_to_many_phones_reads_them_in_one_query_postgresql() -> None:
    with throwaway_database() as url:
        store = Store(url)
        try:
            _pinned_batches_cost_the_same(store, _phones(store, 12))
        finally:
            store.db.close()


def test_mixed_batch_reads_devices_once_and_routes_as_before(world: World) -> None:
    """Pinned to several phones, to a foreign, a revoked and an unknown one, and unpinned, in
    one batch: one device read (the owner's pool answers for the pinned ones), and each item
    routed as alone: the bad pins are INVALID_ARGUMENT on device_id, the others stored."""
    repo, owner = world.repo, world.owner
    mine = world.device_ids + [world.pair(), world.pair()]
    revoked = world.pair()
    repo.delete_device(owner, revoked, T0)
    foreign = world.pair(create_owner(world.db, "other", T0))
    world.online(mine[0], "s0")
    pins = [mine[1], "", foreign, mine[2], revoked, "", "no-such-device", mine[3], ""]
    items = [new_message(key=f"m{k}", device_id=d) for k, d in enumerate(pins)]
    outcomes: list[SendOutcome] = []
    seen = _statements(world.db, lambda: outcomes.extend(repo.create_many(owner, items, T0)))
    assert len([q for q in seen if "FROM device" in q]) == 1, seen
    assert kinds(outcomes) == ["new", "new", "InvalidArgument", "new", "InvalidArgument", "new", "InvalidArgument",
                               "new", "new"]
    for o in outcomes:
        if o.error is not None:
            assert isinstance(o.error, InvalidArgument) and o.error.violations[0][0] == "device_id"
    routed = [o.message.device_id if o.message else None for o in outcomes]
    assert routed == [mine[1], mine[0], None, mine[2], None, mine[0], None, mine[3], mine[0]]  # unpinned: the online one


def _cap_one_by_one(url: str) -> None:
    """`create` counts a message against the daily cap with one conditional upsert: the day's
    first message inserts the usage row, later ones add to it up to the cap exactly, a message
    past it is refused (stores nothing, the refusal says what was used), and a message bigger
    than the whole cap is refused on a day with no row yet too."""
    store = Store(url)
    repo, owner, day = store.repo, store.owner, T0.date().isoformat()

    def used() -> int | None:
        with store.db.read() as s:
            row = s.get(DailyUsageRow, (owner, day))
            return None if row is None else row.segments

    try:
        with pytest.raises(ResourceExhausted, match=r"\(0 sent today, this message needs 6\)"):
            repo.create(owner, new_message(3, key="too-big", parts=2), T0, daily_segments=5)
        assert used() is None and count(store.db, MessageRow) == 0
        repo.create(owner, new_message(2, key="a"), T0, daily_segments=5)
        assert used() == 2
        repo.create(owner, new_message(3, key="b"), T0, daily_segments=5)
        assert used() == 5  # exactly the cap
        with pytest.raises(ResourceExhausted, match=r"\(5 sent today, this message needs 1\)"):
            repo.create(owner, new_message(1, key="c"), T0, daily_segments=5)
        assert used() == 5 and count(store.db, MessageRow) == 2
        repo.create(owner, new_message(1, key="c"), T0, daily_segments=0)  # 0: no cap
        assert used() == 6
        _, created = repo.create(owner, new_message(2, key="a"), T0, daily_segments=5)
        assert not created and used() == 6  # a replay counts nothing, even at the cap
    finally:
        store.db.close()


def test_daily_cap_of_single_creates_sqlite(tmp_path: Path) -> None:
    _cap_one_by_one(f"sqlite:///{tmp_path / 'smsgw.db'}")


def test_daily_cap_of_single_creates_postgresql() -> None:
    with throwaway_database() as url:
        _cap_one_by_one(url)
