"""gateway.bus.LocalBus: hops between a trio loop (bridge) and asyncio loops (gateway),
from any thread, coalescing signals into one hop while a hop is pending.

Real threads, every wait bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from gateway.bus import LocalBus

WAIT = 5.0


@dataclass
class TrioSide:
    """A trio loop in its own thread with the bridge attached to `bus`."""

    bus: LocalBus
    calls: list[set[str]] = field(default_factory=list)
    call_threads: list[int] = field(default_factory=list)
    thread_id: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    got: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def on_work(self, ids: set[str]) -> None:
        self.calls.append(set(ids))
        self.call_threads.append(threading.get_ident())
        self.got.set()

    async def main(self, before_ready: Callable[[], None] | None) -> None:
        self.thread_id = threading.get_ident()
        self.bus.attach_bridge(self.on_work)
        if before_ready is not None:
            before_ready()
        self.ready.set()
        with trio.fail_after(WAIT * 2):
            while not self.stop.is_set():
                await trio.sleep(0.005)
        self.bus.detach_bridge()

    def run(self, before_ready: Callable[[], None] | None) -> None:
        try:
            trio.run(self.main, before_ready)
        except BaseException as exc:  # surfaced by the test
            self.error.append(exc)
            self.ready.set()


@contextmanager
def trio_thread(bus: LocalBus, before_ready: Callable[[], None] | None = None) -> Iterator[TrioSide]:
    side = TrioSide(bus)
    thread = threading.Thread(target=side.run, args=(before_ready,), daemon=True)
    thread.start()
    assert side.ready.wait(WAIT)
    try:
        yield side
    finally:
        side.stop.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert not side.error, side.error


@dataclass
class AsyncioSide:
    bus: LocalBus
    calls: int = 0
    call_threads: list[int] = field(default_factory=list)
    thread_id: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    got: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def on_events(self) -> None:
        self.calls += 1
        self.call_threads.append(threading.get_ident())
        self.got.set()

    async def main(self) -> None:
        self.thread_id = threading.get_ident()
        self.loop = asyncio.get_running_loop()
        self.bus.attach_gateway(self.on_events)
        self.ready.set()
        async with asyncio.timeout(WAIT * 2):
            while not self.stop.is_set():
                await asyncio.sleep(0.005)
        self.bus.detach_gateway(self.on_events)

    def run(self) -> None:
        try:
            asyncio.run(self.main())
        except BaseException as exc:
            self.error.append(exc)
            self.ready.set()


@contextmanager
def asyncio_thread(bus: LocalBus) -> Iterator[AsyncioSide]:
    side = AsyncioSide(bus)
    thread = threading.Thread(target=side.run, daemon=True)
    thread.start()
    assert side.ready.wait(WAIT)
    try:
        yield side
    finally:
        side.stop.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert not side.error, side.error


def block_loop_soon(loop_call: Callable[[Callable[[], None]], None]) -> tuple[threading.Event, threading.Event]:
    """Park the loop's thread inside a callback until released (so hops cannot run)."""
    parked, release = threading.Event(), threading.Event()

    def park() -> None:
        parked.set()
        release.wait(WAIT)

    loop_call(park)
    assert parked.wait(WAIT)
    return parked, release


def test_work_from_a_foreign_thread_reaches_the_trio_loop() -> None:
    bus = LocalBus()
    with trio_thread(bus) as side:
        sender = threading.Thread(target=bus.notify_work, args=(["dev-1"],))
        sender.start()
        sender.join(WAIT)
        assert side.got.wait(WAIT)
        assert side.calls == [{"dev-1"}]
        assert side.call_threads == [side.thread_id]
        assert side.thread_id != threading.get_ident()


