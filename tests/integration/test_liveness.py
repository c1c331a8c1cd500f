"""RELIABILITY 7, heartbeat: a silent phone is declared dead <= ping_interval + ping_timeout
after its last frame and its unaccepted messages return to PENDING at once; a phone that
keeps reading (and so answers pings) is never dropped.

The real bridge (`device_bridge.server.serve`, real websockets server, real SQLite) runs on
trio's MockClock with ping_interval = ping_timeout = 1 s, over in-memory streams. The phone
is a real websockets client (sans-I/O ClientProtocol) plus the phone-side DeviceSession.
`VirtualTime` advances the clock only when every task is blocked and no storage thread is
running, so a storage call takes no virtual time and the numbers below are exact.
The last two tests run the same bridge over real sockets on 127.0.0.1, in real time: the
close code a silent phone gets (1011) and a reading phone kept; they assert no wall time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry
from websockets.exceptions import ConnectionClosed

from device_bridge.metrics import BridgeMetrics
from device_bridge.protocol import (
    DeliverReceived,
    DeviceSession,
    Encoding,
    Event,
    Side,
    SimInfo,
    WelcomeReceived,
)
from device_bridge.registry import SessionHandle, SessionRegistry
from device_bridge.server import DEVICE_PATH, BridgeServer, serve
from device_bridge.session_task import BridgeContext
from gateway.bus import LocalBus
from gateway.config import BridgeSettings
from gateway.devices.repository import DeviceRepository
from gateway.inbound.repository import InboundRepository
from gateway.messages.records import NewMessage
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.types import State
from tests.helpers.accounts import create_owner
from tests.helpers.memory_net import MemoryListener, MemoryWebSocket, VirtualTime, run_virtual

PING_INTERVAL = 1.0
PING_TIMEOUT = 1.0
# RELIABILITY 7 at 1 s / 1 s: dead within 2 virtual seconds of the phone's last frame.
DEAD_WITHIN = PING_INTERVAL + PING_TIMEOUT
EPSILON = 1e-6  # float arithmetic on the virtual clock
STEP = 10.0  # virtual-time bound for each step of a conversation


class RecordingRegistry(SessionRegistry):
    """The bridge's registry, noting when a session is unregistered (its cleanup starts)."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = trio.Event()
        self.ended_at: float | None = None

    def unregister(self, handle: SessionHandle) -> bool:
        if self.ended_at is None:
            self.ended_at = trio.current_time()
        self.ended.set()
        return super().unregister(handle)


