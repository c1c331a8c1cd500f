"""RELIABILITY 1 (reduced scale) and the issue's crash test: kill -9 `smsgw serve` with hundreds of
messages in flight, restart it, and judge the whole history.

50 phones, 1,000 messages with idempotency keys from 4 sender threads; SIGKILL once 500 sends
returned; senders keep retrying the same keys through the outage; restart on the same ports.
Then: one message per key (a retry returns the same id), every recipient DELIVERED exactly once
in the event log with no state moving back, and every message sent exactly once by the modems.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client, DeadlineExceeded, Unavailable

from smsgw_agent import ModemOptions
from tests.helpers.checker import check_history, event_history
from tests.helpers.phones import start_phones
from tests.helpers.server import ServerProcess

PHONES, MESSAGES, SENDERS, KILL_AFTER = 50, 1000, 4, 500
SEND_RETRY_LIMIT = 90.0  # seconds one key keeps being retried through the outage


class _Senders:
    """Sends every message with its own key, retrying UNAVAILABLE with the same key."""

    def __init__(self, target: str, token: str) -> None:
        self.target, self.token = target, token
        self.ids: dict[int, str] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.errors: list[str] = []

    def body(self, i: int) -> str:
        return f"chaos {i}"

    def run(self, part: int) -> None:
        with Client(self.target, self.token, timeout=5.0) as client:
            for i in range(part, MESSAGES, SENDERS):
                deadline = time.monotonic() + SEND_RETRY_LIMIT
                while True:
                    try:
                        mid = client.send_message([f"+1555{3000000 + i:07d}"], self.body(i), idempotency_key=f"chaos-{i}").id
                        break
                    except (Unavailable, DeadlineExceeded):
                        if time.monotonic() > deadline:
                            self.errors.append(f"chaos-{i}: still unavailable")
                            return
                        time.sleep(0.2)
                with self.lock:
                    self.ids[i] = mid

    def sent(self) -> int:
        with self.lock:
            return len(self.ids)


def test_kill9_mid_burst_loses_nothing_sends_nothing_twice(server: ServerProcess) -> None:
    senders = _Senders(server.grpc_target, server.token)
    in_flight_at_kill: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # The modems accept but send nothing until the restart: every message sent before
            # the kill is in flight (stored, dispatched or held by a phone) when it lands.
            gate = trio.Event()
            phones = await start_phones(
                nursery, server.grpc_target, server.token, server.device_url, PHONES,
                modem=ModemOptions(send_delay=0.05, delivery_delay=0.05, android_limit_parts=0), gate=gate,  # unpaced server
            )
            threads = [threading.Thread(target=senders.run, args=(p,), daemon=True) for p in range(SENDERS)]
            for t in threads:
                t.start()
            with trio.fail_after(60):
                while senders.sent() < KILL_AFTER:
                    await trio.sleep(0.01)
            with Client(server.grpc_target, server.token) as client:
                listed = await trio.to_thread.run_sync(lambda: list(client.iter_messages()))
            in_flight_at_kill.append(sum(m.state not in (common_pb2.DELIVERED,) for m in listed))
            await trio.to_thread.run_sync(server.kill)
            await trio.sleep(1.0)  # the phones notice, back off and retry; senders retry
            await trio.to_thread.run_sync(lambda: server.start(same_ports=True))
            gate.set()
            for t in threads:
                await trio.to_thread.run_sync(lambda t=t: t.join(SEND_RETRY_LIMIT + 30))
            assert not senders.errors, senders.errors
            assert len(senders.ids) == MESSAGES

            with Client(server.grpc_target, server.token) as client:
                # A client retrying any key gets the same message, never a second one.
                for i in (0, KILL_AFTER - 1, KILL_AFTER, MESSAGES - 1):
                    again = await trio.to_thread.run_sync(
                        lambda i=i: client.send_message([f"+1555{3000000 + i:07d}"], senders.body(i), idempotency_key=f"chaos-{i}")
                    )
                    assert again.id == senders.ids[i]
                ids = set(senders.ids.values())
                with trio.fail_after(120):
                    while True:
                        listed = await trio.to_thread.run_sync(lambda: list(client.iter_messages(page_size=500)))
                        if all(m.state == common_pb2.DELIVERED for m in listed) and len(listed) == MESSAGES:
                            break
                        await trio.sleep(0.5)
                assert {m.id for m in listed} == ids, "exactly one stored message per key"
                assert len({m.idempotency_key for m in listed}) == MESSAGES
                history = await trio.to_thread.run_sync(lambda: event_history(client, ids))
            sent = Counter(s for p in phones for s in p.modem.sent)
            problems = check_history(history, sent)
            assert not problems, problems[:20]
            assert set(history) == {(mid, 0) for mid in ids}
            # Duplicate Delivers happen after the restart, always with the same id, and are dropped.
            received = Counter(mid for p in phones for mid in p.received)
            assert set(received) == ids
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert in_flight_at_kill[0] >= KILL_AFTER
