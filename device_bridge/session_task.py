"""One phone session: handshake, then two tasks: a reader (frames -> parsed events in an
inbox) and a worker (the inbox -> storage -> Ack; Delivers claimed at create; wake-ups ->
dispatch rounds on the phone's queue in memory -> Deliver). Keepalive pings come from the
bridge's one shared timer (device_bridge.keepalive).

Storage calls run in worker threads. Cleanup after the session (requeue what the phone did
not accept, presence, rerouting) is shielded so it runs even when the bridge shuts down.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState
from websockets.trio.server import ServerConnection

from device_bridge.credentials import TokenCache
from device_bridge.keepalive import Keepalive, KeepaliveEntry
from device_bridge.jobs import wait_job
from device_bridge.metrics import CLOSE_CODES, BridgeMetrics, sim_label
from device_bridge.protocol import (
    CloseCode,
    Credentials,
    Delivery,
    DeviceSession,
    Encoding,
    Event,
    HelloReceived,
    InboundReceived,
    InboundSms,
    InvalidEventReceived,
    PushTokenReceived,
    PacingSettings,
    Receipt,
    ReceiptReceived,
    ReceiptState,
    RejectReason,
    RemoteProtocolError,
    SessionState,
    Side,
    SimPacing,
)
from device_bridge.registry import SessionHandle, SessionRegistry
from gateway import logs
from gateway.bus import Bus
from gateway.config import BridgeSettings
from gateway.devices.records import DeviceIdentity, SimRecord
from gateway.devices.repository import DeviceRepository, Online, hash_secret
from gateway.devices.session_jobs import close_device_session, open_device_session
from gateway.inbound.records import NewInbound
from gateway.inbound.repository import InboundRepository
from gateway.messages.pacing import DevicePacing
from gateway.messages.claims import ClaimTarget, ClaimTargets
from gateway.messages.queue import DeviceQueue
from gateway.messages.records import DispatchUnit, HeldRecipient, ReceiptRefusal, ReceiptUpdate
from gateway.messages.repository import MessageRepository
from gateway.otp.keys import SEALED_PREFIX, OtpKeys, opened_otp
from gateway.types import State, utcnow

__all__ = ["BridgeContext", "Admission", "run_session"]

log = logging.getLogger(__name__)

# RFC 6455 1012: the phone reconnects after a short random delay (not 1001, "going away").
SERVICE_RESTART = 1012

_RECEIPT_STATES = {
    ReceiptState.ACCEPTED: State.ACCEPTED,
    ReceiptState.SENT: State.SENT,
    ReceiptState.DELIVERED: State.DELIVERED,
    ReceiptState.FAILED: State.FAILED,
}
_REFUSALS = {
    ReceiptRefusal.UNKNOWN_MESSAGE: (RejectReason.UNKNOWN_MESSAGE, "no such message on this device"),
    ReceiptRefusal.UNKNOWN_RECIPIENT: (RejectReason.UNKNOWN_RECIPIENT, "no such recipient index"),
}
# Cleanup must finish even during shutdown, but never hang it.
_CLEANUP_TIMEOUT = 10.0
# Parsed events waiting for storage before the reader stops reading (backpressure).
_READ_AHEAD = 256


@dataclass
class BridgeContext:
    """Everything a session needs from the core: storage, bus, settings, metrics, registry."""

    messages: MessageRepository
    devices: DeviceRepository
    inbound: InboundRepository
    bus: Bus
    settings: BridgeSettings
    metrics: BridgeMetrics
    registry: SessionRegistry
    # Private mode: registering with a pairing code also needs this token ("" = public mode).
    private_token: str = ""
    # The connected phones the core may claim new messages for at create (None: it never does;
    # the same object the gateway's MessageRepository holds).
    claims: ClaimTargets | None = None
    # The wall clock the scheduler's times come from (called on the trio thread only); tests
    # drive it from trio's virtual clock.
    clock: Callable[[], datetime] = utcnow
    # Device tokens checked since the bridge started (device_bridge.credentials).
    tokens: TokenCache = field(default_factory=TokenCache)
    # This `smsgw bridge` process's id in storage (device_bridge.lease); "" in `smsgw serve`.
    bridge_id: str = ""
    # Opens the sealed SMS of one-time passwords (gateway.otp.keys); None: no key here.
    otp_keys: OtpKeys | None = None


@dataclass(frozen=True)
class Admission:
    """What process_request learned from the upgrade request's credentials."""

    identity: DeviceIdentity | None  # a device token
    pairing_code: str | None  # or a pairing code to redeem
    source: str = ""  # the phone's address, for the audit log
    opened: Callable[[], None] = lambda: None  # gives back the bridge's opening slot
    token_hash: str = field(default="", repr=False)  # of the device token, re-checked when the session opens