class World:
    """Storage with one owner, one paired device and one PENDING message pinned to it."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = Database(f"sqlite:///{tmp_path}/t.db")
        self.db.create_all()
        self.devices = DeviceRepository(self.db)
        self.messages = MessageRepository(self.db)
        now = datetime.now(UTC)
        self.owner_id = create_owner(self.db, "liveness", now)
        code, _ = self.devices.create_pairing_code(self.owner_id, "phone", timedelta(minutes=10), now)
        redeemed = self.devices.redeem_pairing_code(code, now)
        assert redeemed is not None
        identity, self.token = redeemed
        self.device_id = identity.device_id
        new = NewMessage(
            phone_numbers=("+15551234567",), text="are you there?", data=None, port=0,
            device_id=self.device_id, sim_number=0, priority=0, valid_until=None,
            with_delivery_report=True, is_encrypted=False, idempotency_key="liveness-1",
            content_hash="liveness-1", parts=1, encoding="GSM_7",
        )
        record, created = self.messages.create(self.owner_id, new, now)
        assert created
        self.message_id = record.id
        self.registry = RecordingRegistry()
        self.ctx = BridgeContext(
            messages=self.messages,
            devices=self.devices,
            inbound=InboundRepository(self.db),
            bus=LocalBus(),
            settings=BridgeSettings(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT),
            metrics=BridgeMetrics(CollectorRegistry()),
            registry=self.registry,
            # The scheduler's clock follows the virtual one (its pacing gap before the redelivery).
            clock=lambda: now + timedelta(seconds=trio.current_time()),
        )

    def online(self) -> bool:
        (device,) = self.devices.list(self.owner_id)
        return device.online

    def state(self) -> State:
        return self.messages.get(self.owner_id, self.message_id).state


class Phone:
    """A phone session over a MemoryWebSocket: Hello sent on open, events read on demand."""

    def __init__(self, ws: MemoryWebSocket) -> None:
        self.ws = ws
        self.proto = DeviceSession(Side.PHONE, Encoding.PROTO, window=4)
        self._pending: list[Event] = []

    @classmethod
    async def open(cls, listener: MemoryListener, token: str) -> Phone:
        ws = await MemoryWebSocket.connect(
            listener, DEVICE_PATH, headers={"Authorization": f"Bearer {token}"}, subprotocols=[Encoding.PROTO]
        )
        assert ws.subprotocol == Encoding.PROTO
        phone = cls(ws)
        phone.proto.send_hello(app_version="liveness/1", sims=[SimInfo(1)])
        for frame in phone.proto.frames_to_send():
            await ws.send(frame)
        return phone

    async def next_event(self) -> Event:
        for _ in range(100):
            if self._pending:
                return self._pending.pop(0)
            self.proto.receive_frame(await self.ws.recv())
            self._pending = self.proto.events_received()
        raise AssertionError("100 frames without a protocol event")

    async def welcome_and_deliver(self) -> str:
        """Read Welcome, then the Deliver of the pending message; returns its id."""
        welcome = await self.next_event()
        assert isinstance(welcome, WelcomeReceived), welcome
        deliver = await self.next_event()
        assert isinstance(deliver, DeliverReceived), deliver
        return deliver.delivery.message_id


async def _start_bridge(nursery: trio.Nursery, world: World) -> tuple[BridgeServer, MemoryListener]:
    listener = MemoryListener()
    bridge: BridgeServer = await nursery.start(
        # serve() annotates SocketListener; any trio Listener works (trio.serve_listeners).
        lambda task_status: serve(world.ctx, "memory", 0, listeners=[listener], task_status=task_status)  # type: ignore[list-item]
    )
    return bridge, listener


def test_silent_phone_is_dead_within_ping_interval_plus_timeout(tmp_path: Path) -> None:
    world = World(tmp_path)
    report: dict[str, object] = {}

    async def main(vt: VirtualTime) -> None:
        async with trio.open_nursery() as nursery:
            bridge, listener = await _start_bridge(nursery, world)
            with trio.fail_after(STEP):
                phone = await Phone.open(listener, world.token)
                assert await phone.welcome_and_deliver() == world.message_id
            await vt.settle()
            assert world.state() == State.DISPATCHED and world.online() and len(world.registry) == 1
            # From here on the phone reads nothing, so it answers no ping and sends nothing.
            last_frame = phone.ws.last_sent_at

            with trio.fail_after(60):  # long enough to measure a late death, not only to see one
                await world.registry.ended.wait()
            assert world.registry.ended_at is not None
            # Let the session's cleanup (storage threads) finish; no virtual time passes.
            await vt.settle()
            report["dead_after"] = world.registry.ended_at - last_frame
            report["checked_after"] = trio.current_time() - last_frame
            report["registry"] = len(world.registry)
            report["online"] = world.online()
            report["state"] = world.state()

            # Re-sendable at once: a new session of the device gets the same message again.
            with trio.fail_after(STEP):
                again = await Phone.open(listener, world.token)
                report["redelivered"] = await again.welcome_and_deliver()
            with trio.fail_after(STEP):
                await phone.ws.aclose()
                await again.ws.aclose()  # drop the link: a phone that does not read never answers a close
                await bridge.aclose()
            nursery.cancel_scope.cancel()

    try:
        run_virtual(main)
    finally:
        world.db.close()

    # Unaccepted message back to PENDING at the moment the session was declared dead.
    assert report["registry"] == 0
    assert report["online"] is False
    assert report["state"] == State.PENDING
    assert report["checked_after"] == report["dead_after"], "virtual time passed during the cleanup"
    assert report["redelivered"] == world.message_id
    dead_after = report["dead_after"]
    assert isinstance(dead_after, float)
    assert dead_after <= DEAD_WITHIN + EPSILON, (
        f"silent phone declared dead {dead_after:.3f} virtual s after its last frame; "
        f"RELIABILITY 7 wants <= ping_interval + ping_timeout = {DEAD_WITHIN:.0f} s"
    )


def test_phone_that_keeps_reading_stays_connected(tmp_path: Path) -> None:
    world = World(tmp_path)
    watched = 30.0  # virtual seconds: 30 ping intervals
    report: dict[str, object] = {}

    async def main(vt: VirtualTime) -> None:
        async with trio.open_nursery() as nursery:
            bridge, listener = await _start_bridge(nursery, world)
            with trio.fail_after(STEP):
                phone = await Phone.open(listener, world.token)
                assert await phone.welcome_and_deliver() == world.message_id
            started = trio.current_time()
            extra: list[Event] = []

            async def keep_reading() -> None:
                # Reading is what answers pings (the websockets protocol queues each pong).
                # Nothing but pings should arrive; bound the count of anything else anyway.
                try:
                    for _ in range(10):
                        extra.append(await phone.next_event())
                except ConnectionClosed:
                    return  # the bridge dropped us; the assertions below say so
                raise AssertionError(f"unexpected events: {extra}")

            async with trio.open_nursery() as reader:
                reader.start_soon(keep_reading)
                with trio.fail_after(watched + STEP):
                    await trio.sleep(watched)
                await vt.settle()
                report["elapsed"] = trio.current_time() - started
                report["ended"] = world.registry.ended.is_set()
                report["registry"] = len(world.registry)
                report["online"] = world.online()
                report["state"] = world.state()
                report["pongs"] = phone.ws.pongs_sent
                report["extra"] = list(extra)
                reader.cancel_scope.cancel()
            with trio.fail_after(STEP):
                await phone.ws.aclose()  # teardown must not depend on how the phone behaved
                await bridge.aclose()
            nursery.cancel_scope.cancel()

    try:
        run_virtual(main)
    finally:
        world.db.close()

    assert report["elapsed"] == watched
    assert report["ended"] is False, "the bridge ended a session whose phone answered every ping"
    assert report["registry"] == 1
    assert report["online"] is True
    assert report["state"] == State.DISPATCHED  # still in flight on the live session
    assert report["extra"] == []
    pongs = report["pongs"]
    assert isinstance(pongs, int)
    # One ping per interval (latency is 0 on the virtual clock): about 30 in 30 s.
    assert watched / PING_INTERVAL - 2 <= pongs <= watched / PING_INTERVAL + 1, pongs


class TcpListener:
    """`MemoryWebSocket.connect` over a real socket: the bridge's own listener on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


