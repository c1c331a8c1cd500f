"""Two gateways, two bridges and a worker as real processes on one PostgreSQL (issue 16), the
phones behind one address (a round-robin TCP proxy, as a load balancer), messages sent through
both gateways from 4 client threads with idempotency keys; one bridge SIGKILLed in the middle,
then one gateway.

Every message must end DELIVERED exactly once in storage, reach DELIVERED exactly once on a
WatchMessages stream opened before the run, reach the webhook receiver under one webhook-id,
and go out of the simulated modems once: nothing lost, nothing sent twice.

The size here is CI's; `FAILOVER_PHONES` / `FAILOVER_MESSAGES` run the issue's
200 phones and 5,000 messages."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client, DeadlineExceeded, Unavailable

from gateway.bench.chaos_proxy import CuttingProxy
from gateway.bus.postgres import libpq_url
from tests.helpers.phones import start_phones
from tests.helpers.postgres import throwaway_database
from tests.helpers.server import (
    LENIENT_LIMITS, PRIVATE_TOKEN, ServerProcess, admin_token, private_webhook_env, upgraded_database,
)
from tests.helpers.webhook_receiver import Receiver

PHONES = int(os.environ.get("FAILOVER_PHONES", "40"))
MESSAGES = int(os.environ.get("FAILOVER_MESSAGES", "800"))
_CLIENTS = 4
_DEADLINE = max(300.0, MESSAGES / 10)  # seconds for the sends and the drain (the full size takes longer)


class Sender:
    """`_CLIENTS` threads sending MESSAGES messages with keys, alternating gateways; a call that
    fails because its gateway died is sent again, same key, to the other one."""

    def __init__(self, gateways: list[ServerProcess], token: str) -> None:
        self.gateways = gateways
        self.token = token
        self.sent = 0
        self.retried = 0
        self.ids: dict[str, str] = {}  # key -> message id
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def run(self, k: int) -> None:
        clients = [Client(g.grpc_target, self.token) for g in self.gateways]
        down: set[int] = set()  # gateways this thread saw fail: tried again only if all have
        try:
            for n in range(k, MESSAGES, _CLIENTS):
                key = f"failover-{n}"
                for attempt in range(20):  # bounded: a dead gateway is skipped within a few tries
                    up = [i for i in range(len(clients)) if i not in down] or list(range(len(clients)))
                    i = up[(n + attempt) % len(up)]
                    try:
                        message = clients[i].send_message([f"+1555{n:07d}"], f"failover {n}", idempotency_key=key, timeout=10)
                        break
                    except (Unavailable, DeadlineExceeded):
                        down.add(i)
                        with self._lock:
                            self.retried += 1
                        time.sleep(0.05)
                else:
                    raise AssertionError(f"{key} could not be sent through either gateway")
                with self._lock:
                    previous = self.ids.setdefault(key, message.id)
                    assert previous == message.id, f"{key}: two messages {previous} and {message.id}"
                    self.sent += 1
        except BaseException as exc:  # noqa: BLE001 — reported by the test
            self.errors.append(exc)
        finally:
            for client in clients:
                client.close()


def test_bridge_and_gateway_killed_mid_run_lose_nothing_and_send_nothing_twice(tmp_path: Path) -> None:
    with throwaway_database() as url, Receiver(default=204) as receiver:
        # The receiver shares this busy process with the phones and the senders: a slow answer
        # must not use up a delivery's attempts (the test is about what the processes lose).
        hooks = private_webhook_env(SMSGW_WEBHOOKS__TIMEOUT="15", SMSGW_WEBHOOKS__RETRY_DELAYS="0.5,1,2,4,8,16")
        # The killed bridge is taken for dead 3 s after its last heartbeat (the worker reaps it).
        lease = {"SMSGW_BRIDGE__HEARTBEAT_INTERVAL": "0.5", "SMSGW_BRIDGE__LEASE_GRACE": "3"}
        env = {**LENIENT_LIMITS, **hooks, **lease, "SMSGW_DATABASE__URL": url}
        password = upgraded_database(tmp_path, env, (tmp_path / "gateway1", tmp_path / "gateway2"))
        procs: dict[str, ServerProcess] = {}
        try:
            for name, role in (("worker", "worker"), ("bridge1", "bridge"), ("bridge2", "bridge"),
                               ("gateway1", "gateway"), ("gateway2", "gateway")):
                procs[name] = ServerProcess(tmp_path / name, env=env, role=role)
                procs[name].start()
            _run(procs, password, receiver, url)
        finally:
            for proc in procs.values():
                proc.stop()


def _reaped(url: str) -> None:
    """The killed bridge's row is gone (the worker reaped it) and every phone is online on the
    bridge left (each moved over by its own reconnect, or taken offline by the reaper)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        while len(bridges := c.execute("SELECT id FROM bridge_instance").fetchall()) != 1:
            assert time.monotonic() < deadline, f"the killed bridge was not reaped: {bridges}"
            time.sleep(0.2)
        held = c.execute("SELECT bridge_id, count(*) FROM device WHERE session_id <> '' GROUP BY bridge_id").fetchall()
    assert held == [(bridges[0][0], PHONES)], held


