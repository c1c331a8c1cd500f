"""The bridge's shared keepalive timer (device_bridge/keepalive.py) on trio's virtual clock:
pings every interval, a missed pong ends the session <= ping_interval + ping_timeout after
its last answer (RELIABILITY 7), an unregistered session is forgotten, and one phone whose
ping cannot be written stalls nobody else."""

from __future__ import annotations

import gc
import random
import weakref
from collections.abc import Awaitable, Callable

import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from device_bridge.keepalive import Keepalive


class FakeWs:
    """A connection whose phone answers pings at once while `answering`, or never."""

    def __init__(self, *, answering: bool = True, blocked: bool = False, closed: bool = False) -> None:
        self.answering, self.blocked, self.closed = answering, blocked, closed
        self.pings: list[float] = []

    async def ping(self, data: None = None, *, ack_on_close: bool = False) -> trio.Event:
        assert ack_on_close, "a close must not leave the check waiting for a pong"
        if self.closed:
            raise ConnectionClosed(Close(1000, ""), Close(1000, ""), True)
        if self.blocked:
            await trio.sleep_forever()  # a phone that stopped reading: the socket buffer is full
        self.pings.append(trio.current_time())
        pong = trio.Event()
        if self.answering:
            pong.set()
        return pong


class Lost:
    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(trio.current_time())


def _run(body: Callable[[Keepalive], Awaitable[None]], interval: float = 1.0, timeout: float = 1.0) -> None:
    async def main() -> None:
        keepalive = Keepalive(interval, timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(keepalive.run)
            await body(keepalive)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_answering_phone_is_pinged_every_interval_and_kept() -> None:
    ws, lost = FakeWs(), Lost()

    async def body(keepalive: Keepalive) -> None:
        keepalive.register(ws, lost)
        await trio.sleep(10.5)
        assert len(keepalive) == 1

    _run(body)
    assert ws.pings == [float(t) for t in range(1, 11)]
    assert lost.at == []


def test_a_silent_phone_is_lost_at_interval_plus_timeout() -> None:
    ws, lost = FakeWs(answering=False), Lost()

    async def body(keepalive: Keepalive) -> None:
        keepalive.register(ws, lost)
        await trio.sleep(10)
        assert len(keepalive) == 0  # lost sessions are forgotten at once

    _run(body)
    assert ws.pings == [1.0]
    assert lost.at == [2.0]


def test_a_phone_going_silent_is_lost_within_interval_plus_timeout_of_its_last_pong() -> None:
    for interval, timeout in ((1.0, 1.0), (2.0, 0.5), (1.0, 3.0)):
        ws, lost = FakeWs(), Lost()

        async def body(keepalive: Keepalive) -> None:
            keepalive.register(ws, lost)
            await trio.sleep(5.2)
            ws.answering = False
            await trio.sleep(20)

        _run(body, interval, timeout)
        last_pong = max(t for t in ws.pings if t <= 5.2)
        assert len(lost.at) == 1
        assert lost.at[0] <= last_pong + interval + timeout, (interval, timeout, ws.pings, lost.at)
        assert lost.at[0] > 5.2  # not while it still answered


def test_sessions_registered_at_any_time_are_held_to_the_bound_and_share_wakeups() -> None:
    rng = random.Random(15)
    phones = [(rng.uniform(0, 3), FakeWs(answering=False), Lost()) for _ in range(200)]

    async def body(keepalive: Keepalive) -> None:
        for at, ws, lost in sorted(phones, key=lambda p: p[0]):
            await trio.sleep_until(at)
            keepalive.register(ws, lost)
        await trio.sleep(10)

    _run(body)
    for at, ws, lost in phones:
        assert len(lost.at) == 1 and lost.at[0] <= at + 2.0
        assert len(ws.pings) == 1 and ws.pings[0] <= at + 1.0
        assert (ws.pings[0] * 32).is_integer()  # on the 1/32 s grid: shared wake-ups
    assert len({ws.pings[0] for _, ws, _ in phones}) <= 3 * 32 + 1


def test_an_unregistered_session_is_not_pinged_and_not_held() -> None:
    ws, lost = FakeWs(answering=False), Lost()
    ref = weakref.ref(ws)

    async def body(keepalive: Keepalive) -> None:
        nonlocal ws
        entry = keepalive.register(ws, lost)
        await trio.sleep(1.5)  # pinged once, its pong check pending
        keepalive.unregister(entry)
        keepalive.unregister(entry)  # twice is harmless (the timer may have done it)
        assert len(keepalive) == 0
        del ws
        gc.collect()
        assert ref() is None, "the timer still holds an ended session's connection"
        await trio.sleep(10)

    _run(body)
    assert lost.at == []


def test_a_phone_whose_ping_cannot_be_written_stalls_nobody_else() -> None:
    stuck, fine = FakeWs(blocked=True), FakeWs()
    stuck_lost, fine_lost = Lost(), Lost()

    async def body(keepalive: Keepalive) -> None:
        keepalive.register(stuck, stuck_lost)
        keepalive.register(fine, fine_lost)
        await trio.sleep(6.5)

    _run(body)
    assert stuck_lost.at == [2.0]  # a ping not even written by its check is a missed pong
    assert fine.pings == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert fine_lost.at == []


def test_a_closed_connection_is_left_to_end_on_its_own() -> None:
    ws, lost = FakeWs(closed=True), Lost()

    async def body(keepalive: Keepalive) -> None:
        keepalive.register(ws, lost)
        await trio.sleep(5)

    _run(body)
    assert lost.at == []  # the session sees the close itself; no 1011 on top of it


def test_a_registration_due_before_the_timers_wait_wakes_it() -> None:
    # timeout > interval: after A leaves, the heap's head is A's pong check at 6 s. B, registered
    # at 2.5 s, is due at 3.5 s and must not wait for 6 s.
    a, b = FakeWs(), FakeWs()

    async def body(keepalive: Keepalive) -> None:
        entry = keepalive.register(a, Lost())
        await trio.sleep(1.5)
        keepalive.unregister(entry)
        await trio.sleep(1.0)
        keepalive.register(b, Lost())
        await trio.sleep(2.25)

    _run(body, interval=1.0, timeout=5.0)
    assert a.pings == [1.0]
    assert b.pings == [3.5, 4.5]
