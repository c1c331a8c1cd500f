"""Regressions found in review, over real sockets: stranded messages, replays that re-wake a
phone, watch at shutdown, cursor bounds, and -v logs without credentials."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from smsgw.v1 import messages_pb2, messages_pb2_grpc
from smsgw_client import Client, InvalidArgument, Unavailable, from_rpc_error

from device_bridge.protocol import Encoding
from gateway.api.validation import parse_send_request
from gateway.config import LimitsSettings
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.types import utcnow
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess


def test_message_routed_to_an_offline_phone_goes_to_the_phone_that_connects(server: ServerProcess) -> None:
    first, a = pair_raw(server.grpc_target, server.token, server.device_url)
    second, b = pair_raw(server.grpc_target, server.token, server.device_url)
    first.ws.close()
    second.ws.close()
    with Client(server.grpc_target, server.token) as client:
        deadline = time.monotonic() + 10
        while any(d.online for d in client.list_devices().devices) and time.monotonic() < deadline:
            time.sleep(0.02)
        message = client.send_message(["+15551234567"], "whoever comes first")
        other = b if message.device_id == a.device_id else a
        phone = RawPhone(open_raw(server.device_url, f"Bearer {other.token}"), Encoding.PROTO, 4)
        assert phone.next_deliver().delivery.message_id == message.id
        assert client.get_message(message.id).device_id == other.device_id
    phone.ws.close()


def test_a_replay_wakes_the_phone_for_a_message_whose_wake_up_was_lost(server: ServerProcess) -> None:
    """Store a message behind the server's back (as if the RPC died after the commit and before
    the wake-up); the client's retry with the same key must get it delivered."""
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    request = messages_pb2.SendMessageRequest(
        phone_numbers=["+15551234567"], text_message=messages_pb2.TextMessage(text="lost wake-up"),
        device_id=creds.device_id, idempotency_key="retry-me",
    )
    db = Database(f"sqlite:///{server.data_dir / 'smsgw.db'}")
    with Client(server.grpc_target, server.token) as client:
        owner_id = _owner_of(db)
        stored, created = MessageRepository(db).create(owner_id, parse_send_request(request, LimitsSettings(), utcnow()), utcnow())
        assert created
        with pytest.raises(TimeoutError):
            phone.next_deliver(0.5)  # nobody told the bridge
        again = client.send_message(["+15551234567"], "lost wake-up", device_id=creds.device_id, idempotency_key="retry-me")
        assert again.id == stored.id
        assert phone.next_deliver().delivery.message_id == stored.id
    db.close()
    phone.ws.close()


def _owner_of(db: Database) -> str:
    from gateway.auth.repository import AuthRepository

    found = AuthRepository(db).account_by_username("admin")
    assert found is not None
    return found[0].id


@pytest.mark.parametrize(
    ("after", "ids", "field"), [(2**63, 0, "after_event_id"), (None, 1001, "message_ids")]
)
def test_watch_arguments_out_of_range(shared_server: ServerProcess, after: int | None, ids: int, field: str) -> None:
    with grpc.insecure_channel(shared_server.grpc_target) as channel:
        stub = messages_pb2_grpc.MessageServiceStub(channel)
        request = messages_pb2.WatchMessagesRequest(message_ids=[f"m{i}" for i in range(ids)])
        if after is not None:
            request.after_event_id = after
        stream = stub.WatchMessages(request, metadata=[("authorization", f"Bearer {shared_server.token}")], timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
        error = from_rpc_error(caught.value)
        assert isinstance(error, InvalidArgument) and [f for f, _ in error.field_violations] == [field]


def test_watch_resumes_across_a_graceful_restart(server: ServerProcess) -> None:
    """SIGTERM ends watch streams with UNAVAILABLE (not OK), so the client library reconnects
    from its cursor to the restarted server and misses nothing."""
    seen: list[str] = []
    done = threading.Event()
    with Client(server.grpc_target, server.token) as client:
        first = client.send_message(["+15551234567"], "before").id

        def watch() -> None:
            for event in client.watch_messages(after_event_id=0, timeout=60):
                seen.append(event.message_id)
                if len(seen) == 2:
                    break
            done.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stop() == 0
        server.start(same_ports=True)
        second = _send_retrying(client, "after")
        assert done.wait(30), "the watch did not resume after the restart"
    assert seen == [first, second]


def _send_retrying(client: Client, text: str) -> str:
    """Right after a restart the channel may still be backing off: retry with the same key."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return client.send_message(["+15551234567"], text, idempotency_key=f"retry-{text}").id
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_verbose_logs_carry_no_credentials(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", args=("-v",))
    proc.start()
    try:
        phone, creds = pair_raw(proc.grpc_target, proc.token, proc.device_url)
        with Client(proc.grpc_target, proc.token) as client:
            client.send_message(["+15551234567"], "secret body", device_id=creds.device_id)
        phone.next_deliver()
        phone.ws.close()
    finally:
        proc.stop()
    text = proc.log_text()
    assert "DEBUG" in text  # -v took effect
    for secret in (creds.token, proc.token, "Authorization", "secret body", "+15551234567"):
        assert secret not in text