class _Aborted(Exception):
    """End the session with this close code."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


def _delivery(unit: DispatchUnit, otp_keys: OtpKeys | None = None) -> Delivery:
    m = unit.message
    numbers = tuple(m.recipients[i].phone_number for i in unit.recipient_indices)
    text, encrypted = m.text, m.is_encrypted
    if text is not None and text.startswith(SEALED_PREFIX):  # a one-time password's SMS
        text, encrypted = opened_otp(otp_keys, text, numbers)
    return Delivery(
        message_id=m.id,
        phone_numbers=numbers,
        text=text,
        data=m.data if m.text is None else None,
        port=m.port,
        sim_number=unit.sim,
        is_encrypted=encrypted,
        with_delivery_report=m.with_delivery_report,
        priority=m.priority,
        valid_until=m.valid_until,
        recipient_indices=unit.recipient_indices,
        attempt=unit.attempt,
        parts=m.parts,
    )


def _new_inbound(i: InboundSms) -> NewInbound:
    return NewInbound(
        phone_id=i.id,
        sender=i.sender,
        text=i.text,
        data=i.data,
        port=i.port,
        sim=i.sim_number,
        is_encrypted=i.is_encrypted,
        received_at=i.received_at,
        truncated=i.truncated,
    )


def _settings(pacing: DevicePacing, slots: Sequence[int]) -> PacingSettings:
    """The pacing the bridge applies, per SIM the phone reported, as the phone sees it."""
    sims = []
    for slot in sorted(set(slots) | set(pacing.sims)):
        x = pacing.for_sim(slot)
        sims.append(
            SimPacing(slot, x.parts_per_minute, x.min_interval_ms, x.parts_per_hour, x.parts_per_day, x.recipients_per_month)
        )
    return PacingSettings(tuple(sims), pacing.phone_parts_per_minute, pacing.priority_bypass)


class _Session:
    def __init__(self, ctx: BridgeContext, ws: ServerConnection, encoding: Encoding) -> None:
        self.ctx = ctx
        self.ws = ws
        self.proto = DeviceSession(Side.BRIDGE, encoding, max_window=ctx.settings.max_window)
        self.send_lock = trio.Lock()
        self.handle: SessionHandle | None = None
        self.slots: tuple[int, ...] = ()
        # What the last dispatch round left behind (see worth_dispatching).
        self.room_ran_out = False
        self.partly_sent: set[str] = set()
        # The phone's queue as the open loaded it, for the first dispatch round (see open).
        self.queue: DeviceQueue | None = None
        self.target: ClaimTarget | None = None  # published for claims at create (dispatch)
        # Events the reader parsed, for the worker to store (see read).
        self.inbox: list[Event] = []
        self.inbox_taken = trio.Event()
        self.working = True
        self.log: logging.LoggerAdapter[Any] = logging.LoggerAdapter(log, {"session": str(ws.id)[:8]})

    @property
    def window_in_use(self) -> tuple[int, int]:
        """(Delivers in flight, the window), for the metrics (device_bridge.metrics)."""
        if self.proto.state is not SessionState.OPEN:
            return 0, 0
        return self.proto.window - self.proto.window_available, self.proto.window

    def count_delivers(self, units: Sequence[DispatchUnit]) -> None:
        metrics = self.ctx.metrics
        metrics.delivers.inc(len(units))
        for unit in units:
            metrics.parts.labels(sim_label(unit.sim)).inc(max(unit.message.parts, 1) * len(unit.recipient_indices))

    async def flush(self) -> None:
        """Send what the protocol queued, in order (one sender at a time)."""
        async with self.send_lock:
            for frame in self.proto.frames_to_send():
                await self.ws.send(frame)

    async def handshake(self, admission: Admission) -> tuple[DeviceIdentity, HelloReceived, Credentials | None]:
        with trio.move_on_after(self.ctx.settings.hello_timeout) as scope:
            first = await self.ws.recv()
        if scope.cancelled_caught:
            raise _Aborted(CloseCode.HELLO_TIMEOUT, "no Hello in time")
        self.proto.receive_frame(first)
        hello = next(e for e in self.proto.events_received() if isinstance(e, HelloReceived))
        identity, credentials = admission.identity, None
        if identity is None:
            assert admission.pairing_code is not None
            generation = self.ctx.tokens.generation
            redeemed = await trio.to_thread.run_sync(
                self.ctx.devices.redeem_pairing_code, admission.pairing_code, self.ctx.clock(), admission.source
            )
            if redeemed is None:
                raise _Aborted(CloseCode.CREDENTIALS_REVOKED, "pairing code spent or expired meanwhile")
            identity, token = redeemed
            # Kept for the phone's next upgrade; a re-issue's earlier token goes.
            self.ctx.tokens.put(hash_secret(token), identity, generation)
            credentials = Credentials(identity.device_id, token)
            self.log.info("= paired device %s", identity.device_id)
        return identity, hello, credentials

    async def open(
        self, identity: DeviceIdentity, hello: HelloReceived, credentials: Credentials | None, token_hash: str
    ) -> SessionHandle:
        """Presence, requeue and registration, one session of a device at a time: two
        overlapping handshakes of one phone are ordered, so the registry and the database
        agree on which session is current (the later one). `token_hash`: of the token the
        session was admitted with or hands out; the open re-checks it, as a retry with the
        pairing code may have replaced it since.

        One write job (gateway.devices.session_jobs): online flag, requeue, adoption, and the
        phone's queue with its pacing and what it must Drop. The first dispatch round plans on
        that queue; a wake-up that reaches the handle while the job runs (the registry hands
        wake-ups to a session being opened) makes it reload instead."""
        session_id = uuid.uuid4().hex
        sims = tuple(SimRecord(s.slot, s.operator_name, s.country_iso) for s in hello.sims)
        handle = SessionHandle(identity.device_id, identity.owner_id, session_id)
        held = [HeldRecipient(h.message_id, h.recipient_index, h.attempt) for h in hello.held]
        held_ids = {*hello.held_message_ids, *(h.message_id for h in hello.held)}
        async with self.ctx.registry.opening(identity.device_id, handle):
            now = self.ctx.clock()
            # From here a wake-up for the device reaches the handle; the job's transaction
            # starts later and sees everything committed before.
            handle.loading()
            opened = await wait_job(
                open_device_session(
                    self.ctx.devices, self.ctx.messages, owner_id=identity.owner_id, device_id=identity.device_id,
                    session_id=session_id, token_hash=token_hash, app_version=hello.app_version, sims=sims,
                    held=held, held_ids=held_ids, now=now, with_token=credentials is None,
                    bridge_id=self.ctx.bridge_id, push_token=hello.push_token,
                )
            )
            if opened.online is Online.DELETED:  # deleted between the upgrade and Hello
                raise _Aborted(CloseCode.CREDENTIALS_REVOKED, "device deleted")
            if opened.online is Online.TOKEN_REPLACED:  # docs/protocol.md "When the code is spent"
                if credentials is not None:
                    # The same code paired again since: that session holds the device's one
                    # valid token and takes over, as a newer session would.
                    raise _Aborted(CloseCode.REPLACED, "a newer pairing of this device took over")
                # Admitted with a token a retry with the code killed before this Hello.
                raise _Aborted(CloseCode.CREDENTIALS_REVOKED, "token replaced by a newer pairing")
            if opened.woken_at is not None:  # back after a wake-up push (gateway/push)
                self.ctx.metrics.wake_to_reconnect.observe(max(0.0, (now - opened.woken_at).total_seconds()))
            self.handle = handle  # from here on close_out() cleans up, even if the rest fails
            self.queue = opened.queue
            if self.queue is None:
                handle.wake()  # nothing loaded (the device went away): the first round loads
            old = self.ctx.registry.register(handle)
        if old is not None:
            old.replace()
        # A session of this device on another bridge (issue 16) ends too; in one process the
        # registry just did that, and the bus has nothing to send.
        self.ctx.bus.notify_replaced({identity.device_id: session_id})
        if handle.revoked:  # deleted while this session was being opened
            raise _Aborted(CloseCode.CREDENTIALS_REVOKED, "device deleted")
        self.slots = tuple(sim.slot for sim in sims) or (1,)
        assert opened.pacing is not None
        self.proto.send_welcome(
            identity.device_id,
            ping_interval=int(self.ctx.settings.ping_interval),
            server_time=now,
            credentials=credentials,
            settings=_settings(opened.pacing, self.slots),
        )
        # Messages the phone holds that ended meanwhile, and what expired before this open.
        self.send_drops(opened.drops)
        await self.flush()
        self.ctx.bus.notify_events()
        self.log.info("= session open for device %s (window %d)", identity.device_id, self.proto.window)
        return handle

    async def read(self) -> None:
        """Parse the phone's frames as they come; ends when the phone closes.

        Receipts and inbound SMS go to `inbox`, and the session's one worker task (`_work`)
        stores what gathered there as one storage call (coalesced receipts), then Acks. The
        Ack goes out only after the commit, so a phone whose session dies first re-sends
        what it has not seen acknowledged; storage keeps one copy of each. (Two tasks per
        session, this reader and that worker: issue 15.)
        """
        assert self.handle is not None
        handle = self.handle
        async for data in self.ws:
            self.proto.receive_frame(data)
            events = self.proto.events_received()
            if events:
                self.inbox.extend(events)
                handle.signal()
                while len(self.inbox) >= _READ_AHEAD and self.working:  # storage is behind: stop reading
                    self.inbox_taken = trio.Event()
                    await self.inbox_taken.wait()

    def take_inbox(self) -> list[Event]:
        events, self.inbox = self.inbox, []
        self.inbox_taken.set()
        return events

    async def store(self, events: list[Event]) -> None:
        """Store a batch of receipts and inbound SMS, then Ack, Reject and Drop as they need."""
        assert self.handle is not None
        receipts = [e.receipt for e in events if isinstance(e, ReceiptReceived)]
        inbound = [e.inbound for e in events if isinstance(e, InboundReceived)]
        invalid = [e for e in events if isinstance(e, InvalidEventReceived)]
        tokens = [e.token for e in events if isinstance(e, PushTokenReceived)]
        if tokens:  # the latest wins; not acknowledged (every Hello carries it again)
            handle = self.handle
            await wait_job(self.ctx.devices.set_push_token(handle.device_id, handle.session_id, tokens[-1]))
        if receipts or inbound or invalid:
            changed, finals, refused = await self.apply_receipts(receipts) if receipts else (0, {}, {})
            stored = await self.store_inbound(inbound) if inbound else 0
            acked = [r.event_id for i, r in enumerate(receipts) if i not in refused]
            self.proto.send_ack(acked + [i.event_id for i in inbound])
            self.refuse(invalid, {receipts[i].event_id: why for i, why in refused.items()})
            if self.target is not None:
                self.target.sent(0, self.proto.window_available)  # the room the receipts freed
            self.send_drops(finals)
            await self.flush()
            if changed or stored:
                self.ctx.bus.notify_events()  # WatchMessages, WatchInbound and the webhook worker
            failed = {r.message_id for r in receipts if r.state == ReceiptState.FAILED}
            if failed:
                self.handle.queued(failed)  # a retry returns to the queue (after its backoff)
            if self.worth_dispatching(receipts):
                self.handle.poke()

    def refuse(self, invalid: Sequence[InvalidEventReceived], refused: dict[int, ReceiptRefusal]) -> None:
        """Reject the events that can never be stored, so the phone forgets them instead of
        re-sending them after every Welcome (one such event used to close every session)."""
        for e in invalid:
            self.proto.send_reject(e.event_id, RejectReason.INVALID_EVENT, e.detail)
            self.ctx.metrics.rejects.labels(RejectReason.INVALID_EVENT.name).inc()
            self.log.warning("! %s event %d refused: %s", e.kind, e.event_id, e.detail)
        for event_id, why in refused.items():
            reason, detail = _REFUSALS[why]
            self.proto.send_reject(event_id, reason, detail)
            self.ctx.metrics.rejects.labels(reason.name).inc()
            self.log.warning("! Receipt event %d refused: %s", event_id, detail)

    def worth_dispatching(self, receipts: Sequence[Receipt]) -> bool:
        """Whether these receipts may let the dispatcher send more: they free window slots
        the last round lacked, end a message only partly handed over, or fail a recipient
        (a retry comes due later). Otherwise a round would only find nothing to do."""
        woken = False
        for r in receipts:
            if r.message_id in self.partly_sent:
                self.partly_sent.discard(r.message_id)
                woken = True
        return woken or self.room_ran_out or any(r.state == ReceiptState.FAILED for r in receipts)

    async def apply_receipts(
        self, receipts: Sequence[Receipt]
    ) -> tuple[int, dict[str, State], dict[int, ReceiptRefusal]]:
        """Store the receipts; returns how many changed a state, which of the messages the
        phone ACCEPTED ended CANCELLED or EXPIRED meanwhile (the phone must drop them), read in the
        same worker call, and the receipts storage refused (by position)."""
        assert self.handle is not None
        updates = [
            ReceiptUpdate(
                r.message_id,
                _RECEIPT_STATES[r.state],
                r.recipient_index,
                r.error[:200],
                recipient_indices=r.recipient_indices,
                attempt=r.attempt,
                failure_class=r.failure_class.name.lower() if r.failure_class else "",
                parts_done=r.parts_done,
            )
            for r in receipts
        ]
        for r in receipts:
            self.ctx.metrics.receipts.labels(r.state.name).inc()
        device_id, now, messages = self.handle.device_id, self.ctx.clock(), self.ctx.messages

        changed, refused, finals = await wait_job(messages.apply_receipt_batch_future(device_id, updates, now))
        return changed, finals, refused

    async def store_inbound(self, inbound: Sequence[InboundSms]) -> int:
        """Store the SMS not stored before (a re-send after a lost Ack is not); returns how many were new."""
        assert self.handle is not None
        handle, items = self.handle, [_new_inbound(i) for i in inbound]
        stored = await trio.to_thread.run_sync(
            self.ctx.inbound.store, handle.owner_id, handle.device_id, items, self.ctx.clock()
        )
        self.ctx.metrics.inbound.labels("stored").inc(len(stored))
        self.ctx.metrics.inbound.labels("repeated").inc(len(items) - len(stored))
        return len(stored)

    def send_drops(self, finals: dict[str, State]) -> None:
        """Queue a Drop for each message that ended (unless the session ended meanwhile)."""
        if not self.open_now():
            return
        for message_id, state in finals.items():
            self.proto.send_drop(message_id, state.name.lower())
            self.ctx.metrics.drops.inc()

    def open_now(self) -> bool:
        """Still OPEN after an await? (The reader may have ended the session meanwhile.)"""
        return self.proto.state is SessionState.OPEN

    async def dispatch(self) -> None:
        """On each wake-up (or when pacing, a schedule or a retry comes due): push changed
        settings, Drop what was cancelled/expired, then send what the scheduler allows.

        The phone's queue lives in memory between rounds (gateway.messages.queue): a round
        reads only the messages the wake-up names (new ones, or ones a receipt or the
        client changed), or reloads the queue when told something else changed."""
        assert self.handle is not None
        handle, ctx = self.handle, self.ctx
        wake_at: datetime | None = None
        # The first round plans on the queue the open loaded (unless a wake-up since asks
        # for a reload: SessionHandle.loading).
        queue, self.queue = self.queue, None
        target = self.claim_target()
        try:
            await self._work(queue, target)
        finally:
            self.working = False
            self.inbox_taken.set()  # a reader waiting for room reads on (the session is ending)
            if target is not None and ctx.claims is not None:
                ctx.claims.unregister(target)  # before close_out requeues: nothing is claimed on it after

    def claim_target(self) -> ClaimTarget | None:
        """Publish this session for claims at create (gateway.messages.claims), if the core
        makes them: the writer hands Delivers over through it and wakes this session."""
        assert self.handle is not None
        claims = self.ctx.claims
        if claims is None:
            return None
        handle, token = self.handle, trio.lowlevel.current_trio_token()

        def wake() -> None:  # from the writer thread
            try:
                token.run_sync_soon(handle.signal)
            except trio.RunFinishedError:
                pass

        target = self.target = ClaimTarget(handle.device_id, handle.session_id, wake)
        target.sent(0, self.proto.window_available)
        claims.register(target)
        return target

    def send_handed(self, target: ClaimTarget | None) -> int:
        """Queue the Delivers claimed at create since the last look; returns how many."""
        if target is None:
            return 0
        units = target.take_handed()
        if not units:
            return 0  # most wake-ups: the room was published where it changed
        for unit in units:
            self.proto.send_deliver(_delivery(unit, self.ctx.otp_keys))
        target.sent(len(units), self.proto.window_available)
        self.count_delivers(units)
        return len(units)

    async def _work(self, queue: DeviceQueue | None, target: ClaimTarget | None) -> None:
        """The session's worker: on each wake-up, store what the reader gathered, send what
        was claimed at create, and run a dispatch round when something asked for one."""
        handle, ctx = self.handle, self.ctx
        assert handle is not None
        wake_at: datetime | None = None
        if queue is not None and not len(queue) and handle.quiet_since_loading():
            # Nothing waits for the phone and nothing changed since the open loaded that:
            # no first round (a write job that would claim nothing); creates claim on it.
            handle.take_round()
            if target is not None:
                target.caught_up(queue, set())
        while True:
            deadline = math.inf
            if wake_at is not None:
                deadline = trio.current_time() + max(0.0, (wake_at - ctx.clock()).total_seconds())
            await handle.wait_woken(deadline)
            if self.inbox:
                await self.store(self.take_inbox())
            if self.send_handed(target):
                await self.flush()
            reload, fresh = handle.take_work()
            settings_changed = handle.take_settings_changed()
            if not (handle.take_round() or reload or fresh or settings_changed or trio.current_time() >= deadline):
                continue  # only Delivers claimed at create were handed over
            if settings_changed:
                pacing = await trio.to_thread.run_sync(ctx.messages.pacing_of, handle.device_id)
                if not self.open_now():
                    return
                self.proto.send_settings(_settings(pacing, self.slots))
                reload = True
            in_flight, room, now = self.proto.in_flight, self.proto.window_available, ctx.clock()
            # What in flight may have ended meanwhile (cancelled, expired): all of it after a
            # change the session was not told the messages of, else the ones it was told of.
            ending = list(in_flight) if reload else [m for m in in_flight if m in fresh]
            current = None if reload else queue

            # One write job: what in flight ended meanwhile, then the round itself.
            finals, queue, batch = await wait_job(
                ctx.messages.dispatch_round_future(
                    current, handle.device_id, handle.session_id, room, now, in_flight, fresh, target, ending
                )
            )
            if queue is not None:
                queue.busy = False  # the round committed (see DeviceQueue)
            if not self.open_now():
                return  # claimed rows stay DISPATCHED on this session; close_out requeues them
            if batch.fenced:  # a newer session of the device opened on another bridge
                self.log.info("= session of device %s replaced on another bridge (fence)", handle.device_id)
                handle.replace()
                return
            self.send_drops({**finals, **batch.drops})
            for unit in batch.units:
                self.proto.send_deliver(_delivery(unit, self.ctx.otp_keys))
                if len(unit.recipient_indices) < len(unit.message.recipients):
                    self.partly_sent.add(unit.message.id)
            self.send_handed(target)
            # All the room was used: more may wait behind it. (Not "the window is full now":
            # receipts that freed slots during the round were already stored, and must not
            # be the ones that find no reason to wake the next round.)
            if target is not None:
                target.sent(len(batch.units), self.proto.window_available)
                room = target.round_room
            self.room_ran_out = len(batch.units) >= room
            self.count_delivers(batch.units)
            wake_at = batch.wake_at
            if batch.units or batch.drops:
                ctx.bus.notify_events()  # DISPATCHED, and any EXPIRED found on the way
            await self.flush()

    async def close_out(self) -> None:
        """Requeue what the phone did not accept, update presence, reroute, tell the bus."""
        handle = self.handle
        if handle is None:
            return
        ctx = self.ctx
        last = ctx.registry.unregister(handle)
        now = ctx.clock()  # read here: a test's virtual clock is only readable on the trio thread

        def tell_bus(job: Future[set[str]]) -> None:  # in the writer thread, after the commit
            if not job.cancelled() and job.exception() is None:
                ctx.bus.notify_events()
                ctx.bus.notify_work(job.result() if last else {handle.device_id, *job.result()})

        # One write job: requeue, presence, reroute (gateway.devices.session_jobs). Once
        # submitted it runs to the end and tells the bus even if this wait is abandoned: a
        # stuck database delays shutdown by _CLEANUP_TIMEOUT at most.
        job = close_device_session(
            ctx.devices, ctx.messages, owner_id=handle.owner_id, device_id=handle.device_id,
            session_id=handle.session_id, last=last, now=now,
        )
        job.add_done_callback(tell_bus)
        await wait_job(job, abandon_on_cancel=True)


async def run_session(ctx: BridgeContext, ws: ServerConnection, admission: Admission, keepalive: Keepalive) -> None:
    """The websockets handler body for one authenticated upgrade.

    `keepalive` pings the session once it is open. A missed pong ends the session at once
    (`handle.keepalive_lost`, close 1011) instead of after websockets' close_timeout: a silent
    phone is dead <= ping_interval + ping_timeout after its last frame (RELIABILITY 7), and
    its unaccepted messages return to PENDING right then (cleanup runs before the close).
    """
    assert ws.subprotocol is not None, "process_request refuses upgrades without one of ours"
    session = _Session(ctx, ws, Encoding(ws.subprotocol))
    ctx.metrics.sessions.inc()
    ctx.metrics.window.track(session)
    close: tuple[int, str] | None = None
    pinged: KeepaliveEntry | None = None
    try:
        try:
            try:
                identity, hello, credentials = await session.handshake(admission)
                token_hash = admission.token_hash if credentials is None else hash_secret(credentials.token)
                logs.device_id.set(identity.device_id)  # every line of this session's tasks carries it
                handle = await session.open(identity, hello, credentials, token_hash)
            finally:
                admission.opened()
            ctx.metrics.handshakes.labels("ok").inc()
            pinged = keepalive.register(ws, handle.lose_keepalive)
            with handle.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session.dispatch)
                    await session.read()
                    nursery.cancel_scope.cancel()
            if handle.revoked:
                close = (CloseCode.CREDENTIALS_REVOKED, "device deleted")
            elif handle.replaced:
                close = (CloseCode.REPLACED, "a newer session of this device took over")
            elif handle.lease_lost:
                close = (SERVICE_RESTART, "bridge lease lost, reconnect")
            elif handle.keepalive_lost:
                session.log.warning("! session ended: keepalive ping timeout")
                close = (1011, "keepalive ping timeout")
        except* RemoteProtocolError as group:
            exc = _first(group)
            assert isinstance(exc, RemoteProtocolError)
            session.log.warning("! protocol error: %s", exc.reason)
            close = (exc.code, exc.reason)
        except* _Aborted as group:
            aborted = _first(group)
            assert isinstance(aborted, _Aborted)
            session.log.warning("! session ended: %s", aborted.reason)
            close = (aborted.code, aborted.reason)
        except* ConnectionClosed:
            pass
    finally:
        if pinged is not None:
            keepalive.unregister(pinged)
        ctx.metrics.sessions.dec()
        # Requeue first: a dead phone may never answer the closing handshake below.
        with trio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            await session.close_out()
    try:
        if close is not None:
            await _close(ctx, ws, *close)
    finally:
        _count_close(ctx, ws)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (possibly nested) group: the reader's nursery nests one."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _count_close(ctx: BridgeContext, ws: ServerConnection) -> None:
    """Every session's end, whoever ended it: the phone (its close frame came first), the
    bridge (ours did), or the network (no close frame: 1006). A connection still open here
    is closed by websockets after the handler returns (1000, the bridge's side)."""
    protocol = ws.protocol
    if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent is not False:
        side, code = "phone", protocol.close_rcvd.code
    elif protocol.close_sent is not None:
        side, code = "bridge", protocol.close_sent.code
    elif ws.state is WsState.CLOSED:
        side, code = "network", 1006
    else:
        side, code = "bridge", 1000
    ctx.metrics.closed.labels(side, str(code) if code in CLOSE_CODES else "other").inc()
    log.info("= session ended by the %s (%d)", side, code)  # the device: from the context (gateway.logs)


async def _close(ctx: BridgeContext, ws: ServerConnection, code: int, reason: str) -> None:
    try:
        await ws.aclose(code, reason)
    except ConnectionClosed:
        pass