def _real_time_world(tmp_path: Path, interval: float, timeout: float) -> World:
    world = World(tmp_path)
    world.ctx.settings = BridgeSettings(ping_interval=interval, ping_timeout=timeout)
    world.ctx.clock = lambda: datetime.now(UTC)
    return world


def test_over_tcp_a_silent_phone_is_closed_1011_after_its_message_is_requeued(tmp_path: Path) -> None:
    """The shared keepalive timer over real websockets and sockets: the close code and reason
    a phone sees, and the cleanup done before it. No wall-clock figure is asserted."""
    world = _real_time_world(tmp_path, interval=0.2, timeout=0.5)
    report: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bridge: BridgeServer = await nursery.start(
                lambda task_status: serve(world.ctx, "127.0.0.1", 0, task_status=task_status)
            )
            listener = TcpListener(bridge.port)
            with trio.fail_after(30):
                phone = await Phone.open(listener, world.token)  # type: ignore[arg-type]
                assert await phone.welcome_and_deliver() == world.message_id
                await world.registry.ended.wait()  # the phone reads nothing from here on
                try:
                    while True:
                        await phone.next_event()  # answers the queued pings, far too late
                except ConnectionClosed as closed:
                    report["close"] = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
                # The close frame comes after the cleanup: the message is back to PENDING by now.
                report["state_at_close"] = await trio.to_thread.run_sync(world.state)
                report["online"] = await trio.to_thread.run_sync(world.online)
                await phone.ws.aclose()
                await bridge.aclose()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        world.db.close()
    assert report["close"] == (1011, "keepalive ping timeout")
    assert report["state_at_close"] == State.PENDING
    assert report["online"] is False
    assert len(world.registry) == 0


def test_over_tcp_a_reading_phone_is_pinged_and_kept(tmp_path: Path) -> None:
    # A timeout far above any scheduling stall of a loaded machine: only a phone that does
    # not answer at all may be dropped here.
    world = _real_time_world(tmp_path, interval=0.1, timeout=10.0)
    report: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bridge: BridgeServer = await nursery.start(
                lambda task_status: serve(world.ctx, "127.0.0.1", 0, task_status=task_status)
            )
            with trio.fail_after(30):
                phone = await Phone.open(TcpListener(bridge.port), world.token)  # type: ignore[arg-type]
                assert await phone.welcome_and_deliver() == world.message_id
                with trio.move_on_after(1.0):
                    await phone.next_event()  # nothing but pings should come (answered on the way)
                report["pongs"] = phone.ws.pongs_sent
                report["ended"] = world.registry.ended.is_set()
                report["registry"] = len(world.registry)
                await phone.ws.aclose()
                await bridge.aclose()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        world.db.close()
    assert report["ended"] is False and report["registry"] == 1
    pongs = report["pongs"]
    assert isinstance(pongs, int) and pongs >= 1