def _bridge_port(proc: ServerProcess) -> int:
    return int(proc.device_url.rsplit(":", 1)[1].split("/", 1)[0])


def _run(procs: dict[str, ServerProcess], password: str, receiver: Receiver, url: str) -> None:
    gateways = [procs["gateway1"], procs["gateway2"]]
    token = admin_token(gateways[1], password)
    with Client(gateways[1].grpc_target, token) as client:
        receiver.secret = client.webhooks.create(receiver.url, ["sms:delivered"]).secret
    delivered_on_watch: Counter[str] = Counter()
    sender = Sender(gateways, token)

    def watch() -> None:  # on the gateway that stays up, opened before the first send
        with Client(gateways[1].grpc_target, token) as client:
            for event in client.watch_messages(after_event_id=0, timeout=_DEADLINE + 120):
                if event.state == common_pb2.DELIVERED:
                    delivered_on_watch[event.message_id] += 1
                    if len(delivered_on_watch) >= MESSAGES:
                        return

    async def main() -> None:
        proxy = CuttingProxy([_bridge_port(procs["bridge1"]), _bridge_port(procs["bridge2"])])
        async with trio.open_nursery() as nursery:
            port = await nursery.start(proxy.serve)
            phones = await start_phones(
                nursery, gateways[0].grpc_target, token, f"ws://127.0.0.1:{port}/device/v1", PHONES,
                private_token=PRIVATE_TOKEN,
            )
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            await trio.sleep(0.5)  # the watch is open before the first send
            threads = [threading.Thread(target=sender.run, args=(k,), daemon=True) for k in range(_CLIENTS)]
            for t in threads:
                t.start()
            progress = lambda: (  # noqa: E731 — what a timeout reports
                f"sent {sender.sent}, retried {sender.retried}, DELIVERED on the watch {len(delivered_on_watch)}, "
                f"webhooks {len({r.event['message']['id'] for r in receiver.received})} of {MESSAGES}"
            )
            with trio.move_on_after(_DEADLINE) as timer:
                while sender.sent < MESSAGES // 3 and not sender.errors:
                    await trio.sleep(0.02)
                procs["bridge1"].kill()  # SIGKILL: its phones reconnect through the proxy to bridge2
                while sender.sent < 2 * MESSAGES // 3 and not sender.errors:
                    await trio.sleep(0.02)
                procs["gateway1"].kill()  # SIGKILL: the senders go on through gateway2
                while any(t.is_alive() for t in threads):
                    await trio.sleep(0.05)
                assert not sender.errors, sender.errors[:3]
                while watcher.is_alive() or len({r.event["message"]["id"] for r in receiver.received}) < MESSAGES:
                    await trio.sleep(0.1)
            assert not timer.cancelled_caught, f"not done in {_DEADLINE} s: {progress()}"
            await trio.to_thread.run_sync(_reaped, url)
            modem_sends = Counter(s for phone in phones for s in phone.modem.sent)
            nursery.cancel_scope.cancel()
        # Nothing sent twice by the modems, every message sent.
        assert set(m for m, _ in modem_sends) == set(sender.ids.values())
        assert max(modem_sends.values()) == 1, [k for k, v in modem_sends.items() if v > 1][:5]

    trio.run(main)
    ids = set(sender.ids.values())
    assert len(ids) == MESSAGES
    # Storage: one message per key, all DELIVERED.
    with Client(gateways[1].grpc_target, token) as client:
        stored = list(client.export_messages(timeout=120))
    assert len(stored) == MESSAGES and {m.id for m in stored} == ids
    assert all(m.state == common_pb2.DELIVERED for m in stored)
    # The watch: DELIVERED once per message.
    assert set(delivered_on_watch) == ids and max(delivered_on_watch.values()) == 1
    # The webhook receiver: one webhook-id per message (a retried delivery keeps its id).
    by_message: defaultdict[str, set[str]] = defaultdict(set)
    for r in receiver.received:
        assert r.verified
        by_message[r.event["message"]["id"]].add(r.id)
    assert set(by_message) == ids and all(len(v) == 1 for v in by_message.values())
    assert sender.retried > 0  # the gateway's death was seen, and survived
