"""Session-level advisory locks on PostgreSQL that say a process is alive (issue 16): the
worker leader's lock, and each bridge's (device_bridge/lease.py).

Such a lock lives as long as the connection that took it: a process killed with SIGKILL
loses it as soon as the server sees the socket close. A machine that vanishes (power, a
network cut) sends nothing, so the connection also asks the server to probe it with TCP
keepalives and to drop it when unanswered (about 20 s), instead of the kernel's two hours:
until then the lock would still look held.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from gateway.bus.postgres import libpq_url

__all__ = ["connect_for_lock", "Leadership", "LEADER_KEY"]

log = logging.getLogger(__name__)

# pg_advisory_lock(bigint): "smsgw" in ASCII, then 3 for the worker leader (1: event log, 2: migrations).
LEADER_KEY = 0x736D736777_03


def connect_for_lock(url: str) -> psycopg.Connection:
    """An autocommit connection whose death the server notices within ~20 s (see above)."""
    conn = psycopg.connect(
        libpq_url(url), autocommit=True, connect_timeout=5,
        keepalives=1, keepalives_idle=5, keepalives_interval=5, keepalives_count=3,
        tcp_user_timeout=20_000,  # our side too: a query on a cut connection fails in ~20 s
    )
    try:
        # The server's side of the same: these settings apply to this connection only.
        conn.execute("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3")
        conn.execute("SET tcp_user_timeout = 20000")
    except psycopg.Error:
        conn.close()
        raise
    return conn


class Leadership:
    """Whether this worker is the one that runs the sweeps (expiry, purges, the bridge reaper):
    at most one holds the lock; when it dies (or its connection does), the next worker to ask
    takes over. Blocking calls: run them in a thread."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection | None = None
        self._held = False
        self._closed = False
        self._lock = threading.Lock()  # held() runs in a worker thread that may outlive its task

    def held(self) -> bool:
        """Take the lock if it is free; check that a held lock still is (its connection alive)."""
        with self._lock:
            if self._closed:
                return False
            return self._check()

    def _check(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = connect_for_lock(self._url)
            if self._held:
                self._conn.execute("SELECT 1")
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,)).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.info("this worker now runs the sweeps (expiry, purges, bridge reaper)")
        except psycopg.Error as exc:
            if self._held:
                log.warning("lost the worker leader lock (%s); another worker may take over", type(exc).__name__)
            self._drop()
        return self._held

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Let go for good (the connection's end releases the lock)."""
        with self._lock:
            self._closed = True
            self._drop()
