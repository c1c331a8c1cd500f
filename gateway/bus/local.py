"""In-process bus for `smsgw serve`: the one module that hops between the two event loops.

Three signals flow: "device D has work" and "device D was deleted" (gateway -> bridge, also
bridge -> itself), and "new events were logged" (anyone -> gateway watchers). Hops are coalesced: while a hop
is scheduled and not yet run, further signals only add to the pending set, so a burst
of N sends costs one hop, not N (DESIGN.md "What things cost here").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

__all__ = ["Bus", "LocalBus"]


class Bus(Protocol):
    def attach_bridge(
        self, on_work: Callable[[set[str]], None], on_revoked: Callable[[set[str]], None] | None = None
    ) -> None:
        """Subscribe the bridge (from its trio thread) to work and revocation signals."""

    def notify_work(self, device_ids: Iterable[str]) -> None:
        """Some devices have new work (messages to deliver or drop). Thread-safe, non-blocking."""

    def notify_revoked(self, device_ids: Iterable[str]) -> None:
        """These devices were deleted: end their live sessions. Thread-safe, non-blocking."""

    def notify_events(self) -> None:
        """New rows were appended to the event log. Thread-safe, non-blocking."""


class LocalBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work: set[str] = set()
        self._revoked: set[str] = set()
        self._work_scheduled = False
        self._events_scheduled = False
        self._on_work: Callable[[set[str]], None] | None = None
        self._on_revoked: Callable[[set[str]], None] | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._on_events: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []

    def attach_bridge(
        self, on_work: Callable[[set[str]], None], on_revoked: Callable[[set[str]], None] | None = None
    ) -> None:
        """Call from the bridge's trio thread; the callbacks then run there, never concurrently."""
        with self._lock:
            self._on_work = on_work
            self._on_revoked = on_revoked
            self._trio_token = trio.lowlevel.current_trio_token()
            pending = bool(self._work or self._revoked) and not self._work_scheduled
            self._work_scheduled = self._work_scheduled or pending
        if pending:
            self._schedule_work()

    def detach_bridge(self) -> None:
        with self._lock:
            self._on_work = None
            self._on_revoked = None
            self._trio_token = None
            self._work_scheduled = False

    def attach_gateway(self, on_events: Callable[[], None]) -> None:
        """Call from an asyncio loop; `on_events` then runs on that loop."""
        with self._lock:
            self._on_events.append((asyncio.get_running_loop(), on_events))

    def detach_gateway(self, on_events: Callable[[], None]) -> None:
        with self._lock:
            self._on_events = [(loop, cb) for loop, cb in self._on_events if cb is not on_events]

    def notify_work(self, device_ids: Iterable[str]) -> None:
        with self._lock:
            self._work.update(device_ids)
            if not self._work or self._work_scheduled or self._trio_token is None:
                return
            self._work_scheduled = True
        self._schedule_work()

    def notify_revoked(self, device_ids: Iterable[str]) -> None:
        with self._lock:
            self._revoked.update(device_ids)
            if not self._revoked or self._work_scheduled or self._trio_token is None:
                return
            self._work_scheduled = True
        self._schedule_work()

    def notify_events(self) -> None:
        with self._lock:
            if self._events_scheduled or not self._on_events:
                return
            self._events_scheduled = True
            targets = list(self._on_events)
        for loop, _ in {id(lp): (lp, cb) for lp, cb in targets}.values():
            try:
                loop.call_soon_threadsafe(self._deliver_events, loop)
            except RuntimeError:  # loop closed during shutdown
                pass

    def _schedule_work(self) -> None:
        token = self._trio_token
        if token is None:
            return
        try:
            token.run_sync_soon(self._deliver_work)
        except trio.RunFinishedError:
            with self._lock:
                self._work_scheduled = False

    def _deliver_work(self) -> None:
        with self._lock:
            work, self._work = self._work, set()
            revoked, self._revoked = self._revoked, set()
            self._work_scheduled = False
            on_work, on_revoked = self._on_work, self._on_revoked
        if on_revoked is not None and revoked:
            on_revoked(revoked)
        if on_work is not None and work:
            on_work(work)

    def _deliver_events(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._events_scheduled = False
            callbacks = [cb for lp, cb in self._on_events if lp is loop]
        for cb in callbacks:
            cb()
