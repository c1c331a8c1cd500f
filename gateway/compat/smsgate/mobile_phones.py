"""Phones on SMSGate's mobile API: their sessions, dispatch rounds and wake-ups, on the
gateway's asyncio loop (docs/smsgate.md, "The mobile API"; docs/design.md).

Such a phone has no WebSocket: it pulls (GET /message), reports states (PATCH /message) and
holds an SSE stream (GET /events) on which it is told to pull. It is still an ordinary smsgw
device, through the same storage jobs a bridge session uses:

- A session opens (`open_device_session`: online, `device:online`, what an older session
  dispatched back to PENDING) on the phone's first request, and closes
  (`close_device_session`: offline, `device:offline`, what it was handed and did not take
  back to PENDING, its never-dispatched messages rerouted) once it holds no SSE stream and
  made no request for `linger` seconds. An open SSE stream keeps it online.
- A pull is one dispatch round from a fresh load of the phone's queue
  (`MessageRepository.dispatch`): pacing, priority, schedule, expiry and SIM choice are the
  scheduler's. What it claimed (DISPATCHED) is handed over and listed again on every pull until
  the phone reports a state for it, so a lost answer costs nothing: the app ignores an id it
  knows. Messages cancelled or expired meanwhile are listed as `Cancelling`.
- The bus's device signals (a message queued or changed, pacing changed, the device deleted)
  reach here through `LocalBus.watch_devices`; a phone with work gets `MessageEnqueued` on its
  streams, and again when pacing lets the next message go (the round's `wake_at`).

The queue is not kept in memory between pulls as a bridge session keeps it: the app pulls up
to 100 messages per wake-up, so one fresh load per pull costs little per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.bus.local import LocalBus
from gateway.compat.smsgate.mobile_shapes import Report, cancelling, mobile_message, receipts, wire_id
from gateway.devices.records import DeviceIdentity, SimRecord
from gateway.devices.repository import DeviceRepository, Online, hash_secret
from gateway.devices.session_jobs import close_device_session, open_device_session
from gateway.errors import NotFound, Unauthenticated
from gateway.messages.records import DispatchUnit, MessageRecord, ReceiptUpdate
from gateway.messages.repository import MessageRepository
from gateway.metrics import GatewayMetrics
from gateway.otp.keys import OtpKeys
from gateway.types import State, utcnow

__all__ = ["MobilePhones", "Phone"]

log = logging.getLogger(__name__)

PULL_LIMIT = 100  # messages per pull, as SMSGate's server
_STREAM_BUFFER = 8  # events queued per stream (SMSGate's too); a full one drops the event
_TOKEN_TTL = 30.0  # seconds a checked device token is remembered (a deletion ends it at once)


@dataclass(eq=False)
class _Stream:
    queue: asyncio.Queue[tuple[str, str] | None] = field(default_factory=lambda: asyncio.Queue(_STREAM_BUFFER))
    enqueued_pending: bool = False  # a MessageEnqueued waits in the queue: another adds nothing


@dataclass(eq=False)
class Phone:
    """One phone's session here."""

    device_id: str
    owner_id: str
    session_id: str
    token_hash: str
    app_version: str
    seen: float = field(default_factory=time.monotonic)
    streams: list[_Stream] = field(default_factory=list)
    handed: dict[str, DispatchUnit] = field(default_factory=dict)  # by wire id, until a report
    filled: bool = False  # the last round used all its room: more may wait behind
    timer: asyncio.TimerHandle | None = None  # MessageEnqueued when pacing lets the next go
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one pull or report at a time
    closed: bool = False


