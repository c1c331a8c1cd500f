"""Live sessions by device: wake-ups from the bus, and replacement by a newer session."""

from __future__ import annotations

import math
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

__all__ = ["SessionHandle", "SessionRegistry"]


@dataclass(eq=False)
class SessionHandle:
    """What the registry knows of one session: who it is and how to wake or replace it."""

    device_id: str
    owner_id: str
    session_id: str
    _woken: bool = True  # dispatch once right after the handshake
    _round: bool = True  # the next wake-up runs a round (not only handed-over Delivers)
    _reload: bool = True  # the next round reloads the whole queue (the first one loads it, unless `loading`)
    _fresh: set[str] = field(default_factory=set)  # messages the next round reads again
    _event: trio.Event = field(default_factory=trio.Event)
    replaced: bool = False
    revoked: bool = False
    keepalive_lost: bool = False
    lease_lost: bool = False
    _settings_changed: bool = False
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def wake(self) -> None:
        """Something changed on this device's messages: the next round reloads its queue."""
        self._reload = True
        self.poke()

    def queued(self, message_ids: Iterable[str]) -> None:
        """These messages were stored or changed: the next round reads just them."""
        self._fresh.update(message_ids)
        self.poke()

    def poke(self) -> None:
        """There may be room now (a receipt freed the window): run a round on what is known."""
        self._round = True
        self.signal()

    def signal(self) -> None:
        """Wake the session without asking for a round (Delivers claimed at create wait)."""
        self._woken = True
        self._event.set()

    def take_round(self) -> bool:
        """Whether something asked for a round since the last one."""
        wanted, self._round = self._round, False
        return wanted

    def loading(self) -> None:
        """The session's open is about to load the queue, in a transaction that starts after
        this call: the first round plans on that load instead of loading again, unless a
        wake-up arrives from now on (it sets the reload again). Call it once the registry
        hands this handle the device's wake-ups (`SessionRegistry.opening`)."""
        self._reload = False

    def quiet_since_loading(self) -> bool:
        """No wake-up since `loading`: what the open loaded is all there is (its first round
        would only plan on it again)."""
        return not (self._reload or self._fresh or self._settings_changed)

    def take_work(self) -> tuple[bool, set[str]]:
        """(reload the whole queue?, messages to read again) for the round about to run."""
        reload, fresh = self._reload, self._fresh
        self._reload, self._fresh = False, set()
        return reload, fresh

    def settings_changed(self) -> None:
        """The owner changed this phone's pacing: push it, and dispatch under it."""
        self._settings_changed = True
        self.wake()

    def take_settings_changed(self) -> bool:
        changed, self._settings_changed = self._settings_changed, False
        return changed

    async def wait_woken(self, deadline: float = math.inf) -> None:
        """Until woken, or until trio time `deadline` (a paced or scheduled send comes due)."""
        with trio.move_on_at(deadline):
            while not self._woken:
                await self._event.wait()
                self._event = trio.Event()
        self._woken = False

    def replace(self) -> None:
        """A newer session of the same device took over: end this one (close 4003)."""
        self.replaced = True
        self.cancel_scope.cancel()

    def revoke(self) -> None:
        """The device was deleted: end this session at once (close 4004)."""
        self.revoked = True
        self.cancel_scope.cancel()

    def lose_lease(self) -> None:
        """The worker took this bridge's phones offline (it looked dead): end this session at
        once (close 1012); the phone reconnects and its open takes the device again."""
        self.lease_lost = True
        self.cancel_scope.cancel()

    def lose_keepalive(self) -> None:
        """No pong within ping_timeout (device_bridge.keepalive): end this session at once (close 1011)."""
        self.keepalive_lost = True
        self.cancel_scope.cancel()


class SessionRegistry:
    def __init__(self) -> None:
        self._by_device: dict[str, SessionHandle] = {}
        # The session being opened, by device (its open loads the queue): wake-ups reach it too.
        self._pending: dict[str, SessionHandle] = {}
        # Held only while a session of that device is being opened; dropped when unused.
        self._opening: weakref.WeakValueDictionary[str, trio.Lock] = weakref.WeakValueDictionary()
        # Devices deleted while this bridge runs: a session of one that registers after the
        # revocation signal went by (it was still being opened) is revoked at once. Deletions
        # are rare and permanent, so the set stays small.
        self._revoked: set[str] = set()

    @asynccontextmanager
    async def opening(self, device_id: str, handle: SessionHandle | None = None) -> AsyncIterator[None]:
        """Serialise the opening of sessions of one device. `handle`: the session being
        opened; inside the block the device's wake-ups (wake, queued, settings_changed)
        reach it as well as the registered session, so what changes while its open reads
        storage is not lost before it registers."""
        lock = self._opening.get(device_id)
        if lock is None:
            lock = self._opening[device_id] = trio.Lock()
        async with lock:
            if handle is not None:
                self._pending[device_id] = handle
            try:
                yield
            finally:
                if handle is not None and self._pending.get(device_id) is handle:
                    del self._pending[device_id]

    def register(self, handle: SessionHandle) -> SessionHandle | None:
        """Make `handle` the device's session; returns the one it replaces."""
        old = self._by_device.get(handle.device_id)
        self._by_device[handle.device_id] = handle
        if self._pending.get(handle.device_id) is handle:
            del self._pending[handle.device_id]
        if handle.device_id in self._revoked:
            handle.revoke()
        return old

    def unregister(self, handle: SessionHandle) -> bool:
        """Forget `handle` unless a newer session already replaced it. Returns whether it did."""
        if self._by_device.get(handle.device_id) is handle:
            del self._by_device[handle.device_id]
            return True
        return False

    def wake(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            for handle in self._woken_by(device_id):
                handle.wake()

    def queued(self, queued: dict[str, set[str]]) -> None:
        for device_id, message_ids in queued.items():
            for handle in self._woken_by(device_id):
                handle.queued(message_ids)

    def settings_changed(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            for handle in self._woken_by(device_id):
                handle.settings_changed()

    def _woken_by(self, device_id: str) -> tuple[SessionHandle, ...]:
        """The device's registered session and the one being opened (either may be absent)."""
        current, pending = self._by_device.get(device_id), self._pending.get(device_id)
        if pending is None:
            return () if current is None else (current,)
        return (pending,) if current is None else (current, pending)

    def current(self, device_id: str) -> SessionHandle | None:
        """The device's registered session here, if any."""
        return self._by_device.get(device_id)

    def device_ids(self) -> set[str]:
        """Every device with a session here, registered or being opened."""
        return set(self._by_device) | set(self._pending)

    def revoke(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            self._revoked.add(device_id)
            handle = self._by_device.get(device_id)
            if handle is not None:
                handle.revoke()

    def lose_lease(self) -> None:
        """End every session (see SessionHandle.lose_lease)."""
        for handle in [*self._by_device.values(), *self._pending.values()]:
            handle.lose_lease()

    def __len__(self) -> int:
        return len(self._by_device)
