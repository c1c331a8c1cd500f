"""gateway.events: the ring of recent events the watch streams serve from (issue 15, item 5).

The ring covers every event after `first_after`: a cursor it covers is served from memory, an
older one from storage. One read of the log's tail per refill, however many streams watch;
wake-ups during a refill cause one more, not one each. A fake log counts the reads (never
the clock); the tail read itself runs against real SQLite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.api.cursors import WATCH_BATCH, follow
from gateway.events import ring as ring_module
from gateway.events.ring import EventRing, RingEvent, Tail
from gateway.events.tail import read_tail
from gateway.inbound.records import InboundEventRecord, InboundRecord
from gateway.messages.records import EventRecord
from gateway.messages.repository import MessageRepository
from gateway.messages.service import EventFeed
from gateway.types import EventKind, State
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_inbound import Store, sms
from tests.unit.gateway.test_gw_repository import new_message

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ALICE, BOB = "alice", "bob"


def message(event_id: int, owner: str = ALICE, message_id: str = "m1") -> RingEvent:
    record = EventRecord(event_id, message_id, 0, "+14155550000", State.PENDING, State.PENDING, "", T0)
    return RingEvent(event_id, owner, EventKind.MESSAGE, record)


def inbound(event_id: int, owner: str = ALICE, device_id: str = "d1") -> RingEvent:
    sms_record = InboundRecord(
        f"in{event_id}", owner, device_id, f"p{event_id}", 1, "+15550001111", "hi", None, 0, False, T0, T0
    )
    return RingEvent(event_id, owner, EventKind.INBOUND, InboundEventRecord(event_id, sms_record))


class FakeLog:
    """The event log in storage: every event of every owner, with counted reads."""

    def __init__(self) -> None:
        self.events: list[RingEvent] = []
        self.tail_reads = 0
        self.storage_reads = 0

    def append(self, *events: RingEvent) -> None:
        self.events.extend(events)

    @property
    def last_id(self) -> int:
        return self.events[-1].id if self.events else 0

    def read_tail(self, after: int, limit: int) -> Tail:
        """As gateway.events.tail.read_tail: the newest `limit` events after `after`."""
        self.tail_reads += 1
        newer = [e for e in self.events if e.id > after]
        if len(newer) > limit:
            newer = newer[-limit:]
            after = newer[0].id - 1
        return Tail(after, max(after, self.last_id), newer)

    def reader(self, owner: str, message_ids: frozenset[str] = frozenset()) -> Callable[[int, int], object]:
        """A stream's storage path (MessageService.events_after), counted."""

        async def read(after: int, upto: int) -> list[EventRecord]:
            self.storage_reads += 1
            found = [
                e.record
                for e in self.events
                if e.owner_id == owner and e.kind == EventKind.MESSAGE and after < e.id <= upto
                and (not message_ids or e.record.message_id in message_ids)  # type: ignore[union-attr]
            ]
            return found[:WATCH_BATCH]  # type: ignore[return-value]

        return read


def ids(records: list[EventRecord] | list[InboundEventRecord]) -> list[int]:
    return [r.id for r in records]


def served(result: tuple[list[EventRecord], int] | tuple[list[InboundEventRecord], int] | None) -> tuple[list[int], int]:
    assert result is not None, "the ring should cover this cursor"
    return ids(result[0]), result[1]


# ---- the ring itself ----------------------------------------------------------------------


