"""DeleteDevice over real sockets: the live session ends with 4004 at once, the device token is
refused at the upgrade, and what the phone had not accepted moves on (or FAILS when pinned)."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from smsgw.v1 import common_pb2
from smsgw_client import Client, InvalidArgument, NotFound
from websockets.exceptions import ConnectionClosed, InvalidStatus

from device_bridge.protocol import AckReceived, CloseCode, DeviceSession, Encoding, ReceiptState, Side, SimInfo, WelcomeReceived
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import SMSGW, ServerProcess

_accounts = itertools.count()
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One public-mode server; each test signs up its own account, so routing sees only its phones."""
    proc = ServerProcess(tmp_path_factory.mktemp("delete") / "data")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _account(server: ServerProcess) -> tuple[str, str]:
    """(owner id, access token) of a new account."""
    username = f"del-{next(_accounts)}"
    with Client(server.grpc_target) as client:
        owner = client.create_account(username, PASSWORD).id
        return owner, client.issue_token(username, PASSWORD, access_ttl=3600).access_token


def _closed_with(ws: object, code: int) -> str:
    """Read (bounded) until the bridge closes; the close code must be `code`."""
    with pytest.raises(ConnectionClosed) as caught:
        for _ in range(50):
            ws.recv(10)  # type: ignore[attr-defined]
    assert caught.value.rcvd is not None, "the bridge sent no close frame"
    assert caught.value.rcvd.code == code, caught.value.rcvd
    return caught.value.rcvd.reason


def _wait(client: Client, message_id: str, state: int, limit: float = 10.0) -> common_pb2.State:
    deadline = time.monotonic() + limit
    current = client.get_message(message_id).state
    while current != state and time.monotonic() < deadline:
        time.sleep(0.02)
        current = client.get_message(message_id).state
    assert current == state, f"{message_id} is {common_pb2.State.Name(current)}, wanted {common_pb2.State.Name(state)}"
    return current


def test_online_phone_closed_4004_token_refused_and_device_gone(server: ServerProcess) -> None:
    owner, token = _account(server)
    phone, creds = pair_raw(server.grpc_target, token, server.device_url)
    with Client(server.grpc_target, token) as client:
        assert [d.id for d in client.list_devices().devices] == [creds.device_id]
        result = client.delete_device(creds.device_id)
        assert (result.rerouted, result.failed) == (0, 0)
        reason = _closed_with(phone.ws, CloseCode.CREDENTIALS_REVOKED)
        assert "deleted" in reason
        with pytest.raises(InvalidStatus) as caught:
            open_raw(server.device_url, f"Bearer {creds.token}")
        assert caught.value.response.status_code == 401
        assert client.list_devices().devices == []
        audit = client.list_audit_events(action="device.delete").events
        assert [e.actor for e in audit] == [creds.device_id]


