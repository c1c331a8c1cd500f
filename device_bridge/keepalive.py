"""One keepalive timer for every phone session of a bridge (RELIABILITY 7).

A task, a sleep and a cancel scope per session per ping cost more than the rest of an idle
session (issue 15). Here one task keeps every session in a heap ordered by when it is next
due: a ping, or the check of a ping sent `ping_timeout` earlier. The check reads the pong
event websockets returned (`ws.ping(ack_on_close=True)` gives a `trio.Event`); nothing
waits on it. A session with no pong by then is ended through its `lost` callback, which
cancels the session from outside (the session maps that to close 1011).

Pings are due on a 1/32 s grid rounded *down*, so sessions share wake-ups (at most 32 a
second however many sessions) and a ping is never later than `ping_interval` after the
previous one: a silent phone is ended <= ping_interval + ping_timeout after its last frame.

The ping's write is the one thing that can block (a phone that stops reading fills its
socket buffer, or a send of its own holds the connection's send lock), and one such phone
must not stall every other keepalive: each write runs in a task of its own that ends as soon
as the frame is handed to the socket. A ping not even written by its check counts as lost.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio
from websockets.exceptions import ConnectionClosed

__all__ = ["Keepalive", "KeepaliveEntry", "Pingable"]

log = logging.getLogger(__name__)

# Due times are rounded down to this grid (a power of two: exact in binary floating point).
_GRID = 32


class Pingable(Protocol):
    """The part of a websockets.trio connection the timer uses."""

    async def ping(self, data: None = None, *, ack_on_close: bool = False) -> trio.Event: ...


class KeepaliveEntry:
    """One registered session. Unregistering drops its references: heap items left behind
    (removed lazily when due) then hold nothing of the session."""

    __slots__ = ("ws", "lost")

    def __init__(self, ws: Pingable, lost: Callable[[], None]) -> None:
        self.ws: Pingable | None = ws
        self.lost: Callable[[], None] | None = lost


class _Ping:
    """One ping in flight: its pong event once the frame is written; `closed` when the
    connection was closed before it could be (the session ends on its own then)."""

    __slots__ = ("pong", "closed")

    def __init__(self) -> None:
        self.pong: trio.Event | None = None
        self.closed = False

    def answered(self) -> bool:
        """A pong came (or the connection closed: `ack_on_close` sets the event then too)."""
        return self.closed or (self.pong is not None and self.pong.is_set())


# (due, tie-breaker, entry, None = a ping is due | the ping whose pong is checked)
_Item = tuple[float, int, KeepaliveEntry, "_Ping | None"]


class Keepalive:
    def __init__(self, interval: float, timeout: float) -> None:
        if not (interval > 0 and timeout > 0):
            raise ValueError("ping_interval and ping_timeout must be > 0")
        self.interval, self.timeout = interval, timeout
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._live = 0
        self._nursery: trio.Nursery | None = None
        self._sleep: trio.CancelScope | None = None  # the timer's wait, while it waits

    def __len__(self) -> int:
        """Sessions registered now."""
        return self._live

    def _push(self, due: float, entry: KeepaliveEntry, ping: _Ping | None) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), entry, ping))
        if self._sleep is not None and due < self._sleep.deadline:
            self._sleep.deadline = due

    def _next_ping(self, now: float) -> float:
        due = math.floor((now + self.interval) * _GRID) / _GRID
        return due if due > now else now + self.interval  # an interval under one grid step

    def register(self, ws: Pingable, lost: Callable[[], None]) -> KeepaliveEntry:
        """Ping `ws` from `ping_interval` on; `lost()` is called once if a pong is missed."""
        entry = KeepaliveEntry(ws, lost)
        self._live += 1
        self._push(self._next_ping(trio.current_time()), entry, None)
        return entry

    def unregister(self, entry: KeepaliveEntry) -> None:
        """The session ended: never ping it again, and hold nothing of it."""
        if entry.ws is not None:
            entry.ws = entry.lost = None
            self._live -= 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                self._run_due(trio.current_time())

    def _run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry, ping = heapq.heappop(heap)
            if entry.ws is None:
                continue  # unregistered meanwhile
            if ping is None:
                ping = _Ping()
                assert self._nursery is not None
                self._nursery.start_soon(self._send, entry.ws, ping)
                self._push(now + self.timeout, entry, ping)
                self._push(self._next_ping(now), entry, None)
            elif not ping.answered():
                lost = entry.lost
                self.unregister(entry)
                assert lost is not None
                lost()

    @staticmethod
    async def _send(ws: Pingable, ping: _Ping) -> None:
        try:
            ping.pong = await ws.ping(ack_on_close=True)
        except ConnectionClosed:
            ping.closed = True  # the session is ending on its own, as it would without us
        except Exception:  # a bug here must cost one session, not every keepalive
            log.exception("keepalive ping failed")