class MobilePhones:
    def __init__(
        self, devices: DeviceRepository, messages: MessageRepository, bus: LocalBus, *,
        linger: float = 60.0, keepalive: float = 15.0, metrics: GatewayMetrics | None = None,
        otp_keys: OtpKeys | None = None,
    ) -> None:
        self.devices, self.messages, self.bus = devices, messages, bus
        self.metrics, self.otp_keys = metrics, otp_keys
        self.linger, self.keepalive = linger, keepalive
        self._phones: dict[str, Phone] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._tokens: dict[str, tuple[float, DeviceIdentity]] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- life -------------------------------------------------------------------------

    def start(self) -> None:
        self.bus.watch_devices(self._signals)
        self._task = asyncio.create_task(self._close_idle_forever())

    async def stop(self) -> None:
        """Close every session (the phones reconnect to whichever gateway serves them next)."""
        self.bus.unwatch_devices(self._signals)
        if self._task is not None:
            self._task.cancel()
        for phone in list(self._phones.values()):
            self._end_streams(phone)
            await asyncio.shield(self._close(phone))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.smsgate_sessions.set(len(self._phones))
            self.metrics.smsgate_streams.set(sum(len(p.streams) for p in self._phones.values()))

    # ---- credentials ------------------------------------------------------------------

    async def identify(self, token: str) -> tuple[DeviceIdentity, str]:
        """(the device, its token's hash) for a device token; Unauthenticated otherwise."""
        token_hash = hash_secret(token)
        hit = self._tokens.get(token_hash)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1], token_hash
        identity = await asyncio.to_thread(self.devices.authenticate, token)
        if identity is None:
            raise Unauthenticated("unknown device token: register the device again")
        self._tokens[token_hash] = (time.monotonic() + _TOKEN_TTL, identity)
        if len(self._tokens) > 4096:
            self._tokens.pop(next(iter(self._tokens)))
        return identity, token_hash

    # ---- sessions -----------------------------------------------------------------------

    async def touch(
        self, identity: DeviceIdentity, token_hash: str, app_version: str, sims: tuple[SimRecord, ...] | None = None,
    ) -> Phone:
        """The phone's session, opened if it has none here (or `sims` changed: written)."""
        phone = self._phones.get(identity.device_id)
        if phone is not None and phone.token_hash == token_hash and sims is None:
            phone.seen = time.monotonic()
            return phone
        lock = self._opening.setdefault(identity.device_id, asyncio.Lock())
        async with lock:
            phone = self._phones.get(identity.device_id)
            if phone is not None and phone.token_hash == token_hash and sims is None:
                phone.seen = time.monotonic()
                return phone
            session_id = phone.session_id if phone is not None else f"m-{uuid.uuid4().hex}"
            if sims is None:
                sims = await asyncio.to_thread(self._sims_of, identity)
            opened = await asyncio.wrap_future(open_device_session(
                self.devices, self.messages, owner_id=identity.owner_id, device_id=identity.device_id,
                session_id=session_id, token_hash=token_hash, app_version=app_version, sims=sims, held=(),
                held_ids=(), now=utcnow(),
            ))
            if opened.online is not Online.ONLINE:
                self._tokens.pop(token_hash, None)
                raise Unauthenticated("the device was deleted or registered again: register it again")
            if phone is None:
                phone = Phone(identity.device_id, identity.owner_id, session_id, token_hash, app_version)
                self._phones[identity.device_id] = phone
                self._gauge()
                self.bus.notify_events()  # device:online, and what the open moved
            phone.token_hash, phone.seen = token_hash, time.monotonic()
            return phone

    def _sims_of(self, identity: DeviceIdentity) -> tuple[SimRecord, ...]:
        """The SIMs the device reported last (the open writes them again)."""
        for record in self.devices.list(identity.owner_id):
            if record.id == identity.device_id:
                return record.sims
        return ()

    async def _close(self, phone: Phone) -> None:
        if phone.closed:
            return
        phone.closed = True
        if self._phones.get(phone.device_id) is phone:
            del self._phones[phone.device_id]
            self._gauge()
        if phone.timer is not None:
            phone.timer.cancel()
        try:
            rerouted = await asyncio.wrap_future(close_device_session(
                self.devices, self.messages, owner_id=phone.owner_id, device_id=phone.device_id,
                session_id=phone.session_id, last=True, now=utcnow(),
            ))
        except Exception:
            log.exception("could not close an SMSGate phone's session")
            return
        self.bus.notify_events()  # device:offline, what went back to PENDING
        if rerouted:
            self.bus.notify_work(rerouted)

    async def _close_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.linger / 4, 5.0))
            now = time.monotonic()
            for phone in [p for p in self._phones.values() if not p.streams and now - p.seen > self.linger]:
                await self._close(phone)

    # ---- pulls and reports ------------------------------------------------------------

    async def pull(self, phone: Phone, *, fifo: bool) -> list[dict[str, object]]:
        """GET /message: one dispatch round; what the phone holds unreported, then what ended."""
        async with phone.lock:
            now = utcnow()
            room = PULL_LIMIT - len(phone.handed)
            in_flight = {u.message.id for u in phone.handed.values()}
            # Handed over and since cancelled or expired: the phone must drop them.
            ended_ids = set(await asyncio.to_thread(self.messages.final_states, phone.device_id, in_flight)) if in_flight else set()
            batch = await asyncio.to_thread(self.messages.dispatch, phone.device_id, phone.session_id, room, now, in_flight)
            phone.filled = room > 0 and len(batch.units) >= room
            for unit in batch.units:
                phone.handed[wire_id(unit)] = unit
            if self.metrics is not None and batch.units:
                self.metrics.smsgate_pulled.inc(len(batch.units))
            ended = []
            for message_id in ended_ids | set(batch.drops):
                gone = [phone.handed.pop(w) for w, u in list(phone.handed.items()) if u.message.id == message_id]
                numbers = [u.message.recipients[i].phone_number for u in gone for i in u.recipient_indices]
                if not numbers and (record := await self._message(phone.owner_id, message_id)) is not None:
                    numbers = [r.phone_number for r in record.recipients]
                ended.append(cancelling(message_id, numbers))
            if batch.units or batch.drops:
                self.bus.notify_events()  # DISPATCHED, and whatever the round expired
            self._wake_at(phone, batch.wake_at)
            # SMSGate's order: unscheduled first, then by schedule; higher priority first; then
            # oldest first (fifo) or newest first (lifo, the app's default). Sorts are stable.
            units = sorted(phone.handed.values(), key=lambda u: u.message.id, reverse=not fifo)
            units.sort(key=lambda u: (u.message.schedule_at is not None, u.message.schedule_at or now, -u.message.priority))
            return [*(mobile_message(u, now, self.otp_keys) for u in units), *ended]

    async def _message(self, owner_id: str, message_id: str) -> MessageRecord | None:
        """The message, None when unknown (another owner's, or gone by retention)."""
        try:
            return await asyncio.to_thread(self.messages.get, owner_id, message_id)
        except NotFound:
            return None

    async def report(self, phone: Phone, reports: Iterable[Report], wire_ids: Iterable[str]) -> None:
        """PATCH /message: the app's state reports as receipts (forward only, idempotent;
        unknown ids change nothing)."""
        async with phone.lock:
            updates: list[ReceiptUpdate] = []
            for report, wid in zip(reports, wire_ids):
                if self.metrics is not None:
                    self.metrics.smsgate_reports.labels(report.state).inc()
                if report.state in ("Cancelling", "Cancelled") and not report.recipients:
                    phone.handed.pop(wid, None)
                    continue
                unit = phone.handed.pop(wid, None)
                if unit is not None:
                    numbers = [(i, unit.message.recipients[i].phone_number) for i in unit.recipient_indices]
                else:
                    record = await self._message(phone.owner_id, report.message_id)
                    numbers = [(r.index, r.phone_number) for r in record.recipients if r.attempt == report.attempt] if record else []
                updates += receipts(report, numbers)
            if updates:
                await asyncio.wrap_future(self.messages.apply_receipt_batch_future(phone.device_id, updates, utcnow()))
                self.bus.notify_events()  # WatchMessages, webhooks
            if phone.filled and len(phone.handed) < PULL_LIMIT:
                phone.filled = False
                self._tell(phone, "MessageEnqueued")  # room again for what waits behind

    # ---- wake-ups ---------------------------------------------------------------------

    def _wake_at(self, phone: Phone, at: datetime | None) -> None:
        if phone.timer is not None:
            phone.timer.cancel()
            phone.timer = None
        if at is not None:
            delay = max((at - utcnow()).total_seconds(), 0.0)
            phone.timer = asyncio.get_running_loop().call_later(delay, self._tell, phone, "MessageEnqueued")

    def _signals(self, taken: dict[str, set[str]]) -> None:
        for device_id in taken.get("revoked", ()):
            phone = self._phones.pop(device_id, None)
            self._tokens = {h: v for h, v in self._tokens.items() if v[1].device_id != device_id}
            if phone is not None:
                phone.closed = True  # deleted: nothing to close
                self._end_streams(phone)
                self._gauge()
        for device_id in taken.get("work", set()) | taken.get("settings", set()):
            phone = self._phones.get(device_id)
            if phone is not None:
                self._tell(phone, "MessageEnqueued")

    def tell_owner(self, owner_id: str, event: str, data: str = "null", *, device_id: str = "") -> None:
        """An event (`SettingsUpdated`, `WebhooksUpdated`, `MessagesExportRequested`) to the
        owner's phones streaming here (`device_id`: to that one only)."""
        for phone in self._phones.values():
            if phone.owner_id == owner_id and device_id in ("", phone.device_id):
                self._tell(phone, event, data)

    def _tell(self, phone: Phone, event: str, data: str = "null") -> None:
        for stream in phone.streams:
            if event == "MessageEnqueued":
                if stream.enqueued_pending:
                    continue
                stream.enqueued_pending = True
            try:
                stream.queue.put_nowait((event, data))
            except asyncio.QueueFull:  # a stream that does not read: SMSGate drops it too
                log.info("an SMSGate phone's event stream is full; event dropped (it pulls on reconnect)")

    @staticmethod
    def _end_streams(phone: Phone) -> None:
        for stream in phone.streams:
            while not stream.queue.empty():
                stream.queue.get_nowait()
            stream.queue.put_nowait(None)

    async def events(self, phone: Phone) -> AsyncIterator[bytes]:
        """GET /events: `event: <Type>` / `data: <JSON>` frames, a `:keepalive` comment every
        `keepalive` seconds; ends when the device is deleted."""
        stream = _Stream()
        phone.streams.append(stream)
        self._gauge()
        try:
            yield b":keepalive\n\n"  # the headers and a first byte, at once
            while True:
                try:
                    item = await asyncio.wait_for(stream.queue.get(), self.keepalive)
                except TimeoutError:
                    yield b":keepalive\n\n"
                    continue
                if item is None:
                    return
                event, data = item
                if event == "MessageEnqueued":
                    stream.enqueued_pending = False
                yield f"event: {event}\ndata: {data}\n\n".encode()
        finally:
            if stream in phone.streams:
                phone.streams.remove(stream)
            phone.seen = time.monotonic()
            self._gauge()
