"""The message service the gRPC API calls: storage in worker threads, then bus signals.

Only this module (and the bridge) writes messages; it tells the bus after each commit so
the bridge dispatches at once and watchers wake at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from gateway.bus import Bus
from gateway.errors import ResourceExhausted
from gateway.events.ring import EventRing
from gateway.messages.records import EventRecord, MessageFilter, MessageRecord, NewMessage, SendOutcome
from gateway.messages.repository import MessageRepository
from gateway.metrics import GatewayMetrics
from gateway.types import utcnow

__all__ = ["MessageService", "EventFeed"]


class EventFeed:
    """Wakes the WatchMessages and WatchInbound streams when events were logged (asyncio side),
    and holds the ring of recent events they read (gateway.events.ring).

    With a ring, `notify` is the ring's: it runs after each refill, so the streams wake once
    the events are in memory. Without one (tests of the storage path) it is the bus's.
    A stream takes `waiter()` *before* it reads and waits on it after, so a notification
    that lands between the read and the wait is never missed.
    """

    def __init__(self, ring: EventRing | None = None) -> None:
        self._changed = asyncio.Event()
        self.closed = False
        self.ring = ring

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Server shutdown: wake every stream for good so it ends."""
        self.closed = True
        self._changed.set()

    def waiter(self) -> asyncio.Event:
        return self._changed

    async def wait(self, waiter: asyncio.Event, timeout: float) -> None:
        """Return on the next notification after `waiter` was taken, or after `timeout`."""
        if self.closed:
            return
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except TimeoutError:
            pass


class MessageService:
    def __init__(self, repo: MessageRepository, bus: Bus, metrics: GatewayMetrics, *, daily_segments: int = 0) -> None:
        self.repo = repo
        self.bus = bus
        self.metrics = metrics
        self.daily_segments = daily_segments

    async def send(self, owner_id: str, new: NewMessage) -> tuple[MessageRecord, bool]:
        """Store (the write job goes straight to the group commit; this loop waits on its
        future: one hand-off there and one back), then signal. The signals are sent by the
        job's done-callback in the writer thread: if the RPC is cancelled while the job
        runs, the commit still happens and so must the wake-up. A replay (same key) wakes
        the device too, in case the first attempt's signal was lost."""
        future = self.repo.create_future(owner_id, new, utcnow(), daily_segments=self.daily_segments)
        future.add_done_callback(self._created)
        try:
            record, _ = await asyncio.wrap_future(future)
        except (IntegrityError, ResourceExhausted) as exc:
            return await asyncio.to_thread(self._replay, owner_id, new, exc), False
        return record, True

    def _created(self, future: Future[tuple[MessageRecord, bool]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        record, claimed = future.result()
        self.metrics.messages_accepted.inc()
        self.metrics.recipients_accepted.inc(len(record.recipients))
        self.bus.notify_events()
        if record.device_id and not claimed:  # a claimed one was handed to its session already
            self.bus.notify_queued({record.device_id: [record.id]})

    def _replay(self, owner_id: str, new: NewMessage, error: Exception) -> MessageRecord:
        record = self.repo.replay_of(owner_id, new, error)
        self.metrics.idempotent_replays.inc()
        if record.device_id:
            self.bus.notify_queued({record.device_id: [record.id]})
        return record

    async def send_many(self, owner_id: str, items: Sequence[NewMessage]) -> list[SendOutcome]:
        """Store a batch (SendMessages): one outcome per item, in order."""
        if not items:
            return []
        return await asyncio.to_thread(self._send_many, owner_id, items)

    def _send_many(self, owner_id: str, items: Sequence[NewMessage]) -> list[SendOutcome]:
        """One commit for the whole batch, then one signal for the watchers and one for all
        the devices it reached, from this worker thread (see `_send`); replays wake their
        devices too. Metrics count as `_send` does, per message."""
        outcomes = self.repo.create_many(owner_id, items, utcnow(), daily_segments=self.daily_segments)
        stored = [o for o in outcomes if o.message is not None]
        created = [o.message for o in stored if o.created and o.message is not None]
        if created:
            self.metrics.messages_accepted.inc(len(created))
            self.metrics.recipients_accepted.inc(sum(len(m.recipients) for m in created))
            self.bus.notify_events()
        if len(stored) > len(created):
            self.metrics.idempotent_replays.inc(len(stored) - len(created))
        queued: dict[str, list[str]] = {}
        for o in stored:
            if o.message is not None and o.message.device_id:
                queued.setdefault(o.message.device_id, []).append(o.message.id)
        if queued:
            self.bus.notify_queued(queued)
        return outcomes

    async def get(self, owner_id: str, message_id: str) -> MessageRecord:
        return await asyncio.to_thread(self.repo.get, owner_id, message_id)

    async def list(
        self, owner_id: str, flt: MessageFilter, *, limit: int, before_id: str | None = None, after_id: str | None = None
    ) -> list[MessageRecord]:
        return await asyncio.to_thread(self.repo.list, owner_id, flt, limit=limit, before_id=before_id, after_id=after_id)

    async def count(self, owner_id: str, flt: MessageFilter) -> int:
        return await asyncio.to_thread(self.repo.count, owner_id, flt)

    async def cancel(self, owner_id: str, message_id: str) -> MessageRecord:
        return await asyncio.to_thread(self._cancel, owner_id, message_id)

    def _cancel(self, owner_id: str, message_id: str) -> MessageRecord:
        """Commit and signal in one worker thread (see `_send`); a repeated cancel re-signals."""
        record, device = self.repo.cancel(owner_id, message_id, utcnow())
        self.bus.notify_events()
        if device:
            self.bus.notify_queued({device: [message_id]})  # its session drops it from its queue, and Drops it if in flight
        return record

    async def reschedule(self, owner_id: str, message_id: str, schedule_at: datetime | None) -> MessageRecord:
        return await asyncio.to_thread(self._reschedule, owner_id, message_id, schedule_at)

    def _reschedule(self, owner_id: str, message_id: str, schedule_at: datetime | None) -> MessageRecord:
        record, device = self.repo.reschedule(owner_id, message_id, schedule_at, utcnow())
        if device:
            self.bus.notify_queued({device: [message_id]})  # its session recomputes when to look again
        return record

    async def prune_dispatch_log(self) -> None:
        """Keep the dispatch history the longest pacing window needs (a calendar month) plus a day."""
        await asyncio.to_thread(self.repo.prune_dispatch_log, utcnow() - timedelta(days=32))

    async def events_after(
        self, owner_id: str, after_id: int, *, limit: int, message_ids: Sequence[str] = (), upto: int | None = None
    ) -> list[EventRecord]:
        return await asyncio.to_thread(
            self.repo.events_after, owner_id, after_id, limit=limit, message_ids=message_ids, upto=upto
        )

    async def last_event_id(self) -> int:
        return await asyncio.to_thread(self.repo.last_event_id)

    async def expire_due(self) -> None:
        await asyncio.to_thread(self._expire_due)

    def _expire_due(self) -> None:
        devices = self.repo.expire_due(utcnow())
        self.bus.notify_events()
        if devices:
            self.bus.notify_work(devices)
