"""The bus across processes on PostgreSQL (gateway/bus/postgres.py, issue 16).

Two PostgresBus objects on one database stand for two processes (each has its own two
connections, as a process would): each has a bridge attached from a trio loop and a gateway
from an asyncio loop, in threads, and records what reaches them."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio

from gateway.bus.postgres import MAX_PAYLOAD, PostgresBus, libpq_url, payloads
from gateway.webhooks.outbox import ENQUEUED
from tests.helpers.postgres import throwaway_database

_WAIT = 10.0  # seconds any one signal may take here (they take milliseconds)


class Side:
    """One process's callers: a bridge (trio) and a gateway (asyncio), each in a thread."""

    def __init__(self, bus: PostgresBus) -> None:
        self.bus = bus
        self.got: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        ready = threading.Barrier(3)
        self._threads = [
            threading.Thread(target=self._bridge, args=(ready,), daemon=True),
            threading.Thread(target=self._gateway, args=(ready,), daemon=True),
        ]
        for t in self._threads:
            t.start()
        ready.wait(timeout=_WAIT)

    def _bridge(self, ready: threading.Barrier) -> None:
        async def main() -> None:
            put = self.got.put
            self.bus.attach_bridge(
                lambda ids: put(("work", set(ids))), lambda ids: put(("revoked", set(ids))),
                lambda ids: put(("settings", set(ids))), lambda q: put(("queued", {d: set(i) for d, i in q.items()})),
                on_replaced=lambda sessions: put(("replaced", dict(sessions))),
            )
            ready.wait(timeout=_WAIT)
            for _ in range(int(60 / 0.01)):  # bounded: a test never runs this long
                if self._stop.is_set():
                    break
                await trio.sleep(0.01)

        trio.run(main)

    def _gateway(self, ready: threading.Barrier) -> None:
        async def main() -> None:
            self.bus.attach_gateway(lambda: self.got.put(("events", None)))
            ready.wait(timeout=_WAIT)
            for _ in range(int(60 / 0.01)):
                if self._stop.is_set():
                    break
                await asyncio.sleep(0.01)

        asyncio.run(main())

    def next(self, kind: str) -> Any:
        """The next signal of `kind` (others seen first are dropped)."""
        deadline = time.monotonic() + _WAIT
        while time.monotonic() < deadline:
            try:
                got_kind, value = self.got.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if got_kind == kind:
                return value
        raise AssertionError(f"no {kind} signal within {_WAIT} s")

    def nothing_more(self, settle: float = 0.3) -> list[tuple[str, Any]]:
        time.sleep(settle)
        out = []
        while not self.got.empty():
            out.append(self.got.get_nowait())
        return out

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.bus.close()


@pytest.fixture
def two() -> Iterator[tuple[Side, Side, str]]:
    with throwaway_database() as url:
        a, b = PostgresBus(url), PostgresBus(url)
        a.start()
        b.start()
        sides = Side(a), Side(b)
        try:
            yield sides[0], sides[1], url
        finally:
            for side in sides:
                side.close()


def test_payloads_stay_under_the_limit_and_keep_every_id() -> None:
    devices = [f"01DEVICE{i:018d}" for i in range(900)]
    queued = {d: [f"01MESSAGE{d[-4:]}{j:013d}" for j in range(40)] for d in devices[:30]}
    for kind, body in (("w", devices), ("q", queued)):
        texts = list(payloads("origin", kind, body))
        assert len(texts) > 1  # it had to split
        assert all(len(t.encode()) <= MAX_PAYLOAD for t in texts)
        decoded = [json.loads(t) for t in texts]
        assert all(p["o"] == "origin" for p in decoded)
        if kind == "w":
            assert [d for p in decoded for d in p["w"]] == devices
        else:
            merged: dict[str, list[str]] = {}
            for p in decoded:
                for d, ids in p["q"].items():
                    merged.setdefault(d, []).extend(ids)
            assert merged == queued


def test_the_bus_needs_a_postgresql_url() -> None:
    assert libpq_url("postgresql+psycopg://u@127.0.0.1:5432/db") == "postgresql://u@127.0.0.1:5432/db"
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresBus("sqlite:///smsgw.db")


