"""Claim at create: what the writer needs to store a new message already DISPATCHED to its
connected phone, in the transaction that stores it (issue 15 item 2, DESIGN "Runtime shape").

A session publishes a `ClaimTarget` for its phone: its queue in memory, the free room in its
window, and how to hand it Delivers. Every claim on that window, by a dispatch round or by a
create, takes room from `free` under the target's lock, in the writer thread; the session
sends the Delivers and gives the room back as receipts free it. So claims made at create and
by rounds together never exceed the window.

The writer thread is the only one that changes the queue (rounds and creates run there, one
at a time); the session's thread only publishes room and takes handed-off Delivers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.messages.queue import DeviceQueue
from gateway.messages.records import DispatchUnit

__all__ = ["ClaimTarget", "ClaimTargets"]


@dataclass(eq=False)
class ClaimTarget:
    """One connected phone, as the writer sees it."""

    device_id: str
    session_id: str
    # Called (from the writer thread, after a commit) when Delivers were handed over: the
    # session's thread must then take them (`take_handed`) and send them.
    wake: Callable[[], None]
    queue: DeviceQueue | None = None
    free: int = 0  # window slots neither held by the phone nor claimed and not yet sent
    pending: int = 0  # slots claimed (by a round or a create) whose Deliver is not sent yet
    closed: bool = False
    round_room: int = 0  # the room the last round had (all used: more may wait behind it)
    handed: list[DispatchUnit] = field(default_factory=list)  # claimed at create, to send
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_room(self) -> int:
        """The room a round may claim now (writer thread)."""
        with self.lock:
            return 0 if self.closed else self.free

    def claimed(self, n: int) -> None:
        """`n` Delivers were claimed (writer thread, in the claiming transaction)."""
        with self.lock:
            self.free -= n
            self.pending += n

    def unclaimed(self, n: int) -> None:
        """The transaction of `n` claims rolled back: their room is free again, and the queue
        (which put them) must be read again from storage."""
        with self.lock:
            self.free += n
            self.pending -= n
            if self.queue is not None:
                self.queue.needs_reload = True

    def hand(self, units: list[DispatchUnit]) -> None:
        """Delivers claimed at create, after their commit (writer thread)."""
        with self.lock:
            self.handed.extend(units)
        self.wake()

    def take_handed(self) -> list[DispatchUnit]:
        """The Delivers claimed at create to send now (session thread)."""
        with self.lock:
            units, self.handed = self.handed, []
            return units

    def sent(self, n: int, window_available: int) -> None:
        """The session sent `n` claimed Delivers, or its window changed (n = 0): publish the
        room left (session thread)."""
        with self.lock:
            self.pending -= n
            self.free = max(0, window_available - self.pending)

    def keep(self, queue: DeviceQueue | None) -> None:
        """The queue the session's last round left (session thread)."""
        with self.lock:
            self.queue = queue

    def close(self) -> None:
        """The session ended: nothing more is claimed on it."""
        with self.lock:
            self.closed, self.queue, self.free = True, None, 0


class ClaimTargets:
    """The connected phones a create may claim on, by device (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_device: dict[str, ClaimTarget] = {}

    def register(self, target: ClaimTarget) -> None:
        with self._lock:
            self._by_device[target.device_id] = target

    def unregister(self, target: ClaimTarget) -> None:
        """Forget `target` (unless a newer session of its phone replaced it) and close it."""
        target.close()
        with self._lock:
            if self._by_device.get(target.device_id) is target:
                del self._by_device[target.device_id]

    def get(self, device_id: str) -> ClaimTarget | None:
        with self._lock:
            return self._by_device.get(device_id)
