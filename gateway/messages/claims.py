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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.messages.queue import DeviceQueue
from gateway.messages.records import DispatchUnit
from gateway.storage.engine import ON_ROLLBACK

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
    # Messages stored PENDING for this phone that no round has read into the queue yet, and
    # whether something else changed its messages behind the queue (a batch, a reroute, new
    # settings): while either holds, the queue is not the whole story and a create must not
    # claim (it could overtake a waiting message, or pace on stale history). Cleared by the
    # round that reads them (a full reload clears both).
    unread: set[str] = field(default_factory=set)
    behind: bool = False
    round_room: int = 0  # the room the last round had (all used: more may wait behind it)
    handed: list[DispatchUnit] = field(default_factory=list)  # claimed at create, to send
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note_unread(self, info: dict[Any, Any], message_ids: Iterable[str]) -> None:
        """See `ClaimTargets.note_unread`."""
        ids = set(message_ids)
        with self.lock:
            self.unread |= ids

        def forget() -> None:
            with self.lock:
                self.unread -= ids

        info.setdefault(ON_ROLLBACK, []).append(forget)

    def may_claim_at_create(self) -> bool:
        """Whether the queue is the whole story and empty, with room (call under `lock`)."""
        queue = self.queue
        return not (
            self.closed or self.free <= 0 or self.unread or self.behind or queue is None
            or queue.busy or queue.needs_reload or len(queue)
        )

    def caught_up(self, queue: DeviceQueue | None, read: set[str] | None) -> None:
        """A round committed its claims on `queue` (writer thread): it is the queue to plan on
        now, and the messages it read (None: all, a full reload) are no longer unread."""
        with self.lock:
            self.queue = queue
            if read is None:
                self.unread.clear()
                self.behind = False
            else:
                self.unread -= read

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
        """Set the queue creates plan on (a round does it in its job: `caught_up`)."""
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

    def note_unread(self, info: dict[Any, Any], device_id: str | None, message_ids: Iterable[str]) -> None:
        """These messages are being stored PENDING for `device_id` without passing its queue
        (call in the storing transaction; `info` is its session's info: a rollback forgets them)."""
        target = self.get(device_id) if device_id else None
        if target is not None:
            target.note_unread(info, message_ids)

    def note_behind(self, device_ids: Iterable[str | None]) -> None:
        """These devices' messages or settings changed behind their queues (in the transaction)."""
        for device_id in device_ids:
            target = self.get(device_id) if device_id else None
            if target is not None:
                with target.lock:
                    target.behind = True
