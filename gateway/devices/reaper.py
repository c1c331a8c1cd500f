"""The phones of a `smsgw bridge` that died (issue 16): the worker leader takes them offline.

A bridge killed with SIGKILL (or on a machine that vanished) never closes its sessions: its
devices would stay online for good in storage, and unpinned sends would keep being routed to
them. Its phones usually reconnect to another bridge, whose session open takes each device
over; the reaper covers those that do not come back.

A bridge is dead when its heartbeat is older than `bridge.lease_grace` and its advisory lock
is free (device_bridge/lease.py says why both). For each such bridge, in order:
1. a guard transaction locks its row, checks both again, and holds its advisory lock, so
   the bridge cannot take it back meanwhile (it waits, then finds its row gone);
2. each of its devices is closed as its own session close would (`close_device_session`,
   last=True: offline and `device:offline`, what it dispatched back to PENDING, its unpinned
   never-dispatched messages rerouted), conditional on the session the device still has, so
   a phone that already reconnected elsewhere is left alone;
3. the row is deleted and the guard commits.
A reaper that dies between 1 and 3 leaves the row: the next leader does it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text

from gateway.devices.repository import DeviceRepository
from gateway.devices.session_jobs import close_device_session
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database

__all__ = ["Reaped", "reap_dead_bridges", "BRIDGE_LOCK_SPACE"]

log = logging.getLogger(__name__)

# pg_advisory_lock(int, int): "smsg" in ASCII, then hashtext(bridge id) (device_bridge/lease.py).
BRIDGE_LOCK_SPACE = 0x736D7367

_STALE = text("SELECT id FROM bridge_instance WHERE heartbeat_at < now() - make_interval(secs => :grace) ORDER BY id")
_GUARD = text(
    "SELECT pg_try_advisory_xact_lock(:space, hashtext(id)) FROM bridge_instance "
    "WHERE id = :id AND heartbeat_at < now() - make_interval(secs => :grace) FOR UPDATE"
)
_SESSIONS = text("SELECT id, owner_id, session_id FROM device WHERE bridge_id = :id AND session_id <> '' ORDER BY id")
_DELETE = text("DELETE FROM bridge_instance WHERE id = :id")


@dataclass
class Reaped:
    bridges: list[str] = field(default_factory=list)
    devices: int = 0  # sessions closed (a phone that had reconnected elsewhere is left as it is, and counted)
    rerouted_to: set[str] = field(default_factory=set)  # devices that got their messages


def reap_dead_bridges(devices: DeviceRepository, messages: MessageRepository, *, grace: float, now: datetime) -> Reaped:
    """Reap every dead bridge (module docstring). Blocking (PostgreSQL only): run it in a thread.
    The caller tells the bus: events, and work for `rerouted_to`."""
    db = messages.db
    reaped = Reaped()
    with db.engine.connect() as conn:
        stale = [row.id for row in conn.execute(_STALE, {"grace": grace})]
    for bridge_id in stale:
        try:
            _reap(db, devices, messages, bridge_id, grace, now, reaped)
        except Exception:  # one bridge's failure must not keep the others' phones online
            log.exception("could not reap bridge %s; will retry", bridge_id)
    return reaped


def _reap(
    db: Database, devices: DeviceRepository, messages: MessageRepository, bridge_id: str, grace: float,
    now: datetime, reaped: Reaped,
) -> None:
    """One bridge, steps 1-3 of the module docstring."""
    with db.engine.begin() as guard:
        row = guard.execute(_GUARD, {"space": BRIDGE_LOCK_SPACE, "id": bridge_id, "grace": grace}).first()
        if row is None or not row[0]:  # beating again, or its lock held (alive, beats late)
            return
        jobs = [
            close_device_session(
                devices, messages, owner_id=d.owner_id, device_id=d.id, session_id=d.session_id, last=True, now=now
            )
            for d in guard.execute(_SESSIONS, {"id": bridge_id})
        ]
        for job in jobs:
            reaped.rerouted_to |= job.result()
        reaped.devices += len(jobs)
        guard.execute(_DELETE, {"id": bridge_id})
        reaped.bridges.append(bridge_id)
