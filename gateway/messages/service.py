"""The message service the gRPC API calls: storage in worker threads, then bus signals.

Only this module (and the bridge) writes messages; it tells the bus after each commit so
the bridge dispatches at once and watchers wake at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.bus import Bus
from gateway.messages.records import EventRecord, MessageFilter, MessageRecord, NewMessage
from gateway.messages.repository import MessageRepository
from gateway.metrics import GatewayMetrics
from gateway.types import utcnow

__all__ = ["MessageService", "EventFeed"]


class EventFeed:
    """Wakes WatchMessages streams when the bus says events were logged (asyncio side)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return on the next notification, or after `timeout` (a safety net, not the path)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


class MessageService:
    def __init__(self, repo: MessageRepository, bus: Bus, metrics: GatewayMetrics) -> None:
        self.repo = repo
        self.bus = bus
        self.metrics = metrics

    async def send(self, owner_id: str, new: NewMessage) -> tuple[MessageRecord, bool]:
        record, created = await asyncio.to_thread(self.repo.create, owner_id, new, utcnow())
        if created:
            self.metrics.messages_accepted.inc()
            self.metrics.recipients_accepted.inc(len(record.recipients))
            self.bus.notify_events()
            if record.device_id:
                self.bus.notify_work([record.device_id])
        else:
            self.metrics.idempotent_replays.inc()
        return record, created

    async def get(self, owner_id: str, message_id: str) -> MessageRecord:
        return await asyncio.to_thread(self.repo.get, owner_id, message_id)

    async def list(
        self, owner_id: str, flt: MessageFilter, *, limit: int, before_id: str | None
    ) -> list[MessageRecord]:
        return await asyncio.to_thread(self.repo.list, owner_id, flt, limit=limit, before_id=before_id)

    async def cancel(self, owner_id: str, message_id: str) -> MessageRecord:
        record, device = await asyncio.to_thread(self.repo.cancel, owner_id, message_id, utcnow())
        self.bus.notify_events()
        if device:
            self.bus.notify_work([device])  # the session sends Drop
        return record

    async def events_after(
        self, owner_id: str, after_id: int, *, limit: int, message_ids: Sequence[str] = ()
    ) -> list[EventRecord]:
        return await asyncio.to_thread(self.repo.events_after, owner_id, after_id, limit=limit, message_ids=message_ids)

    async def last_event_id(self) -> int:
        return await asyncio.to_thread(self.repo.last_event_id)

    async def expire_due(self) -> None:
        devices = await asyncio.to_thread(self.repo.expire_due, utcnow())
        if devices:
            self.bus.notify_events()
            self.bus.notify_work(devices)
