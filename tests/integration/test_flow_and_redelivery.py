"""Flow control and redelivery against a real server, with a phone the test drives frame by frame."""

from __future__ import annotations

import time

import pytest
from smsgw.v1 import common_pb2
from smsgw_client import Client, FailedPrecondition

from device_bridge.protocol import AckReceived, DropReceived, Encoding, FailureClass, ReceiptState
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess

QUIET = 0.5  # how long "nothing more arrives" is watched; no assertion is made on time


def _wait_state(client: Client, message_id: str, state: int, limit: float = 10.0) -> common_pb2.State:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        current = client.get_message(message_id).state
        if current == state:
            return current
        time.sleep(0.02)
    raise AssertionError(f"{message_id} stayed {common_pb2.State.Name(current)}, wanted {common_pb2.State.Name(state)}")


@pytest.mark.parametrize("encoding", [Encoding.PROTO, Encoding.JSON])
def test_window_of_4_never_exceeded(server: ServerProcess, encoding: Encoding) -> None:
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4, encoding=encoding)
    with Client(server.grpc_target, server.token) as client:
        ids = [client.send_message(["+15551234567"], f"m{i}", device_id=creds.device_id).id for i in range(10)]
        got = [phone.next_deliver().delivery.message_id for _ in range(4)]
        # The phone-side session raises WINDOW_EXCEEDED on a 5th unaccepted Deliver; none comes.
        with pytest.raises(TimeoutError):
            phone.next_deliver(QUIET)
        assert len(phone.proto.in_flight) == 4
        for mid in got[:2]:
            phone.receipt(mid, ReceiptState.ACCEPTED)
        got += [phone.next_deliver().delivery.message_id for _ in range(2)]
        with pytest.raises(TimeoutError):
            phone.next_deliver(QUIET)
        while len(got) < 10:
            phone.receipt(got[len(got) - len(phone.proto.in_flight)], ReceiptState.ACCEPTED)
            got.append(phone.next_deliver().delivery.message_id)
            assert len(phone.proto.in_flight) <= 4
        assert sorted(got) == sorted(ids)
        assert got == ids  # same priority: FIFO


def test_unaccepted_message_redelivered_after_reconnect_accepted_one_not(server: ServerProcess) -> None:
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    with Client(server.grpc_target, server.token) as client:
        accepted = client.send_message(["+15551234567"], "one", device_id=creds.device_id).id
        unaccepted = client.send_message(["+15551234568"], "two", device_id=creds.device_id).id
        assert phone.next_deliver().delivery.message_id == accepted
        assert phone.next_deliver().delivery.message_id == unaccepted
        phone.receipt(accepted, ReceiptState.ACCEPTED)
        assert isinstance(phone.next_event(), AckReceived)
        _wait_state(client, unaccepted, common_pb2.DISPATCHED)
        phone.ws.close()  # drops before accepting `unaccepted`
        _wait_state(client, unaccepted, common_pb2.PENDING)
        again = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
        redelivered = again.next_deliver()
        assert redelivered.delivery.message_id == unaccepted
        assert redelivered.delivery.text == "two"
        with pytest.raises(TimeoutError):
            again.next_deliver(QUIET)
        again.receipt(unaccepted, ReceiptState.ACCEPTED)
        _wait_state(client, unaccepted, common_pb2.ACCEPTED)
        for mid in (accepted, unaccepted):
            message = client.get_message(mid)
            assert len(message.recipients) == 1 and message.recipients[0].state == common_pb2.ACCEPTED


def test_held_ids_in_hello_are_not_resent(server: ServerProcess) -> None:
    """A phone that accepted but lost its receipt says so in Hello (`held`: message, recipient,
    attempt); the bridge marks it ACCEPTED and does not send it again."""
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    with Client(server.grpc_target, server.token) as client:
        mid = client.send_message(["+15551234567"], "held", device_id=creds.device_id).id
        assert phone.next_deliver().delivery.message_id == mid
        phone.ws.close()
        ws = open_raw(server.device_url, f"Bearer {creds.token}")
        from device_bridge.protocol import DeviceSession, HeldRecipient, Side, SimInfo

        again = RawPhone.__new__(RawPhone)
        again.ws, again._pending, again._event_id = ws, [], 0
        again.proto = DeviceSession(Side.PHONE, Encoding.PROTO, window=4)
        again.proto.send_hello(app_version="raw/1", sims=[SimInfo(1)], held_message_ids=[mid], held=[HeldRecipient(mid, 0, 1)])
        again.flush()
        again.next_event()  # Welcome
        _wait_state(client, mid, common_pb2.ACCEPTED)
        with pytest.raises(TimeoutError):
            again.next_deliver(QUIET)