def test_work_is_coalesced_while_a_hop_is_pending() -> None:
    bus = LocalBus()
    token_box: list[trio.lowlevel.TrioToken] = []
    with trio_thread(bus, before_ready=lambda: token_box.append(trio.lowlevel.current_trio_token())) as side:
        _, release = block_loop_soon(token_box[0].run_sync_soon)
        senders = [
            threading.Thread(target=lambda i=i: [bus.notify_work([f"dev-{i % 7}"]) for _ in range(20)])
            for i in range(10)
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join(WAIT)
        bus.notify_work(["dev-x", "dev-y"])
        release.set()
        assert side.got.wait(WAIT)
        # Give a wrongly scheduled second hop the chance to show up.
        for _ in range(20):
            token_box[0].run_sync_soon(lambda: None)
        bus_settled = threading.Event()
        token_box[0].run_sync_soon(bus_settled.set)
        assert bus_settled.wait(WAIT)
        assert side.calls == [{f"dev-{i}" for i in range(7)} | {"dev-x", "dev-y"}]


def test_work_after_a_hop_gets_a_new_hop() -> None:
    bus = LocalBus()
    with trio_thread(bus) as side:
        bus.notify_work(["a"])
        assert side.got.wait(WAIT)
        side.got.clear()
        bus.notify_work(["b"])
        assert side.got.wait(WAIT)
        assert side.calls == [{"a"}, {"b"}]


def test_empty_work_does_not_hop() -> None:
    bus = LocalBus()
    with trio_thread(bus) as side:
        bus.notify_work([])
        bus.notify_work(["a"])
        assert side.got.wait(WAIT)
        assert side.calls == [{"a"}]


def test_work_before_the_bridge_attaches_is_delivered_on_attach() -> None:
    bus = LocalBus()
    bus.notify_work(["early-1"])
    bus.notify_work(["early-2"])
    with trio_thread(bus) as side:
        assert side.got.wait(WAIT)
        assert side.calls == [{"early-1", "early-2"}]


def test_work_while_detached_is_kept_for_the_next_bridge() -> None:
    bus = LocalBus()
    with trio_thread(bus) as side:
        bus.notify_work(["a"])
        assert side.got.wait(WAIT)
    bus.notify_work(["later"])
    with trio_thread(bus) as side2:
        assert side2.got.wait(WAIT)
        assert side2.calls == [{"later"}]
    assert side.calls == [{"a"}]


def test_events_from_a_foreign_thread_reach_the_asyncio_loop() -> None:
    bus = LocalBus()
    with asyncio_thread(bus) as side:
        sender = threading.Thread(target=bus.notify_events)
        sender.start()
        sender.join(WAIT)
        assert side.got.wait(WAIT)
        assert side.calls == 1
        assert side.call_threads == [side.thread_id]


def test_events_are_coalesced_while_a_hop_is_pending() -> None:
    bus = LocalBus()
    with asyncio_thread(bus) as side:
        assert side.loop is not None
        loop = side.loop
        _, release = block_loop_soon(loop.call_soon_threadsafe)
        senders = [threading.Thread(target=lambda: [bus.notify_events() for _ in range(50)]) for _ in range(8)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(WAIT)
        release.set()
        assert side.got.wait(WAIT)
        settled = threading.Event()
        loop.call_soon_threadsafe(settled.set)
        assert settled.wait(WAIT)
        assert side.calls == 1
        # And the next signal hops again.
        side.got.clear()
        bus.notify_events()
        assert side.got.wait(WAIT)
        assert side.calls == 2


def test_events_reach_every_attached_loop_and_stop_after_detach() -> None:
    bus = LocalBus()
    with asyncio_thread(bus) as one, asyncio_thread(bus) as two:
        bus.notify_events()
        assert one.got.wait(WAIT) and two.got.wait(WAIT)
        assert (one.calls, two.calls) == (1, 1)
        assert one.call_threads[0] != two.call_threads[0]
    # Both detached: a signal with nobody listening is a no-op, not an error.
    bus.notify_events()


def test_both_directions_at_once() -> None:
    bus = LocalBus()
    with trio_thread(bus) as bridge, asyncio_thread(bus) as gateway:
        threads = [
            threading.Thread(target=bus.notify_work, args=([f"d{i}"],)) for i in range(5)
        ] + [threading.Thread(target=bus.notify_events) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert bridge.got.wait(WAIT) and gateway.got.wait(WAIT)

        def all_work() -> set[str]:
            return set().union(*bridge.calls)

        for _ in range(int(WAIT / 0.01)):
            if all_work() == {f"d{i}" for i in range(5)}:
                break
            threading.Event().wait(0.01)
        assert all_work() == {f"d{i}" for i in range(5)}
        assert set(bridge.call_threads) == {bridge.thread_id}
        assert set(gateway.call_threads) == {gateway.thread_id}


def test_work_for_a_finished_trio_run_is_kept_for_the_next_bridge() -> None:
    """The bridge's loop ended without detaching (a crash): signals must not be lost or
    wedge the bus; the next bridge gets them."""
    bus = LocalBus()

    async def attach_and_leave() -> None:
        bus.attach_bridge(lambda ids: None)

    trio.run(attach_and_leave)
    bus.notify_work(["after-crash"])  # the stale token refuses the hop
    bus.notify_work(["after-crash-2"])
    with trio_thread(bus) as side:
        assert side.got.wait(WAIT)
        assert side.calls == [{"after-crash", "after-crash-2"}]