class TestRing:
    def test_an_empty_ring_covers_everything_after_its_start(self) -> None:
        ring = EventRing(FakeLog().read_tail)
        ring.reset(41)
        assert served(ring.message_events(ALICE, 41, 10)) == ([], 41)
        assert served(ring.message_events(ALICE, 99, 10)) == ([], 41)  # a cursor ahead: nothing yet
        assert ring.message_events(ALICE, 40, 10) is None  # older than the ring: storage

    def test_events_are_served_per_owner_and_kind_in_id_order(self) -> None:
        ring = EventRing(FakeLog().read_tail)
        ring.publish([message(1), inbound(2), message(3, BOB), message(4), inbound(5, BOB)], after=0, upto=6)
        assert served(ring.message_events(ALICE, 0, 10)) == ([1, 4], 6)
        assert served(ring.message_events(ALICE, 1, 10)) == ([4], 6)
        assert served(ring.message_events(BOB, 0, 10)) == ([3], 6)
        assert served(ring.inbound_events(ALICE, 0, 10)) == ([2], 6)
        assert served(ring.inbound_events(BOB, 0, 10)) == ([5], 6)
        assert served(ring.message_events("carol", 0, 10)) == ([], 6)

    def test_filters_and_the_batch_limit(self) -> None:
        ring = EventRing(FakeLog().read_tail)
        ring.publish(
            [message(1, message_id="a"), message(2, message_id="b"), message(3, message_id="a"), message(4, message_id="c")]
            + [inbound(5, device_id="d1"), inbound(6, device_id="d2"), inbound(7, device_id="d1")],
            after=0,
            upto=7,
        )
        assert served(ring.message_events(ALICE, 0, 10, {"a", "c"})) == ([1, 3, 4], 7)
        assert served(ring.message_events(ALICE, 1, 10, {"b"})) == ([2], 7)
        assert served(ring.message_events(ALICE, 0, 2)) == ([1, 2], 7)  # full batch: the caller goes on from 2
        assert served(ring.message_events(ALICE, 0, 1, {"c"})) == ([4], 7)
        assert served(ring.inbound_events(ALICE, 0, 10, "d1")) == ([5, 7], 7)
        assert served(ring.inbound_events(ALICE, 0, 10, "d3")) == ([], 7)

    def test_eviction_moves_the_start_and_older_cursors_go_to_storage(self) -> None:
        ring = EventRing(FakeLog().read_tail, capacity=3)
        ring.reset(10)
        ring.publish([message(11), message(12, BOB), message(13)], after=10, upto=13)
        assert (len(ring), ring.first_after) == (3, 10)
        ring.publish([message(14), inbound(15)], after=13, upto=16)
        assert (len(ring), ring.first_after, ring.last_id) == (3, 12, 16)
        assert ring.message_events(ALICE, 11, 10) is None  # 12 (Bob's) is gone: 11 is not covered
        assert served(ring.message_events(ALICE, 12, 10)) == ([13, 14], 16)
        assert served(ring.message_events(BOB, 12, 10)) == ([], 16)
        assert served(ring.inbound_events(ALICE, 12, 10)) == ([15], 16)

    def test_lanes_compact_without_losing_order(self) -> None:
        ring = EventRing(FakeLog().read_tail, capacity=100)
        for n in range(1, 5001, 50):
            ring.publish([message(i) for i in range(n, n + 50)], after=n - 1, upto=n + 49)
        assert (len(ring), ring.first_after, ring.last_id) == (100, 4900, 5000)
        assert served(ring.message_events(ALICE, 4900, 500)) == (list(range(4901, 5001)), 5000)
        assert served(ring.message_events(ALICE, 4990, 3)) == ([4991, 4992, 4993], 5000)

    def test_publish_skips_what_it_holds_ignores_stale_and_restarts_after_a_gap(self) -> None:
        woken: list[int] = []
        ring = EventRing(FakeLog().read_tail, on_published=lambda: woken.append(1))
        ring.publish([message(1), message(2)], after=0, upto=2)
        ring.publish([message(2), message(3)], after=1, upto=3)  # overlaps what it holds
        assert served(ring.message_events(ALICE, 0, 10)) == ([1, 2, 3], 3)
        ring.publish([message(3)], after=2, upto=3)  # nothing new: no wake-up
        assert len(woken) == 2
        ring.publish([message(9)], after=8, upto=9)  # 4..8 unknown: start over after 8
        assert (ring.first_after, ring.last_id, len(ring)) == (8, 9, 1)
        assert ring.message_events(ALICE, 3, 10) is None
        assert served(ring.message_events(ALICE, 8, 10)) == ([9], 9)

    def test_an_upto_past_the_events_covers_the_ids_between(self) -> None:
        """Ids with no served event (other kinds, rolled-back ids) still move the bound."""
        ring = EventRing(FakeLog().read_tail)
        ring.publish([message(1)], after=0, upto=5)
        assert served(ring.message_events(ALICE, 1, 10)) == ([], 5)
        ring.publish([message(6)], after=5, upto=6)
        assert served(ring.message_events(ALICE, 1, 10)) == ([6], 6)


# ---- refills ------------------------------------------------------------------------------


def test_a_refill_is_one_tail_read_and_an_error_only_waits_for_the_next(caplog: pytest.LogCaptureFixture) -> None:
    log = FakeLog()
    log.append(message(1), inbound(2))
    woken: list[int] = []
    ring = EventRing(log.read_tail, on_published=lambda: woken.append(1))

    async def main() -> None:
        await ring.refill()
        assert (log.tail_reads, ring.last_id, len(woken)) == (1, 2, 1)
        await ring.refill()  # nothing new: read, no wake-up
        assert (log.tail_reads, len(woken)) == (2, 1)

        def broken(after: int, limit: int) -> Tail:
            raise OSError("database is gone")

        ring._read_tail = broken
        log.append(message(3))
        await ring.refill()
        assert ring.last_id == 2
        ring._read_tail = log.read_tail
        await ring.refill()
        assert served(ring.message_events(ALICE, 0, 10)) == ([1, 3], 3)

    asyncio.run(main())
    assert "OSError" in caplog.text