def test_every_signal_reaches_the_other_process_and_this_one_once(two: tuple[Side, Side, str]) -> None:
    a, b, _ = two
    a.bus.notify_queued({"d1": ["m1", "m2"]})
    assert b.next("queued") == {"d1": {"m1", "m2"}}
    assert a.next("queued") == {"d1": {"m1", "m2"}}  # delivered here at once, by the LocalBus
    for kind, notify in (("work", a.bus.notify_work), ("revoked", a.bus.notify_revoked), ("settings", a.bus.notify_settings)):
        notify({"d2"})
        assert b.next(kind) == {"d2"}
        assert a.next(kind) == {"d2"}
    a.bus.notify_events()
    assert b.next("events") is None and a.next("events") is None
    a.bus.notify_replaced({"d4": "session-4"})  # only for the others: here the registry did it
    assert b.next("replaced") == {"d4": "session-4"}
    b.bus.notify_work({"d3"})  # and the other way
    assert a.next("work") == {"d3"}
    assert b.next("work") == {"d3"}
    # Nothing came back to its sender a second time, nor twice to the other side.
    assert a.nothing_more() == [] and b.nothing_more() == []


def test_a_signal_bigger_than_a_payload_arrives_whole(two: tuple[Side, Side, str]) -> None:
    a, b, _ = two
    ids = {f"01MESSAGE{i:017d}" for i in range(3000)}  # about 90 KB of ids
    a.bus.notify_queued({"d1": ids, "d2": {"m"}})
    got: dict[str, set[str]] = {}
    while got.get("d1", set()) != ids:
        for device_id, more in b.next("queued").items():
            got.setdefault(device_id, set()).update(more)
    assert got == {"d1": ids, "d2": {"m"}}


def test_a_dropped_listener_reconnects_and_catches_up(two: tuple[Side, Side, str]) -> None:
    a, b, url = two
    gaps: queue.Queue[bool] = queue.Queue()
    b.bus.on_gap(lambda: gaps.put(True))
    old = b.bus.listener_pid
    with psycopg.connect(libpq_url(url), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone() == (True,)
    assert gaps.get(timeout=_WAIT)  # reconnected, then asked its callers to catch up
    assert b.bus.reconnects == 1 and b.bus.listener_pid != old
    assert b.next("events") is None  # the attached gateway refills from the log
    a.bus.notify_work({"d9"})
    assert b.next("work") == {"d9"}


def test_a_sender_that_lost_its_connection_sends_again(two: tuple[Side, Side, str]) -> None:
    a, b, url = two
    a.bus.notify_work({"d1"})
    assert b.next("work") == {"d1"}
    with psycopg.connect(libpq_url(url), autocommit=True) as admin:
        # Every connection of this database but the admin's and the two listeners: the senders.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid NOT IN (pg_backend_pid(), %s, %s)",
            (a.bus.listener_pid, b.bus.listener_pid),
        )
    a.bus.notify_work({"d2"})
    assert b.next("work") == {"d2"}


def test_stored_webhook_deliveries_wake_the_worker_process_only() -> None:
    """A process that stores deliveries hands the outbox's flag to the worker processes with
    its events signal: the worker claims when there is something to deliver, not on every
    event. (Both buses are in this process here, so the one flag shows both ends.)"""
    with throwaway_database() as url:
        gateway, worker = PostgresBus(url), PostgresBus(url, delivers_webhooks=True)
        gateway.start()
        worker.start()
        sides = Side(gateway), Side(worker)
        try:
            ENQUEUED.clear()
            gateway.notify_events()  # nothing stored for a webhook
            assert sides[1].next("events") is None
            assert not ENQUEUED.is_set()
            ENQUEUED.set()  # a commit stored deliveries (gateway.webhooks.outbox)
            gateway.notify_events()
            assert not ENQUEUED.is_set()  # taken by the storing process's bus, at once...
            assert sides[1].next("events") is None
            assert ENQUEUED.is_set()  # ...and set by the worker's, before its events wake-up
        finally:
            ENQUEUED.clear()
            for side in sides:
                side.close()


def test_signals_put_back_after_a_failed_flush_keep_what_came_since() -> None:
    """A flush that failed goes out with the next one; what was signalled meanwhile is kept,
    and for a device's session the newer one wins."""
    from gateway.bus.postgres import _Pending

    failed = _Pending(queued={"d1": {"m1"}}, replaced={"d1": "old", "d2": "s2"}, events=True)
    failed.devices["w"].add("d1")
    since = _Pending(queued={"d1": {"m2"}}, replaced={"d1": "new"}, auth=True)
    failed.update(since)
    assert failed.queued == {"d1": {"m1", "m2"}} and failed.replaced == {"d1": "new", "d2": "s2"}
    assert failed.devices["w"] == {"d1"} and failed.events and failed.auth and not failed.hooks
    decoded = [json.loads(t) for t in failed.payloads("me")]
    assert [next(k for k in p if k != "o") for p in decoded] == ["a", "x", "w", "q", "e"]
    assert not _Pending() and bool(_Pending(auth=True))
