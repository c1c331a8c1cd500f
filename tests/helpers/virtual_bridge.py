"""The real bridge and the reference phone on trio's virtual clock, for scheduler tests.

Pacing works in minutes and hours, retries back off for minutes: real time would make a
200-message burst take a quarter of an hour. Here the real `device_bridge.server.serve`
(real websockets server protocol, real SQLite, the real scheduler) talks to a real
`PhoneAgent` with a `SimulatedModem` over in-memory streams, and the scheduler's wall
clock is `T0 + trio.current_time()`, so minutes of pacing pass in a fraction of a second
and every time the test reads is exact. `VirtualTime` never jumps the clock while a
storage thread runs, so storage takes zero virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from device_bridge.metrics import BridgeMetrics
from device_bridge.protocol import SimInfo
from device_bridge.registry import SessionRegistry
from device_bridge.server import DEVICE_PATH, BridgeServer, serve
from device_bridge.session_task import BridgeContext
from gateway.bus import LocalBus
from gateway.config import BridgeSettings, SchedulerSettings
from gateway.devices.repository import DeviceRepository
from gateway.inbound.repository import InboundRepository
from gateway.messages.records import NewMessage
from gateway.messages.repository import MessageRepository
from smsgw_client.segments import count_segments
from gateway.storage.engine import Database
from smsgw_agent import ModemOptions, PhoneAgent, SimulatedModem
from tests.helpers.accounts import create_owner
from tests.helpers.memory_net import MemoryListener, MemoryWebSocket

__all__ = ["T0", "World", "connected", "text_of_parts"]

#: Virtual time 0 on the scheduler's wall clock.
T0 = datetime(2030, 6, 3, 9, 0, tzinfo=UTC)


def text_of_parts(parts: int, char: str = "a") -> str:
    """A GSM-7 text of exactly `parts` parts (160 chars = 1, then 153 per part)."""
    return char * (160 if parts == 1 else 153 * parts)


@dataclass
class World:
    """Storage (SQLite, or the PostgreSQL database at `url`) with one owner and one paired
    phone; the bridge context around it."""

    path: Path
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    sims: int = 2
    url: str = ""  # a database URL (PostgreSQL); "" = a SQLite file under `path`

    def __post_init__(self) -> None:
        self.db = Database(self.url or f"sqlite:///{self.path}/smsgw.db", sqlite_synchronous="NORMAL")
        self.db.create_all()
        self.devices = DeviceRepository(self.db)
        self.messages = MessageRepository(self.db, self.scheduler)
        self.owner_id = create_owner(self.db, "scheduler", T0)
        code, _ = self.devices.create_pairing_code(self.owner_id, "phone", timedelta(minutes=10), T0)
        redeemed = self.devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        identity, self.token = redeemed
        self.device_id = identity.device_id
        self.registry = SessionRegistry()
        self.ctx = BridgeContext(
            messages=self.messages,
            devices=self.devices,
            inbound=InboundRepository(self.db),
            bus=LocalBus(),
            settings=BridgeSettings(ping_interval=3600, ping_timeout=3600),
            metrics=BridgeMetrics(CollectorRegistry()),
            registry=self.registry,
            clock=self.now,
        )
        self._keys = 0

    @staticmethod
    def now() -> datetime:
        return T0 + timedelta(seconds=trio.current_time())

    def send(
        self,
        numbers: Sequence[str],
        text: str,
        *,
        priority: int = 0,
        sim: int = 0,
        schedule_at: datetime | None = None,
        valid_until: datetime | None = None,
        with_delivery_report: bool = True,
    ) -> str:
        """Store a message as SendMessage would (now = the virtual clock) and wake the phone."""
        self._keys += 1
        count = count_segments(text)
        new = NewMessage(
            phone_numbers=tuple(numbers), text=text, data=None, port=0, device_id=self.device_id,
            sim_number=sim, priority=priority, valid_until=valid_until,
            with_delivery_report=with_delivery_report, is_encrypted=False,
            idempotency_key=f"k{self._keys}", content_hash=f"h{self._keys}",
            parts=count.parts, encoding=count.encoding.value, schedule_at=schedule_at,
        )
        record, created = self.messages.create(self.owner_id, new, self.now())
        assert created
        self.registry.wake([self.device_id])
        return record.id

    def phone(self, modem: ModemOptions | None = None, *, window: int = 16) -> PhoneAgent:
        """The reference phone with this world's SIMs; its modem takes 0.2 s a part, reports
        delivery 1 s later and enforces Android's limit (the ModemOptions defaults)."""
        return PhoneAgent(
            f"ws://memory{DEVICE_PATH}",
            token=self.token,
            modem=SimulatedModem(modem or ModemOptions(send_delay=0.2, delivery_delay=1.0)),
            sims=tuple(SimInfo(slot, "Sim Operator", "US") for slot in range(1, self.sims + 1)),
            window=window,
            name="virtual",
        )

    def close(self) -> None:
        self.db.close()


@asynccontextmanager
async def connected(world: World, agent: PhoneAgent) -> AsyncIterator[BridgeServer]:
    """The bridge serving, `agent` holding a session to it over memory; both end on exit."""
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        bridge: BridgeServer = await nursery.start(
            lambda task_status: serve(world.ctx, "memory", 0, listeners=[listener], task_status=task_status)  # type: ignore[list-item]
        )

        async def phone() -> None:
            ws = await MemoryWebSocket.connect(
                listener, DEVICE_PATH, headers={"Authorization": f"Bearer {agent.token}"},
                subprotocols=[agent.encoding.value],
            )
            async with trio.open_nursery() as work:
                agent.use_nursery(work)
                await agent.converse(ws)  # type: ignore[arg-type]
                work.cancel_scope.cancel()

        nursery.start_soon(phone)
        with trio.fail_after(10):
            await agent.wait_connected()
        try:
            yield bridge
        finally:
            with trio.fail_after(10):
                await bridge.aclose()
            nursery.cancel_scope.cancel()