def test_wake_ups_during_a_refill_cause_one_more_refill_not_one_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_module, "REFILL_POLL", 3600.0)  # only wake-ups refill here
    log = FakeLog()
    log.append(message(1))
    entered, release = threading.Event(), threading.Event()

    def slow_tail(after: int, limit: int) -> Tail:
        if log.tail_reads == 0:
            entered.set()
            release.wait(30)
        return log.read_tail(after, limit)

    async def main() -> None:
        published = asyncio.Event()
        ring = EventRing(slow_tail, on_published=published.set)
        running = asyncio.create_task(ring.run())
        ring.wake()
        await asyncio.to_thread(entered.wait, 30)
        log.append(message(2))
        for _ in range(10):
            ring.wake()
        release.set()
        while ring.last_id < 2:
            published.clear()
            await asyncio.wait_for(published.wait(), 30)
        # The first refill may already have read event 2: the one more refill (in its worker
        # thread) may still be running. Wait for it, bounded.
        for _ in range(500):
            if log.tail_reads >= 2:
                break
            await asyncio.sleep(0.01)
        for _ in range(20):  # let a third refill start if one were due
            await asyncio.sleep(0)
        running.cancel()
        assert log.tail_reads == 2

    asyncio.run(main())


# ---- streams over the ring (gateway.api.cursors.follow) -----------------------------------


async def _collect(
    feed: EventFeed, log: FakeLog, owner: str, cursor: int, until: int, *,
    message_ids: frozenset[str] = frozenset(), pause: asyncio.Event | None = None,
) -> list[int]:  # fmt: skip
    """A WatchMessages stream from `cursor` until it has seen event `until` (or beyond)."""
    got: list[int] = []

    def from_ring(ring: EventRing, after: int) -> tuple[list[EventRecord], int] | None:
        return ring.message_events(owner, after, WATCH_BATCH, message_ids)

    async def last_event_id() -> int:
        return log.last_id

    stream = follow(feed, cursor, last_event_id, log.reader(owner, message_ids), from_ring)  # type: ignore[arg-type]
    async for e in stream:
        got.append(e.id)
        if pause is not None and len(got) == 1:
            await pause.wait()
        if e.id >= until:
            break
    await stream.aclose()
    return got


def _expected(log: FakeLog, owner: str, after: int, message_ids: frozenset[str] = frozenset()) -> list[int]:
    return [
        e.id
        for e in log.events
        if e.owner_id == owner and e.kind == EventKind.MESSAGE and e.id > after
        and (not message_ids or e.record.message_id in message_ids)  # type: ignore[union-attr]
    ]


def _ring(log: FakeLog, capacity: int) -> tuple[EventRing, EventFeed]:
    feed = EventFeed()
    ring = feed.ring = EventRing(log.read_tail, capacity=capacity, on_published=feed.notify)
    ring.reset(log.last_id)
    return ring, feed


def test_many_streams_cost_one_storage_read_per_refill() -> None:
    log = FakeLog()
    log.append(message(1), message(2, BOB))
    rounds, per_round = 5, 12
    planned = [
        message(n, ALICE if n % 3 else BOB, f"m{n % 4}") for n in range(3, 3 + rounds * per_round)
    ]
    alice = [e.id for e in planned if e.owner_id == ALICE]
    bob = [e.id for e in planned if e.owner_id == BOB]
    alice_m1 = [e.id for e in planned if e.owner_id == ALICE and e.record.message_id == "m1"]  # type: ignore[union-attr]

    async def main() -> None:
        ring, feed = _ring(log, 1000)
        streams = [_collect(feed, log, ALICE, 2, alice[-1]) for _ in range(30)]
        streams += [_collect(feed, log, BOB, 2, bob[-1]) for _ in range(10)]
        streams += [_collect(feed, log, ALICE, 2, alice_m1[-1], message_ids=frozenset({"m1"})) for _ in range(10)]
        running = asyncio.gather(*streams)
        for r in range(rounds):
            await asyncio.sleep(0)
            log.append(*planned[r * per_round : (r + 1) * per_round])
            await ring.refill()
        done = await asyncio.wait_for(running, 30)
        assert log.tail_reads == rounds
        assert log.storage_reads == 0
        assert done == [alice] * 30 + [bob] * 10 + [alice_m1] * 10

    asyncio.run(main())


