"""The in-memory ring of recent events that WatchMessages and WatchInbound serve from
(docs/design.md "Event log").

Without it every watch stream ran its own storage query on every commit wake-up: N watchers,
N reads. The ring is refilled by one read of the log's tail per wake-up (coalesced, in a
worker thread) and every stream whose cursor it covers reads from memory. A cursor older than
the ring (a resume after a restart or a long gap, a watcher that fell behind while the ring
evicted) is served from storage as before, so nothing depends on the ring holding anything.

`publish` is the one way events get in: the refill uses it today; a writer that knows its
committed events could call it directly after the commit, the refill staying the fallback.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, cast

from gateway.inbound.records import InboundEventRecord
from gateway.messages.records import EventRecord
from gateway.types import EventKind

__all__ = ["RING_CAPACITY", "REFILL_POLL", "RingEvent", "Tail", "TailReader", "EventRing"]

log = logging.getLogger(__name__)

RING_CAPACITY = 65_536
"""Events held, all owners and both kinds together. At the hot path's target rate (600
messages/s, about five events each) that is some 20 s of history: a watcher further behind,
or resuming an older cursor, reads storage instead. A message event costs about 330 bytes
here, so a full ring is some 22 MB (inbound events also hold their SMS)."""

REFILL_POLL = 1.0
"""Safety net only: the ring is refilled on every bus wake-up; this bounds a lost one."""


@dataclass(frozen=True, slots=True)
class RingEvent:
    """One event-log row as the ring holds it: its owner and kind route it to the right streams."""

    id: int
    owner_id: str
    kind: EventKind
    record: EventRecord | InboundEventRecord


@dataclass(frozen=True, slots=True)
class Tail:
    """What a read of the log's tail found: `events` are every message and inbound event with
    `after` < id <= `upto`, in id order. `upto` is the newest id when the read began, so every
    id below it was committed (see EventRing.publish); `after` is above the cursor asked for
    when only the newest events were read (more than the ring holds)."""

    after: int
    upto: int
    events: list[RingEvent]


TailReader = Callable[[int, int], Tail]
"""(after, limit) -> the Tail after `after`, at most `limit` of its newest events. Synchronous
(storage): the ring runs it in a worker thread."""


class _Lane:
    """One owner's events of one kind, in id order. The first `head` entries were evicted;
    they are cut off in bulk, so evicting one event costs O(1)."""

    __slots__ = ("key", "ids", "records", "head")

    def __init__(self, key: tuple[str, EventKind]) -> None:
        self.key = key
        self.ids: list[int] = []
        self.records: list[EventRecord | InboundEventRecord] = []
        self.head = 0

    def compact(self) -> None:
        if self.head >= 1024 and self.head * 2 >= len(self.ids):
            del self.ids[: self.head], self.records[: self.head]
            self.head = 0


class EventRing:
    """The last `capacity` events of every owner, in id order, for the watch streams.

    It holds every event with `first_after` < id <= `last_id`: a stream whose cursor is at
    least `first_after` reads the ring, any other reads storage. All methods run on the
    gateway's event loop (no locks); only the tail read goes to a worker thread.
    """

    def __init__(
        self,
        read_tail: TailReader,
        *,
        capacity: int = RING_CAPACITY,
        on_published: Callable[[], None] = lambda: None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the ring holds at least one event")
        self.capacity = capacity
        self.first_after = 0
        self.last_id = 0
        self._read_tail = read_tail
        self._on_published = on_published
        self._lanes: dict[tuple[str, EventKind], _Lane] = {}
        self._order: deque[_Lane] = deque()  # the lane of each event held, oldest first
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._order)

    def reset(self, last_id: int) -> None:
        """Empty, covering everything after `last_id` (at server start: the log's newest id, so
        every stream "from now" is served from the ring)."""
        self._lanes.clear()
        self._order.clear()
        self.first_after = self.last_id = last_id

    def publish(self, events: Sequence[RingEvent], *, after: int, upto: int) -> None:
        """Take every event with `after` < id <= `upto` (`events`, in id order), then wake the
        streams. Every id up to `upto` must be committed: a stream that found nothing for it
        moves its cursor to `upto` for good (as the storage path does with its bound).

        Events already held (id <= last_id) are skipped; a publish that ends at or before
        last_id changes nothing. When `after` is past last_id what lies between is unknown,
        so the ring starts over from `after` (those cursors then read storage).
        """
        if upto <= self.last_id:
            return
        if after > self.last_id:
            self.reset(after)
        for e in events:
            if e.id <= self.last_id or e.id > upto:
                continue
            key = (e.owner_id, e.kind)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(key)
            lane.ids.append(e.id)
            lane.records.append(e.record)
            self._order.append(lane)
            self.last_id = e.id
        self.last_id = upto
        while len(self._order) > self.capacity:
            self._evict()
        self._on_published()

    def _evict(self) -> None:
        """Drop the oldest event: the ring then covers only what came after it."""
        lane = self._order.popleft()
        self.first_after = lane.ids[lane.head]
        lane.head += 1
        if lane.head == len(lane.ids):
            del self._lanes[lane.key]
        else:
            lane.compact()

    def _read(
        self, owner_id: str, kind: EventKind, after: int, limit: int, match: Callable[[Any], bool] | None
    ) -> tuple[list[Any], int] | None:
        if after < self.first_after:
            return None
        upto = self.last_id
        lane = self._lanes.get((owner_id, kind))
        if lane is None:
            return [], upto
        start = bisect_right(lane.ids, after, lo=lane.head)
        found: list[Any] = []
        for record in islice(lane.records, start, None):
            if match is None or match(record):
                found.append(record)
                if len(found) == limit:
                    break
        return found, upto

    def message_events(
        self, owner_id: str, after: int, limit: int, message_ids: Collection[str] = ()
    ) -> tuple[list[EventRecord], int] | None:
        """The owner's message events after `after` (of `message_ids` when given), at most
        `limit`, with the ring's last id: when fewer than `limit` came back, every event up
        to that id was seen. None when the ring does not cover `after`: read storage."""
        wanted = frozenset(message_ids)
        match = (lambda r: r.message_id in wanted) if wanted else None
        return cast("tuple[list[EventRecord], int] | None", self._read(owner_id, EventKind.MESSAGE, after, limit, match))

    def inbound_events(
        self, owner_id: str, after: int, limit: int, device_id: str = ""
    ) -> tuple[list[InboundEventRecord], int] | None:
        """As `message_events`, for the owner's inbound SMS (of `device_id` when given)."""
        match = (lambda r: r.inbound.device_id == device_id) if device_id else None
        return cast(
            "tuple[list[InboundEventRecord], int] | None", self._read(owner_id, EventKind.INBOUND, after, limit, match)
        )

    def wake(self) -> None:
        """New events were committed (the bus's signal, on the loop): refill once soon."""
        self._wake.set()

    async def run(self) -> None:
        """Refill for the life of the server: once per wake-up, however many streams watch.
        A wake-up during a refill causes exactly one more refill after it, not one each."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), REFILL_POLL)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.refill()

    async def refill(self) -> None:
        """One read of the log's tail after last_id, published. On a storage error the streams
        simply wait for the next try (the next wake-up or REFILL_POLL)."""
        after = self.last_id
        try:
            tail = await asyncio.to_thread(self._read_tail, after, self.capacity)
        except Exception as exc:
            log.warning("event ring: reading the event log failed (%s); retrying", type(exc).__name__)
            return
        self.publish(tail.events, after=tail.after, upto=tail.upto)
