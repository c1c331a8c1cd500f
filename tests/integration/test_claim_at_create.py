"""Claim at create over the real server (`smsgw serve`) and a raw phone (tests/helpers/raw_phone.py),
which holds its Delivers until the test accepts them.

(a) a SendMessage to a connected idle phone is claimed in the create's transaction: the phone
    gets the Deliver, and WatchMessages shows PENDING, DISPATCHED (both stamped with the
    create's time: one transaction), then ACCEPTED, SENT, DELIVERED, each once;
(b) ten concurrent SendMessages to a phone with a window of 2 that accepts nothing: it gets
    2 Delivers, no more, until it accepts; then every message reaches it exactly once;
(c) the phone goes away right after sends were claimed for it: when it comes back, every
    message reaches it exactly once (the claimed ones were requeued by the session's close).

Every wait is bounded; nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from smsgw.v1 import common_pb2
from smsgw_client import Client

from device_bridge.protocol import DeliverReceived, Encoding, ReceiptState
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess
from tests.helpers.watch import FINAL

# The session's first round (after its Welcome) must have run for a send to find its queue
# kept and empty; this is a settle delay, not a measured duration.
_SETTLE = 1.0
_QUIET = 1.5  # no more Delivers for this long: the phone has what the bridge will send it now
_LIMIT = 20.0  # bound on waiting for Delivers and events


def number(i: int) -> str:
    return f"+1555{4100000 + i:07d}"


@pytest.fixture(scope="module")
def claim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("claim") / "data") as proc:
        yield proc


def delivers_until_quiet(phone: RawPhone, quiet: float = _QUIET, limit: float = _LIMIT) -> list[str]:
    """The Delivers that arrive until none has for `quiet` seconds (Acks skipped)."""
    got: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            event = phone.next_event(quiet)
        except TimeoutError:
            return got
        if isinstance(event, DeliverReceived):
            got.append(event.delivery.message_id)
    raise AssertionError(f"Delivers never stopped coming within {limit}s: {len(got)}")


def delivers(phone: RawPhone, n: int, limit: float = _LIMIT) -> list[str]:
    """The next `n` Delivers (bounded)."""
    deadline = time.monotonic() + limit
    got: list[str] = []
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {n} Delivers arrived"
        event = phone.next_event(left)
        if isinstance(event, DeliverReceived):
            got.append(event.delivery.message_id)
    return got


def complete(phone: RawPhone, mid: str) -> None:
    """The phone takes the message and reports it sent and delivered."""
    for state in (ReceiptState.ACCEPTED, ReceiptState.SENT, ReceiptState.DELIVERED):
        phone.receipt(mid, state)


class Watcher:
    """WatchMessages from the start of the log, opened (in a thread) before the sends; it
    collects every event, and `until_final` waits (bounded) until `ids` are all final. The
    stream ends at its own deadline (the thread is a daemon)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[Any] = []
        self.done: set[str] = set()
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.client.watch_messages(after_event_id=0, timeout=_LIMIT * 2):
                with self.changed:
                    self.events.append(event)
                    if event.message_state in FINAL:
                        self.done.add(event.message_id)
                    self.changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by `until_final`
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def until_final(self, ids: set[str]) -> dict[str, list[Any]]:
        with self.changed:
            self.changed.wait_for(lambda: ids <= self.done or self.error is not None, _LIMIT)
            assert ids <= self.done, f"WatchMessages never saw {sorted(ids - self.done)} final ({self.error})"
            events = list(self.events)
        out: dict[str, list[Any]] = {m: [] for m in ids}
        for e in events:
            if e.message_id in out:
                out[e.message_id].append(e)
        return out


