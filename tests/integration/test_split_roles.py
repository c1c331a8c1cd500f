"""`smsgw gateway`, `smsgw bridge` and `smsgw worker` as separate processes on one PostgreSQL
(issue 16), started as a user starts them, after `smsgw db upgrade`.

A message sent through the gateway reaches a reference phone connected to the bridge, its
receipts come back through the bridge, a WatchMessages stream on the gateway sees it
DELIVERED, and the worker delivers its webhooks to a receiver on 127.0.0.1. The roles refuse
SQLite and a schema behind their code, with the command to run."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from smsgw.v1 import common_pb2
from smsgw_client import Client, Unauthenticated
from websockets.exceptions import ConnectionClosed

from device_bridge.protocol import CloseCode, Credentials, DeliverReceived, Encoding
from gateway.bus.postgres import libpq_url
from tests.helpers.phones import start_phones
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.postgres import throwaway_database
from tests.helpers.server import (
    LENIENT_LIMITS, PRIVATE_TOKEN, SMSGW, ServerProcess, admin_token, private_webhook_env, upgraded_database,
)
from tests.helpers.webhook_receiver import Receiver

_TIMEOUT = 60.0


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMSGW, *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def database() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


OnePhone = tuple[ServerProcess, ServerProcess, str, RawPhone, Credentials]


@pytest.fixture
def one_phone(tmp_path: Path, database: str) -> Iterator[OnePhone]:
    """A bridge and a gateway on `database`, and a raw phone paired through them: (bridge,
    gateway, admin token, phone, its credentials)."""
    env = {**LENIENT_LIMITS, "SMSGW_DATABASE__URL": database}
    password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
    with (
        ServerProcess(tmp_path / "bridge", env=env, role="bridge") as bridge,
        ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
    ):
        token = admin_token(gateway, password)
        phone, credentials = pair_raw(gateway.grpc_target, token, bridge.device_url)
        try:
            yield bridge, gateway, token, phone, credentials
        finally:
            phone.ws.close()  # the bridge need not wait out its shutdown grace for it


def test_the_roles_refuse_sqlite_and_a_schema_behind(tmp_path: Path, database: str) -> None:
    for role in ("gateway", "bridge", "worker"):
        run = _run([role, "--data-dir", str(tmp_path / role)], {}, tmp_path)
        assert run.returncode == 2, run.stderr
        assert f"smsgw {role}: needs PostgreSQL" in run.stderr and "smsgw serve" in run.stderr
        assert not (tmp_path / role).exists()  # refused before anything was made
    env = {"SMSGW_DATABASE__URL": database}
    run = _run(["gateway", "--data-dir", str(tmp_path / "g")], env, tmp_path)
    assert run.returncode == 2 and "run `smsgw db upgrade`" in run.stderr, run.stderr
    upgrade = _run(["db", "upgrade", "--data-dir", str(tmp_path / "d")], env, tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "created account admin" in upgrade.stdout and "created the JWT secret" in upgrade.stdout
    again = _run(["db", "upgrade", "--data-dir", str(tmp_path / "d")], env, tmp_path)
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout
    # A gateway without the JWT secret every gateway shares is refused, saying where it comes from.
    run = _run(["gateway", "--data-dir", str(tmp_path / "g")], env, tmp_path)
    assert run.returncode == 2 and "jwt.secret" in run.stderr, run.stderr


def test_a_message_goes_through_gateway_bridge_and_worker(tmp_path: Path, database: str) -> None:
    env = {**LENIENT_LIMITS, **private_webhook_env(), "SMSGW_DATABASE__URL": database}
    dirs = {role: tmp_path / role for role in ("gateway", "bridge", "worker")}
    password = upgraded_database(tmp_path, env, (dirs["gateway"],))
    for d in (dirs["bridge"], dirs["worker"]):
        d.mkdir(mode=0o700)
    with (
        Receiver(default=204) as receiver,
        ServerProcess(dirs["worker"], env=env, role="worker") as worker,
        ServerProcess(dirs["bridge"], env=env, role="bridge") as bridge,
        ServerProcess(dirs["gateway"], env=env, role="gateway") as gateway,
    ):
        token = admin_token(gateway, password)
        with Client(gateway.grpc_target, token) as client:
            created = client.webhooks.create(receiver.url, ["sms:delivered"])
            receiver.secret = created.secret
        delivered: list[str] = []

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(nursery, gateway.grpc_target, token, bridge.device_url, 1,
                                             private_token=PRIVATE_TOKEN)

                def send_and_watch() -> None:
                    with Client(gateway.grpc_target, token) as client:
                        stream = client.watch_messages(after_event_id=0, timeout=_TIMEOUT)
                        sent = client.send_message(["+15550001234"], "through three processes", idempotency_key="split-1")
                        for event in stream:
                            if event.message_id == sent.id and event.state == common_pb2.DELIVERED:
                                delivered.append(sent.id)
                                return

                with trio.fail_after(_TIMEOUT):
                    await trio.to_thread.run_sync(send_and_watch)
                    while not receiver.received:
                        await trio.sleep(0.05)
                assert phone.modem.sent  # the reference phone's modem sent it
                nursery.cancel_scope.cancel()

        trio.run(main)
        assert len(delivered) == 1
        [hook] = receiver.received
        assert hook.verified and hook.event["event"] == "sms:delivered"
        assert hook.event["message"]["id"] == delivered[0]
    for role, proc in (("worker", worker), ("bridge", bridge), ("gateway", gateway)):
        assert proc.proc is not None and proc.proc.returncode == 0, (role, proc.log_text())
        assert "Traceback" not in proc.log_text() and " ERROR " not in proc.log_text(), (role, proc.log_text())
        assert not (dirs[role] / "endpoints.json").exists()  # each stopped cleanly on SIGTERM


def test_a_phone_moving_to_another_bridge_ends_its_session_on_the_first(tmp_path: Path, database: str) -> None:
    """The phone's new session on bridge 2 is the live one (storage says so); bridge 1 hears
    it on the bus and closes its older session with 4003 at once, as one bridge does."""
    env = {**LENIENT_LIMITS, "SMSGW_DATABASE__URL": database}
    password = upgraded_database(tmp_path, env, (tmp_path / "gateway",))
    with (
        ServerProcess(tmp_path / "bridge1", env=env, role="bridge") as first_bridge,
        ServerProcess(tmp_path / "bridge2", env=env, role="bridge") as second_bridge,
        ServerProcess(tmp_path / "gateway", env=env, role="gateway") as gateway,
    ):
        token = admin_token(gateway, password)
        first, credentials = pair_raw(gateway.grpc_target, token, first_bridge.device_url)
        second = RawPhone(open_raw(second_bridge.device_url, f"Bearer {credentials.token}"), Encoding.PROTO, 4)
        with pytest.raises(ConnectionClosed) as caught:
            for _ in range(10):  # bounded: pings keep it busy, the close comes within seconds
                first.ws.recv(10)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == CloseCode.REPLACED, caught.value.rcvd
        with Client(gateway.grpc_target, token) as client:
            [device] = [d for d in client.list_devices().devices if d.id == credentials.device_id]
            assert device.online  # the second session is untouched
        second.ws.close()
        assert "replaced on another bridge" in first_bridge.log_text()


def test_a_bridge_that_missed_the_takeover_claims_nothing_and_ends_its_session(one_phone: OnePhone, database: str) -> None:
    """The fence: storage names another session as the device's live one (a newer session on
    another bridge whose signal this bridge missed). The next dispatch round of the stale
    session checks that in its transaction, claims nothing, and the session closes with 4003;
    the message stays PENDING for the live session."""
    bridge, gateway, token, phone, credentials = one_phone
    with psycopg.connect(libpq_url(database), autocommit=True) as c:
        c.execute("UPDATE device SET session_id = 'a-session-on-another-bridge' WHERE id = %s", (credentials.device_id,))
    with Client(gateway.grpc_target, token) as client:
        sent = client.send_message(["+15550001234"], "fenced", device_id=credentials.device_id, idempotency_key="fence-1")
        with pytest.raises(ConnectionClosed) as caught:
            for _ in range(10):  # bounded; nothing but the close may come (no Deliver)
                event = phone.next_event(10)
                assert not isinstance(event, DeliverReceived), "the stale session was handed the message"
        assert caught.value.rcvd is not None and caught.value.rcvd.code == CloseCode.REPLACED, caught.value.rcvd
        assert client.get_message(sent.id).state == common_pb2.PENDING
    assert "replaced on another bridge (fence)" in bridge.log_text()


def test_a_message_whose_wake_up_was_lost_still_reaches_its_phone(one_phone: OnePhone, database: str) -> None:
    """A message stored with no wake-up on the bus (its gateway killed between the commit and
    the NOTIFY; here stored straight into the database) reaches the phone anyway: the bridge
    follows the event log (device_bridge/follower.py)."""
    from datetime import UTC, datetime

    from gateway.messages.repository import MessageRepository
    from gateway.storage.engine import Database
    from gateway.storage.models import Device
    from tests.unit.gateway.test_gw_repository import new_message

    _, _, _, phone, credentials = one_phone
    db = Database(database)
    try:
        with db.read() as s:
            device = s.get(Device, credentials.device_id)
            assert device is not None
            owner_id = device.owner_id
        stored, _ = MessageRepository(db).create(
            owner_id, new_message(1, key="no-wake-up", device_id=credentials.device_id), datetime.now(UTC)
        )
    finally:
        db.close()
    deliver = phone.next_deliver(10)
    assert deliver.delivery.message_id == stored.id


def test_a_token_revoked_on_one_gateway_is_refused_by_the_other_at_once(tmp_path: Path, database: str) -> None:
    """The gateways re-read their deny lists every `jobs.expiry_interval`; a revocation also
    tells the others on the bus, so they refuse the token at once. (The interval is an hour
    here: only the signal can explain the refusal.)"""
    env = {**LENIENT_LIMITS, "SMSGW_DATABASE__URL": database, "SMSGW_JOBS__EXPIRY_INTERVAL": "3600"}
    password = upgraded_database(tmp_path, env, (tmp_path / "a", tmp_path / "b"))
    with (
        ServerProcess(tmp_path / "a", env=env, role="gateway") as first,
        ServerProcess(tmp_path / "b", env=env, role="gateway") as second,
    ):
        with Client(first.grpc_target) as anonymous:
            pair = anonymous.issue_token("admin", password, access_ttl=3600)
        with Client(second.grpc_target, pair.access_token) as other:
            other.list_devices()  # accepted there
            with Client(first.grpc_target, pair.access_token) as client:
                assert client.revoke_token(pair.refresh_jti) >= 1  # the whole sign-in
            deadline = time.monotonic() + 10
            with pytest.raises(Unauthenticated):
                while time.monotonic() < deadline:  # bounded; the signal takes milliseconds
                    other.list_devices()
                    time.sleep(0.05)