def test_receipts_move_forward_only_and_watch_sees_each_state(server: ServerProcess) -> None:
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    with Client(server.grpc_target, server.token) as client:
        message = client.send_message(["+15551234567", "+447700900123"], "hello", device_id=creds.device_id)
        mid = message.id
        assert phone.next_deliver().delivery.phone_numbers == ("+15551234567", "+447700900123")
        phone.receipt(mid, ReceiptState.ACCEPTED)
        phone.receipt(mid, ReceiptState.SENT, 0)
        phone.receipt(mid, ReceiptState.DELIVERED, 0)
        phone.receipt(mid, ReceiptState.SENT, 0)  # late duplicate: no step back
        phone.receipt(mid, ReceiptState.FAILED, 1, "carrier refused", failure_class=FailureClass.INVALID_NUMBER)
        phone.receipt(mid, ReceiptState.DELIVERED, 1)  # after FAILED: ignored
        phone.receipt(mid, ReceiptState.ACCEPTED)  # repeated: ignored
        _wait_state(client, mid, common_pb2.FAILED)
        final = client.get_message(mid)
        assert [r.state for r in final.recipients] == [common_pb2.DELIVERED, common_pb2.FAILED]
        assert final.recipients[1].error == "invalid_number: carrier refused"
        history = [
            (e.recipient_index, e.state)
            for e in _take(client.watch_messages(after_event_id=0, message_ids=[mid], timeout=10), 9)
        ]
        assert [s for i, s in history if i == 0] == [
            common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.ACCEPTED, common_pb2.SENT, common_pb2.DELIVERED,
        ]
        assert [s for i, s in history if i == 1] == [
            common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.ACCEPTED, common_pb2.FAILED,
        ]


def test_cancel_before_accept_drops_after_accept_refused(server: ServerProcess) -> None:
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    with Client(server.grpc_target, server.token) as client:
        first = client.send_message(["+15551234567"], "cancel me", device_id=creds.device_id).id
        assert phone.next_deliver().delivery.message_id == first
        cancelled = client.cancel_message(first)
        assert cancelled.state == common_pb2.CANCELLED
        drop = phone.next_event()
        assert isinstance(drop, DropReceived) and drop.message_id == first
        assert first not in phone.proto.in_flight
        phone.receipt(first, ReceiptState.ACCEPTED)  # too late: stays CANCELLED
        second = client.send_message(["+15551234567"], "keep me", device_id=creds.device_id).id
        assert phone.next_deliver().delivery.message_id == second
        assert client.get_message(first).state == common_pb2.CANCELLED
        phone.receipt(second, ReceiptState.ACCEPTED)
        _wait_state(client, second, common_pb2.ACCEPTED)
        with pytest.raises(FailedPrecondition):
            client.cancel_message(second)


def _take(stream, n: int) -> list:  # type: ignore[no-untyped-def]
    out = []
    for event in stream:
        out.append(event)
        if len(out) == n:
            break
    stream.close()
    return out


def test_message_cancelled_while_its_phone_was_away_is_dropped_on_reconnect(server: ServerProcess) -> None:
    """The phone took it but its ACCEPTED receipt died with the session; the client then
    cancels. On reconnect the phone lists it as held: the bridge must say Drop."""
    from device_bridge.protocol import DeviceSession, HeldRecipient, Side, SimInfo

    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=4)
    with Client(server.grpc_target, server.token) as client:
        mid = client.send_message(["+15551234567"], "taken, receipt lost", device_id=creds.device_id).id
        assert phone.next_deliver().delivery.message_id == mid
        phone.ws.close()  # before its ACCEPTED receipt could go out
        _wait_state(client, mid, common_pb2.PENDING)
        assert client.cancel_message(mid).state == common_pb2.CANCELLED
        again = RawPhone.__new__(RawPhone)
        again.ws, again._pending, again._event_id = open_raw(server.device_url, f"Bearer {creds.token}"), [], 0
        again.proto = DeviceSession(Side.PHONE, Encoding.PROTO, window=4)
        again.proto.send_hello(app_version="raw/1", sims=[SimInfo(1)], held_message_ids=[mid], held=[HeldRecipient(mid, 0, 1)])
        again.flush()
        again.next_event()  # Welcome
        drop = again.next_event()
        assert isinstance(drop, DropReceived) and drop.message_id == mid and drop.reason == "cancelled"
        assert client.get_message(mid).state == common_pb2.CANCELLED
