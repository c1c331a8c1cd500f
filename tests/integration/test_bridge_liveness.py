"""Bridges and workers that die (issue 16): real `smsgw` processes on a throwaway PostgreSQL.

- A bridge killed with SIGKILL never closes its phones' sessions. The worker sees its
  heartbeat stop and its lock free, and takes its phones offline: `device:offline`, what
  they had been handed back to PENDING. A phone that later reconnects to another bridge gets
  that message again, once (device_bridge/lease.py, gateway/devices/reaper.py).
- A bridge that finds it was taken for dead (its row gone) ends its sessions with 1012.
- Of two workers one sweeps; when it dies the other takes over, and each message expires once.
- A worker killed in the middle of a webhook request: its claim comes back after its lease
  and another worker delivers it, with the same webhook-id.

Fast settings: a heartbeat every 0.2 s, dead after 1 s, the worker's loop every 0.2 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from smsgw.v1 import common_pb2, webhooks_pb2
from smsgw_client import Client
from websockets.exceptions import ConnectionClosed

from device_bridge.protocol import DeliverReceived, Encoding, ReceiptState
from gateway.bus.postgres import libpq_url
from tests.helpers.postgres import throwaway_database
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import (
    LENIENT_LIMITS, PRIVATE_TOKEN, ServerProcess, admin_token, private_webhook_env, upgraded_database,
)
from tests.helpers.webhook_receiver import Receiver

_FAST = {
    "SMSGW_BRIDGE__HEARTBEAT_INTERVAL": "0.2",
    "SMSGW_BRIDGE__LEASE_GRACE": "1",
    "SMSGW_JOBS__EXPIRY_INTERVAL": "0.2",
}
_WAIT = 20.0  # bound on every wait below; each happens within a few seconds


@pytest.fixture
def database() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {_WAIT} s: {what}"
        time.sleep(0.1)


def _query(database: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(database), autocommit=True) as c:
        return c.execute(sql).fetchall()


def test_a_killed_bridges_phones_go_offline_and_get_their_messages_on_another(tmp_path: Path, database: str) -> None:
    env = {**LENIENT_LIMITS, **private_webhook_env(), **_FAST, "SMSGW_DATABASE__URL": database}
    password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
    with (
        Receiver(default=204) as receiver,
        ServerProcess(tmp_path / "worker", env=env, role="worker") as worker,
        ServerProcess(tmp_path / "bridge1", env=env, role="bridge") as doomed,
        ServerProcess(tmp_path / "bridge2", env=env, role="bridge") as survivor,
        ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
    ):
        token = admin_token(gateway, password)
        first, lost = pair_raw(gateway.grpc_target, token, doomed.device_url, private_token=PRIVATE_TOKEN)
        second, kept = pair_raw(gateway.grpc_target, token, survivor.device_url, private_token=PRIVATE_TOKEN)
        with Client(gateway.grpc_target, token) as client:
            receiver.secret = client.webhooks.create(receiver.url, ["device:offline"]).secret
            sent = client.send_message(["+15550001234"], "handed out, never accepted", device_id=lost.device_id,
                                       idempotency_key="reaped-1")
            assert first.next_deliver().delivery.message_id == sent.id  # the phone says nothing back
            _until(lambda: client.get_message(sent.id).state == common_pb2.DISPATCHED, "DISPATCHED")
            assert len(_query(database, "SELECT id FROM bridge_instance")) == 2

            doomed.kill()  # SIGKILL: no session is closed, no row is touched

            def online() -> dict[str, bool]:
                return {d.id: d.online for d in client.list_devices().devices}

            _until(lambda: not online()[lost.device_id], "the dead bridge's phone offline")
            assert online()[kept.device_id]  # the live bridge's phone is left alone
            assert client.get_message(sent.id).state == common_pb2.PENDING
            _until(lambda: bool(receiver.received), "device:offline delivered")
            [hook] = receiver.received
            assert hook.verified and hook.event["event"] == "device:offline"
            assert hook.event["device"]["id"] == lost.device_id
            assert len(_query(database, "SELECT id FROM bridge_instance")) == 1
            assert "reaped 1 dead bridge(s): 1 phone session(s) closed" in worker.log_text()

            # The phone comes back on the other bridge: the message again, and only once.
            back = RawPhone(open_raw(survivor.device_url, f"Bearer {lost.token}"), Encoding.PROTO, 4)
            deliver = back.next_deliver()
            assert deliver.delivery.message_id == sent.id
            back.receipt(sent.id, ReceiptState.ACCEPTED, attempt=deliver.delivery.attempt)
            back.receipt(sent.id, ReceiptState.DELIVERED, attempt=deliver.delivery.attempt)
            _until(lambda: client.get_message(sent.id).state == common_pb2.DELIVERED, "DELIVERED")
            with pytest.raises(TimeoutError):
                while True:  # ends by the timeout: nothing else may come but Acks
                    assert not isinstance(back.next_event(1.0), DeliverReceived)
        for ws in (back.ws, second.ws):
            ws.close()


def test_a_bridge_taken_for_dead_ends_its_sessions_with_1012(tmp_path: Path, database: str) -> None:
    """What a bridge cut off from the database for longer than the grace finds when it comes
    back: its row deleted (here by hand, as the reaper does after closing its phones). It ends
    every session with 1012, so the phones reconnect and take their devices again, and it
    writes its row anew."""
    env = {**LENIENT_LIMITS, **_FAST, "SMSGW_DATABASE__URL": database}
    password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
    with (
        ServerProcess(tmp_path / "bridge", env=env, role="bridge") as bridge,
        ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
    ):
        phone, _ = pair_raw(gateway.grpc_target, admin_token(gateway, password), bridge.device_url)
        [(bridge_id,)] = _query(database, "DELETE FROM bridge_instance RETURNING id")
        with pytest.raises(ConnectionClosed) as caught:
            for _ in range(10):  # bounded: pings keep it busy, the close comes within a beat
                phone.ws.recv(10)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1012, caught.value.rcvd
        assert _query(database, "SELECT id FROM bridge_instance") == [(bridge_id,)]
        assert "taken for dead" in bridge.log_text()


def test_of_two_workers_one_sweeps_and_the_other_takes_over_when_it_dies(tmp_path: Path, database: str) -> None:
    env = {**LENIENT_LIMITS, **_FAST, "SMSGW_DATABASE__URL": database}
    password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
    leads = "this worker now runs the sweeps"
    with (
        ServerProcess(tmp_path / "worker1", env=env, role="worker") as one,
        ServerProcess(tmp_path / "worker2", env=env, role="worker") as other,
        ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
        Client(gateway.grpc_target, admin_token(gateway, password)) as client,
    ):
        _until(lambda: leads in one.log_text() or leads in other.log_text(), "a leader")
        time.sleep(1.0)  # several rounds of both loops: still one leader
        leader, follower = (one, other) if leads in one.log_text() else (other, one)
        assert leads not in follower.log_text()

        def expiring(key: str) -> str:  # no phone: it waits until valid_until, then the sweep expires it
            return client.send_message(["+15550001234"], "expires", ttl=1, idempotency_key=key).id

        before = expiring("before")
        _until(lambda: client.get_message(before).state == common_pb2.EXPIRED, "expired by the leader")
        leader.kill()
        _until(lambda: leads in follower.log_text(), "the other worker leads")
        after = expiring("after")
        _until(lambda: client.get_message(after).state == common_pb2.EXPIRED, "expired by the new leader")
    expired = _query(database, "SELECT message_id, count(*) FROM event WHERE kind = 'message' AND state = "
                     f"{common_pb2.EXPIRED} GROUP BY message_id")
    assert sorted(expired) == sorted([(before, 1), (after, 1)])


def test_a_killed_workers_webhook_claim_is_delivered_by_another_after_its_lease(tmp_path: Path, database: str) -> None:
    """The attempt timeout is 2 s, so the claim's lease is 7 s (gateway/webhooks/repository.py);
    the worker is killed as soon as the request arrives, well within the timeout."""
    env = {**LENIENT_LIMITS, **private_webhook_env(SMSGW_WEBHOOKS__TIMEOUT="2"), "SMSGW_DATABASE__URL": database}
    password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
    with (
        Receiver(default=204, hang_for=4) as receiver,
        ServerProcess(tmp_path / "bridge", env=env, role="bridge") as bridge,
        ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
        ServerProcess(tmp_path / "worker1", env=env, role="worker") as killed,
    ):
        token = admin_token(gateway, password)
        with Client(gateway.grpc_target, token) as client:
            hook = client.webhooks.create(receiver.url, ["device:online"])
            receiver.secret = hook.secret
            receiver.script(["hang"])  # the first request is never answered in time
            phone, _ = pair_raw(gateway.grpc_target, token, bridge.device_url, private_token=PRIVATE_TOKEN)
            _until(lambda: len(receiver.received) == 1, "the first worker's request")
            killed.kill()  # mid-request, its claim held
            with ServerProcess(tmp_path / "worker2", env=env, role="worker"):
                _until(lambda: len(receiver.received) == 2, "the claim delivered again by the other worker")
                first, again = receiver.received
                assert again.id == first.id and again.verified and again.answered == 204
                assert again.at - first.at >= 6.0  # not before the lease ran out
                _until(lambda: client.webhooks.deliveries(hook.webhook.id).deliveries[0].state == webhooks_pb2.DELIVERY_SUCCEEDED, "SUCCEEDED")
        phone.ws.close()
