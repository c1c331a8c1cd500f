"""A `smsgw bridge`'s proof of life (issue 16): its `bridge_instance` row, whose heartbeat
it renews every `bridge.heartbeat_interval`, and an advisory lock keyed by its id, held on
the same connection.

The worker takes a bridge's phones offline (gateway/devices/reaper.py) only when both say it
is gone: the heartbeat older than `bridge.lease_grace` **and** the lock free. The lock alone
would reap a bridge whose connection merely blinked; the heartbeat alone would reap a live
bridge whose beats were late. A bridge killed with SIGKILL is reaped about `lease_grace`
after its last beat.

A bridge that finds its row gone (it was reaped: the database or the network was away for
longer than the grace) has lost its phones in storage: `on_lost` ends every session with
1012 (the phones reconnect and take their devices again) and the row is written anew.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import psycopg

from gateway.devices.reaper import BRIDGE_LOCK_SPACE
from gateway.storage.held_locks import connect_for_lock

__all__ = ["BridgeLease", "STOPPED"]

log = logging.getLogger(__name__)

# A stopped bridge's heartbeat is set this far back, so the reaper clears its row at once.
STOPPED = "1 day"

_INSERT = (
    "INSERT INTO bridge_instance (id, host, started_at, heartbeat_at) VALUES (%s, %s, now(), now()) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"
)
_BEAT = "UPDATE bridge_instance SET heartbeat_at = now() WHERE id = %s"


class BridgeLease:
    """The heartbeat thread of one bridge process (see the module docstring)."""

    def __init__(self, url: str, *, interval: float, on_lost: Callable[[], None]) -> None:
        self.id = uuid.uuid4().hex
        self.host = f"{socket.gethostname()[:200]} pid {os.getpid()}"
        self._url = url
        self._interval = interval
        self._on_lost = on_lost
        self._conn: psycopg.Connection | None = None
        self._locked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smsgw-bridge-lease", daemon=True)

    def start(self) -> None:
        """The first beat, here (psycopg.Error: the database cannot be reached), then the thread."""
        self._beat(first=True)
        self._thread.start()

    def _beat(self, *, first: bool = False) -> None:
        if self._conn is None or self._conn.closed:
            self._conn, self._locked = connect_for_lock(self._url), False
        if first:
            self._conn.execute(_INSERT, (self.id, self.host))
        elif not self._conn.execute(_BEAT, (self.id,)).rowcount:
            log.warning("this bridge was taken for dead (no heartbeat for bridge.lease_grace); ending its sessions")
            try:
                self._on_lost()
            except Exception:  # the bridge is stopping (its loop is gone): nothing to end
                log.debug("could not end the sessions", exc_info=True)
            self._conn.execute(_INSERT, (self.id, self.host))
        if not self._locked:  # after the beat: a fresh heartbeat covers the moment it takes
            self._conn.execute("SET lock_timeout = '2s'")
            self._conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (BRIDGE_LOCK_SPACE, self.id))
            self._locked = True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except psycopg.Error as exc:  # the next beat reconnects
                log.warning("bridge heartbeat failed (%s); retrying", type(exc).__name__)
                self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._locked = None, False

    def close(self) -> None:
        """Stop beating and mark the row stopped (its sessions are closed by now), so the
        reaper removes it at once; closing the connection lets go of the lock."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.execute(
                    f"UPDATE bridge_instance SET heartbeat_at = now() - interval '{STOPPED}' WHERE id = %s", (self.id,)
                )
        except psycopg.Error:
            log.warning("could not mark this bridge stopped; the reaper removes it after bridge.lease_grace")
        self._drop()
