"""The reaper's rule on a real PostgreSQL (issue 16): a bridge is reaped only when its heartbeat
is stale **and** its lock is free; reaping takes its phones offline and reroutes their
unpinned, never-dispatched messages to a phone still online; a bridge that comes back finds
its row gone and is told (device_bridge/lease.py, gateway/devices/reaper.py).

Two BridgeLease objects stand for two bridge processes; their beats are driven by hand (the
thread's interval is an hour), and closing a lease's connection is what SIGKILL does to it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from device_bridge.lease import BridgeLease
from gateway.devices.reaper import reap_dead_bridges
from gateway.devices.repository import DeviceRepository
from gateway.devices.session_jobs import open_device_session
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.types import State
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import T0, UNPACED, new_message

_HOUR = 3600.0


@pytest.fixture
def database() -> Iterator[tuple[str, Database]]:
    with throwaway_database() as url:
        db = Database(url)
        try:
            db.migrate()
            yield url, db
        finally:
            db.close()


def _online(devices: DeviceRepository, messages: MessageRepository, owner: str, bridge_id: str) -> str:
    code, _ = devices.create_pairing_code(owner, "phone", timedelta(minutes=5), T0)
    redeemed = devices.redeem_pairing_code(code, T0)
    assert redeemed is not None
    device_id = redeemed[0].device_id
    open_device_session(
        devices, messages, owner_id=owner, device_id=device_id, session_id=f"session-of-{device_id}", token_hash=None,
        app_version="t", sims=(), held=(), held_ids=(), now=T0, bridge_id=bridge_id,
    ).result()
    return device_id


def _rows(db: Database, sql: str) -> list[tuple[object, ...]]:
    with db.engine.begin() as c:
        return [tuple(r) for r in c.execute(text(sql))]


def test_only_a_stale_bridge_whose_lock_is_free_is_reaped(database: tuple[str, Database]) -> None:
    url, db = database
    devices, messages = DeviceRepository(db), MessageRepository(db, UNPACED)
    owner = create_owner(db, "owner", T0)
    lost: list[str] = []
    dead = BridgeLease(url, interval=_HOUR, on_lost=lambda: lost.append("dead"))
    alive = BridgeLease(url, interval=_HOUR, on_lost=lambda: lost.append("alive"))
    dead.start()
    alive.start()
    try:
        orphaned = _online(devices, messages, owner, dead.id)
        unpinned, _ = messages.create(owner, new_message(1, key="unpinned"), T0)  # routed to the only phone online
        pinned, _ = messages.create(owner, new_message(1, key="pinned", device_id=orphaned), T0)
        kept = _online(devices, messages, owner, alive.id)
        assert unpinned.device_id == orphaned

        def reap() -> list[str]:
            reaped = reap_dead_bridges(devices, messages, grace=10, now=T0)
            assert reaped.rerouted_to <= {kept}
            return reaped.bridges

        assert reap() == []  # both beat just now
        _rows(db, "UPDATE bridge_instance SET heartbeat_at = now() - interval '1 minute' RETURNING id")
        assert reap() == []  # late beats, but both locks held: alive

        dead._drop()  # its connection gone, as after SIGKILL: the lock is free
        reaped = reap_dead_bridges(devices, messages, grace=10, now=T0)
        assert reaped.bridges == [dead.id] and reaped.devices == 1 and reaped.rerouted_to == {kept}
        sessions = dict(_rows(db, "SELECT id, session_id || '/' || bridge_id FROM device"))
        assert sessions == {orphaned: "/", kept: f"session-of-{kept}/{alive.id}"}
        assert messages.get(owner, unpinned.id).device_id == kept  # rerouted
        assert messages.get(owner, pinned.id).device_id == orphaned
        assert messages.get(owner, pinned.id).state == State.PENDING
        assert _rows(db, "SELECT id FROM bridge_instance") == [(alive.id,)]

        dead._beat()  # it comes back: its row is gone, so its sessions must end
        assert lost == ["dead"]
        assert sorted(_rows(db, "SELECT id FROM bridge_instance")) == sorted([(alive.id,), (dead.id,)])

        alive.close()  # a stopped bridge: its row is reaped at once, not after the grace
        assert reap_dead_bridges(devices, messages, grace=10, now=T0).bridges == [alive.id]
    finally:
        dead.close()
        alive.close()