def test_a_send_to_an_idle_phone_is_dispatched_by_its_create(claim_server: ServerProcess) -> None:
    server = claim_server
    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    try:
        time.sleep(_SETTLE)
        with Client(server.grpc_target, server.token) as client:
            watcher = Watcher(client)
            message = client.send_message([number(1)], "claimed at create")
            assert message.state == common_pb2.PENDING  # answered as stored
            assert delivers(phone, 1) == [message.id]
            complete(phone, message.id)
            history = watcher.until_final({message.id})[message.id]
        assert [e.state for e in history] == [
            common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.ACCEPTED, common_pb2.SENT, common_pb2.DELIVERED,
        ]
        assert len({e.event_id for e in history}) == len(history)
        pending, dispatched = history[0], history[1]
        assert dispatched.event_id == pending.event_id + 1
        # One transaction stored it and dispatched it: both events carry the create's time
        # (a dispatch round would stamp its own, later, time).
        assert dispatched.time == pending.time, "DISPATCHED by a round, not at create"
        assert delivers_until_quiet(phone, quiet=0.5) == []  # and only once
    finally:
        phone.ws.close()


def test_a_small_window_holds_concurrent_sends_and_each_arrives_once(claim_server: ServerProcess) -> None:
    server = claim_server
    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url, window=2)
    try:
        time.sleep(_SETTLE)
        with Client(server.grpc_target, server.token) as client:
            watcher = Watcher(client)
            with ThreadPoolExecutor(10) as pool:
                futures = [pool.submit(client.send_message, [number(100 + i)], f"burst {i}") for i in range(10)]
                ids = {f.result(timeout=_LIMIT).id for f in futures}
            assert len(ids) == 10
            # Holding everything: the window (2) is all it gets (its protocol session would
            # also refuse a third: WINDOW_EXCEEDED).
            held = delivers_until_quiet(phone)
            assert len(held) == 2 and set(held) <= ids, held
            # Now it accepts and completes each as it comes; every message arrives once.
            got = list(held)
            for mid in held:
                complete(phone, mid)
            while len(got) < 10:
                [mid] = delivers(phone, 1)
                got.append(mid)
                complete(phone, mid)
            assert delivers_until_quiet(phone, quiet=0.5) == []
            assert Counter(got) == Counter(ids), "lost or twice"
            history = watcher.until_final(ids)
        for mid, events in history.items():
            states = [e.state for e in events]
            assert states == [
                common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.ACCEPTED, common_pb2.SENT, common_pb2.DELIVERED,
            ], (mid, states)
    finally:
        phone.ws.close()


def test_claimed_sends_of_a_phone_that_went_away_reach_it_once_when_it_returns(claim_server: ServerProcess) -> None:
    server = claim_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    time.sleep(_SETTLE)
    with Client(server.grpc_target, server.token) as client:
        watcher = Watcher(client)
        claimed = [client.send_message([number(200 + i)], f"claimed {i}", device_id=creds.device_id).id for i in range(3)]
        phone.ws.close()  # gone before it read (or accepted) any of them
        later = [client.send_message([number(210 + i)], f"while away {i}", device_id=creds.device_id).id for i in range(2)]
        back = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 8)
        try:
            got = delivers_until_quiet(back)
            assert Counter(got) == Counter(claimed + later), "lost or twice after the reconnect"
            for mid in got:
                complete(back, mid)
            history = watcher.until_final(set(claimed + later))
            assert delivers_until_quiet(back, quiet=0.5) == []
        finally:
            back.ws.close()
    for mid in claimed:
        states = [e.state for e in history[mid]]
        assert states[-1] == common_pb2.DELIVERED and states.count(common_pb2.DELIVERED) == 1, states
        assert states[:2] == [common_pb2.PENDING, common_pb2.DISPATCHED], states
    # At least the first went out at create (the phone was idle with room): its requeue shows
    # as DISPATCHED -> PENDING before it was dispatched again to the new session.
    first = history[claimed[0]]
    assert first[1].time == first[0].time, "the first send was not claimed at create"
    assert [e.state for e in first][:4] == [
        common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.PENDING, common_pb2.DISPATCHED,
    ]
