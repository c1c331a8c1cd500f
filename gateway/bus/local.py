"""In-process bus for `smsgw serve`: the one module that hops between the two event loops.

Five signals flow: "these messages were queued or changed on device D" (the session
reloads just them), "device D has work" (anything else changed: the session reloads its
whole queue), "device D was deleted" and "device D's settings changed" (gateway ->
bridge, also bridge -> itself), and "new events were logged" (anyone -> gateway
watchers). A sixth, "device D's session S opened", only matters across processes
(PostgresBus): another bridge ends its older session of D. Signals carry ids, never bodies. Hops are coalesced: while a hop
is scheduled and not yet run, further signals only add to the pending set, so a burst
of N sends costs one hop, not N (DESIGN.md "What things cost here").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import trio

__all__ = ["Bus", "LocalBus"]


_DeviceCallback = Callable[[set[str]], None]
_QueuedCallback = Callable[[dict[str, set[str]]], None]
_ReplacedCallback = Callable[[dict[str, str]], None]
_WatchCallback = Callable[[dict[str, set[str]]], None]
# The device signals, in the order the bridge gets them when several are pending.
_REVOKED, _SETTINGS, _WORK = "revoked", "settings", "work"


class Bus(Protocol):
    def attach_bridge(
        self,
        on_work: _DeviceCallback,
        on_revoked: _DeviceCallback | None = None,
        on_settings: _DeviceCallback | None = None,
        on_queued: _QueuedCallback | None = None,
    ) -> None:
        """Subscribe the bridge (from its trio thread) to work, revocation, settings and queued signals."""

    def notify_work(self, device_ids: Iterable[str]) -> None:
        """Something changed on these devices' messages (their sessions reload their queues).
        Thread-safe, non-blocking."""

    def notify_queued(self, queued: Mapping[str, Iterable[str]]) -> None:
        """These messages (by device) were stored or changed: their devices' sessions read
        just them (a new message is dispatched at once). Thread-safe, non-blocking."""

    def notify_revoked(self, device_ids: Iterable[str]) -> None:
        """These devices were deleted: end their live sessions. Thread-safe, non-blocking."""

    def notify_settings(self, device_ids: Iterable[str]) -> None:
        """These devices' pacing settings changed: push them. Thread-safe, non-blocking."""

    def notify_events(self) -> None:
        """New rows were appended to the event log. Thread-safe, non-blocking."""

    def notify_replaced(self, sessions: Mapping[str, str]) -> None:
        """These devices' sessions (device -> session id) just opened: any other session of
        the same device, on another bridge, must end (close 4003). Thread-safe, non-blocking."""


class LocalBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, set[str]] = {_REVOKED: set(), _SETTINGS: set(), _WORK: set()}
        self._callbacks: dict[str, _DeviceCallback | None] = {}
        self._queued: dict[str, set[str]] = {}
        self._on_queued: _QueuedCallback | None = None
        self._replaced: dict[str, str] = {}
        self._on_replaced: _ReplacedCallback | None = None
        self._work_scheduled = False
        self._events_scheduled = False
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._on_events: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        # Device signals for asyncio-side watchers (the SMSGate mobile API's phones): kind -> ids.
        self._watchers: list[tuple[asyncio.AbstractEventLoop, _WatchCallback]] = []
        self._watched: dict[str, set[str]] = {}
        self._watch_scheduled = False

    def attach_bridge(
        self,
        on_work: _DeviceCallback,
        on_revoked: _DeviceCallback | None = None,
        on_settings: _DeviceCallback | None = None,
        on_queued: _QueuedCallback | None = None,
        on_replaced: _ReplacedCallback | None = None,
    ) -> None:
        """Call from the bridge's trio thread; the callbacks then run there, never concurrently.
        Without `on_queued`, a queued signal reaches `on_work` (a whole reload does no harm)."""
        with self._lock:
            self._callbacks = {_REVOKED: on_revoked, _SETTINGS: on_settings, _WORK: on_work}
            self._on_queued = on_queued
            self._on_replaced = on_replaced
            self._trio_token = trio.lowlevel.current_trio_token()
            pending = (any(self._pending.values()) or bool(self._queued) or bool(self._replaced)) and not self._work_scheduled
            self._work_scheduled = self._work_scheduled or pending
        if pending:
            self._schedule_work()

    def detach_bridge(self) -> None:
        with self._lock:
            self._callbacks = {}
            self._on_queued = None
            self._on_replaced = None
            self._trio_token = None
            self._work_scheduled = False

    def attach_gateway(self, on_events: Callable[[], None]) -> None:
        """Call from an asyncio loop; `on_events` then runs on that loop."""
        with self._lock:
            self._on_events.append((asyncio.get_running_loop(), on_events))

    def detach_gateway(self, on_events: Callable[[], None]) -> None:
        with self._lock:
            self._on_events = [(loop, cb) for loop, cb in self._on_events if cb is not on_events]

    def watch_devices(self, on_signals: _WatchCallback) -> None:
        """Call from an asyncio loop: `on_signals` then runs on that loop with the device
        signals since its last call, by kind ("work": queued or changed messages, "revoked",
        "settings"), coalesced like the bridge's. For phones served outside the bridge (the
        SMSGate mobile API: docs/smsgate.md)."""
        with self._lock:
            self._watchers.append((asyncio.get_running_loop(), on_signals))

    def unwatch_devices(self, on_signals: _WatchCallback) -> None:
        with self._lock:
            self._watchers = [(loop, cb) for loop, cb in self._watchers if cb is not on_signals]

    def _watch(self, kind: str, device_ids: Iterable[str]) -> None:
        """Hand device signals to the watchers: one hop per loop while signals keep coming."""
        if not self._watchers:  # the usual case: nobody watches, no lock taken
            return
        with self._lock:
            self._watched.setdefault(kind, set()).update(device_ids)
            if self._watch_scheduled or not self._watched[kind]:
                return
            self._watch_scheduled = True
            loops = {id(loop): loop for loop, _ in self._watchers}
        for loop in loops.values():
            try:
                loop.call_soon_threadsafe(self._deliver_watched, loop)
            except RuntimeError:  # loop closed during shutdown
                pass

    def _deliver_watched(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            taken, self._watched = self._watched, {}
            self._watch_scheduled = False
            callbacks = [cb for lp, cb in self._watchers if lp is loop]
        for cb in callbacks:
            cb(taken)

    def notify_work(self, device_ids: Iterable[str]) -> None:
        self._signal(_WORK, device_ids)

    def notify_revoked(self, device_ids: Iterable[str]) -> None:
        self._signal(_REVOKED, device_ids)

    def notify_settings(self, device_ids: Iterable[str]) -> None:
        self._signal(_SETTINGS, device_ids)

    def notify_queued(self, queued: Mapping[str, Iterable[str]]) -> None:
        if self._watchers:
            self._watch(_WORK, [d for d, ids in queued.items() if ids])
        with self._lock:
            for device_id, ids in queued.items():
                self._queued.setdefault(device_id, set()).update(ids)
            if not self._queued or self._work_scheduled or self._trio_token is None:
                return
            self._work_scheduled = True
        self._schedule_work()

    def notify_replaced(self, sessions: Mapping[str, str]) -> None:
        """Nothing to do in one process: the registry ends a device's older session itself
        when the newer one registers. (PostgresBus tells the other bridges.)"""

    def replaced_elsewhere(self, sessions: Mapping[str, str]) -> None:
        """Another process opened these sessions: hand them to the bridge's `on_replaced`
        (PostgresBus's listener calls this). Thread-safe, non-blocking."""
        with self._lock:
            self._replaced.update(sessions)
            if not self._replaced or self._work_scheduled or self._trio_token is None:
                return
            self._work_scheduled = True
        self._schedule_work()

    def _signal(self, kind: str, device_ids: Iterable[str]) -> None:
        """Add to the pending set of `kind`; schedule one hop to the bridge unless one is due."""
        if self._watchers:
            device_ids = set(device_ids)
            self._watch(kind, device_ids)
        with self._lock:
            pending = self._pending[kind]
            pending.update(device_ids)
            if not pending or self._work_scheduled or self._trio_token is None:
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
            taken = {kind: ids for kind, ids in self._pending.items() if ids}
            self._pending = {kind: set() for kind in self._pending}
            queued, self._queued = self._queued, {}
            replaced, self._replaced = self._replaced, {}
            self._work_scheduled = False
            callbacks = dict(self._callbacks)
            on_queued = self._on_queued
            on_replaced = self._on_replaced
        if replaced and on_replaced is not None:
            on_replaced(replaced)
        if queued and on_queued is None:
            taken[_WORK] = taken.get(_WORK, set()) | set(queued)
        for kind in (_REVOKED, _SETTINGS, _WORK):
            callback = callbacks.get(kind)
            if callback is not None and kind in taken:
                callback(taken[kind])
        if queued and on_queued is not None:
            on_queued(queued)

    def _deliver_events(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._events_scheduled = False
            callbacks = [cb for lp, cb in self._on_events if lp is loop]
        for cb in callbacks:
            cb()