def test_unaccepted_messages_move_to_other_phone_pinned_fail_accepted_stay(server: ServerProcess) -> None:
    _, token = _account(server)
    a, a_creds = pair_raw(server.grpc_target, token, server.device_url, window=4)
    with Client(server.grpc_target, token) as client:
        accepted = client.send_message(["+15551230000"], "accepted by A").id
        assert a.next_deliver().delivery.message_id == accepted
        a.receipt(accepted, ReceiptState.ACCEPTED)
        assert isinstance(a.next_event(), AckReceived)
        _wait(client, accepted, common_pb2.ACCEPTED)

        # A's window (4) fills with two unpinned messages, one pinned, and one more unpinned;
        # a fifth waits PENDING on A, never dispatched.
        dispatched = [client.send_message([f"+1555123000{i}"], f"unpinned {i}").id for i in (1, 2)]
        pinned = client.send_message(["+15551230003"], "pinned to A", device_id=a_creds.device_id).id
        dispatched.append(client.send_message(["+15551230004"], "unpinned 3").id)
        got = {a.next_deliver().delivery.message_id for _ in range(4)}
        assert got == {*dispatched, pinned}
        waiting = client.send_message(["+15551230005", "+15551230006"], "unpinned 4, two recipients").id
        for mid in dispatched:
            _wait(client, mid, common_pb2.DISPATCHED)
        assert client.get_message(waiting).device_id == a_creds.device_id
        assert client.get_message(waiting).state == common_pb2.PENDING

        # B comes online; A is online too, so B adopts nothing yet.
        b, b_creds = pair_raw(server.grpc_target, token, server.device_url, window=8)
        moved = {*dispatched, waiting}
        assert all(client.get_message(mid).device_id == a_creds.device_id for mid in moved)

        result = client.delete_device(a_creds.device_id)
        assert (result.rerouted, result.failed) == (4, 1)
        _closed_with(a.ws, CloseCode.CREDENTIALS_REVOKED)

        delivered = {b.next_deliver().delivery.message_id for _ in range(4)}
        assert delivered == moved
        for mid in moved:
            b.receipt(mid, ReceiptState.ACCEPTED)
        for mid in moved:
            _wait(client, mid, common_pb2.ACCEPTED)
            message = client.get_message(mid)
            assert message.device_id == b_creds.device_id
            assert all(r.state == common_pb2.ACCEPTED for r in message.recipients)

        failed = client.get_message(pinned)
        assert failed.state == common_pb2.FAILED
        assert [r.error for r in failed.recipients] == ["device deleted"]
        kept = client.get_message(accepted)
        assert kept.state == common_pb2.ACCEPTED and kept.device_id == a_creds.device_id
        assert [d.id for d in client.list_devices().devices] == [b_creds.device_id]
    b.ws.close()


def test_delete_unknown_twice_empty_and_foreign(server: ServerProcess) -> None:
    _, token = _account(server)
    _, other_token = _account(server)
    phone, creds = pair_raw(server.grpc_target, token, server.device_url)
    with Client(server.grpc_target, token) as client, Client(server.grpc_target, other_token) as other:
        with pytest.raises(NotFound):
            client.delete_device("01JNOSUCHDEVICE0000000000Z")
        with pytest.raises(NotFound):
            other.delete_device(creds.device_id)  # another owner's phone is not theirs to see
        with pytest.raises(InvalidArgument) as caught:
            client.delete_device("")
        assert [f for f, _ in caught.value.field_violations] == ["id"]
        assert [d.id for d in client.list_devices().devices] == [creds.device_id]  # untouched so far
        client.delete_device(creds.device_id)
        with pytest.raises(NotFound):
            client.delete_device(creds.device_id)
    _closed_with(phone.ws, CloseCode.CREDENTIALS_REVOKED)