def test_filtered_streams_get_exactly_their_events() -> None:
    log = FakeLog()

    async def main() -> None:
        ring, feed = _ring(log, 1000)
        log.append(*(message(i, message_id=f"m{i % 3}") for i in range(1, 31)))
        await ring.refill()
        wanted = frozenset({"m1"})
        got = await asyncio.wait_for(_collect(feed, log, ALICE, 0, 28, message_ids=wanted), 30)
        assert got == _expected(log, ALICE, 0, wanted)
        assert log.storage_reads == 0

    asyncio.run(main())


def test_a_cursor_older_than_the_ring_is_served_from_storage_then_from_the_ring() -> None:
    log = FakeLog()
    log.append(*(message(i, ALICE if i % 2 else BOB) for i in range(1, 41)))

    async def main() -> None:
        ring, feed = _ring(log, 4)  # holds 37..40 of the log's 40 after the first refill
        ring.reset(0)
        await ring.refill()
        assert ring.first_after == 36
        stream = asyncio.create_task(_collect(feed, log, ALICE, 0, 59))
        await asyncio.sleep(0)
        log.append(*(message(i, ALICE if i % 2 else BOB) for i in range(41, 61)))
        await ring.refill()  # 20 new events: the ring keeps 57..60
        got = await asyncio.wait_for(stream, 30)
        assert got == _expected(log, ALICE, 0)
        assert log.storage_reads >= 1

    asyncio.run(main())


def test_a_stream_left_behind_by_eviction_falls_back_to_storage_and_skips_nothing() -> None:
    log = FakeLog()

    async def main() -> None:
        ring, feed = _ring(log, 8)
        log.append(*(message(i) for i in range(1, 6)))
        await ring.refill()
        pause = asyncio.Event()
        stream = asyncio.create_task(_collect(feed, log, ALICE, 0, 100, pause=pause))
        for _ in range(20):  # the stream takes 1..5 from the ring, then pauses after event 1
            await asyncio.sleep(0)
        assert log.storage_reads == 0
        for n in range(6, 101, 5):  # meanwhile the ring moves far past it
            log.append(*(message(i) for i in range(n, n + 5)))
            await ring.refill()
        assert ring.first_after > 5
        pause.set()
        got = await asyncio.wait_for(stream, 30)
        assert got == list(range(1, 101))
        assert log.storage_reads >= 1

    asyncio.run(main())


# ---- the tail read against real storage ---------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The tail read's raw statements on both databases (a fresh PostgreSQL one each)."""
    if request.param == "sqlite":
        st = Store(f"sqlite:///{tmp_path / 'smsgw.db'}")
        try:
            yield st
        finally:
            st.db.close()
        return
    with throwaway_database() as url:
        st = Store(url)
        try:
            yield st
        finally:
            st.db.close()


def test_the_tail_read_gives_what_the_per_owner_reads_give(store: Store) -> None:
    messages = MessageRepository(store.db)
    messages.create(store.alice, new_message(2, device_id=store.phone1), T0)
    store.repo.store(store.alice, store.phone1, [sms("a")], T0)
    messages.create(store.bob, new_message(1, device_id=store.bob_phone), T0)
    store.repo.store(store.bob, store.bob_phone, [sms("b")], T0)
    store.repo.store(store.alice, store.phone2, [sms("c")], T0)

    tail = read_tail(store.db, 0, 100)
    assert (tail.after, tail.upto) == (0, messages.last_event_id())
    assert [e.id for e in tail.events] == sorted(e.id for e in tail.events)
    ring = EventRing(lambda after, limit: tail)
    ring.publish(tail.events, after=tail.after, upto=tail.upto)
    for owner in (store.alice, store.bob):
        assert ring.message_events(owner, 0, 100) == (messages.events_after(owner, 0, limit=100), tail.upto)
        assert ring.inbound_events(owner, 0, 100) == (store.repo.events_after(owner, 0, limit=100), tail.upto)

    newest = read_tail(store.db, 0, 3)  # more than the ring holds: only the newest, and where they start
    assert [e.id for e in newest.events] == [e.id for e in tail.events[-3:]]
    assert newest.after == tail.events[-3].id - 1
    assert read_tail(store.db, tail.upto, 100) == Tail(tail.upto, tail.upto, [])
    later = read_tail(store.db, tail.events[1].id, 100)
    assert [e.id for e in later.events] == [e.id for e in tail.events[2:]]