def test_cli_devices_delete(server: ServerProcess, tmp_path: Path) -> None:
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    args = ["--server", server.grpc_target, "--token-file", str(server.token_file())]
    done = subprocess.run([SMSGW, "devices", "delete", creds.device_id, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"deleted {creds.device_id}: 0 unaccepted messages rerouted, 0 failed" in done.stdout
    _closed_with(phone.ws, CloseCode.CREDENTIALS_REVOKED)
    again = subprocess.run([SMSGW, "devices", "delete", creds.device_id, *args], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert "NOT_FOUND" in again.stderr
    with Client(server.grpc_target, server.token) as client:
        assert creds.device_id not in [d.id for d in client.list_devices().devices]
    with pytest.raises(InvalidStatus) as caught:
        open_raw(server.device_url, f"Bearer {creds.token}")
    assert caught.value.response.status_code == 401


def test_delete_between_upgrade_and_hello_refuses_the_session(server: ServerProcess) -> None:
    """The device token was checked at the upgrade; a delete before Hello still ends the session
    with 4004 (no Welcome), and the deleted device takes no messages."""
    _, token = _account(server)
    first, creds = pair_raw(server.grpc_target, token, server.device_url)
    first.ws.close()
    ws = open_raw(server.device_url, f"Bearer {creds.token}")  # upgraded, Hello not sent yet
    with Client(server.grpc_target, token) as client:
        assert client.delete_device(creds.device_id).failed == 0
        session = DeviceSession(Side.PHONE, Encoding.PROTO, window=4)
        session.send_hello(app_version="raw/1", sims=[SimInfo(1)])
        for frame in session.frames_to_send():
            ws.send(frame)
        with pytest.raises(ConnectionClosed) as caught:
            for _ in range(50):
                session.receive_frame(ws.recv(10))
                assert not any(isinstance(e, WelcomeReceived) for e in session.events_received()), "welcomed"
        assert caught.value.rcvd is not None and caught.value.rcvd.code == CloseCode.CREDENTIALS_REVOKED
        assert client.list_devices().devices == []
        # A message sent now waits unrouted for a phone of the owner, not on the deleted one.
        message = client.send_message(["+15551230007"], "after delete")
        assert message.device_id == ""


def test_delete_only_phone_leaves_messages_unrouted_for_the_next_phone(server: ServerProcess) -> None:
    _, token = _account(server)
    a, a_creds = pair_raw(server.grpc_target, token, server.device_url, window=4)
    with Client(server.grpc_target, token) as client:
        mid = client.send_message(["+15551230008"], "outlives its phone").id
        assert a.next_deliver().delivery.message_id == mid
        _wait(client, mid, common_pb2.DISPATCHED)
        result = client.delete_device(a_creds.device_id)
        assert (result.rerouted, result.failed) == (1, 0)
        _closed_with(a.ws, CloseCode.CREDENTIALS_REVOKED)
        waiting = client.get_message(mid)
        assert waiting.state == common_pb2.PENDING and waiting.device_id == ""
        c, c_creds = pair_raw(server.grpc_target, token, server.device_url, window=4)
        deliver = c.next_deliver()
        assert deliver.delivery.message_id == mid and deliver.delivery.text == "outlives its phone"
        c.receipt(mid, ReceiptState.ACCEPTED)
        _wait(client, mid, common_pb2.ACCEPTED)
        assert client.get_message(mid).device_id == c_creds.device_id
    c.ws.close()


def test_messages_moved_to_an_offline_phone_follow_the_next_online_one(server: ServerProcess) -> None:
    _, token = _account(server)
    b, b_creds = pair_raw(server.grpc_target, token, server.device_url)
    b.ws.close()
    # B connects once with its token (a phone, not an orphan of a lost Welcome), then goes offline.
    RawPhone(open_raw(server.device_url, f"Bearer {b_creds.token}"), Encoding.PROTO, 4).ws.close()
    a, a_creds = pair_raw(server.grpc_target, token, server.device_url, window=4)
    with Client(server.grpc_target, token) as client:
        deadline = time.monotonic() + 10
        while any(d.online for d in client.list_devices().devices if d.id == b_creds.device_id):
            assert time.monotonic() < deadline, "B stayed online"
            time.sleep(0.02)
        mid = client.send_message(["+15551230009"], "A had it").id
        assert a.next_deliver().delivery.message_id == mid
        _wait(client, mid, common_pb2.DISPATCHED)
        assert client.delete_device(a_creds.device_id).rerouted == 1
        _closed_with(a.ws, CloseCode.CREDENTIALS_REVOKED)
        assert client.get_message(mid).device_id == b_creds.device_id  # the only phone left, offline
        c, c_creds = pair_raw(server.grpc_target, token, server.device_url, window=4)
        assert c.next_deliver().delivery.message_id == mid  # B is offline: C adopts it
        c.receipt(mid, ReceiptState.ACCEPTED)
        _wait(client, mid, common_pb2.ACCEPTED)
        assert client.get_message(mid).device_id == c_creds.device_id
    c.ws.close()


def test_token_the_bridge_has_seen_is_refused_once_deleted(server: ServerProcess) -> None:
    """The bridge keeps device tokens it has checked in memory (device_bridge.credentials): a
    delete must still turn the next upgrade with that token into a 401, not a session."""
    owner, token = _account(server)
    phone, creds = pair_raw(server.grpc_target, token, server.device_url)
    phone.ws.close()
    for _ in range(2):  # the first Bearer upgrade reads the token, the second finds it kept
        again = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
        assert isinstance(again.welcome, WelcomeReceived) and again.welcome.device_id == creds.device_id
        again.ws.close()
    with Client(server.grpc_target, token) as client:
        client.delete_device(creds.device_id)
    with pytest.raises(InvalidStatus) as caught:
        open_raw(server.device_url, f"Bearer {creds.token}")
    assert caught.value.response.status_code == 401
