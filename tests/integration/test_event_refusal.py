"""A device event the bridge can never store is refused alone (Reject), not by closing the
session (issue 14, item 2): one such "poison" event used to close every session with 4000,
because the phone re-sends unacknowledged events in order after each Welcome, and the receipts
queued behind it were never stored.

Real server, real sockets: raw phones (tests/helpers/raw_phone.py) write exact frames; the
reference phone (smsgw_agent) shows a phone forgetting a refused event for good. Every wait is
bounded; nothing is asserted on time.
"""

from __future__ import annotations

import itertools

import pytest
import trio
from smsgw.device.v1 import device_pb2
from smsgw.v1 import common_pb2
from smsgw_client import Client

from device_bridge.protocol import (
    MAX_REASON_BYTES,
    AckReceived,
    Credentials,
    Encoding,
    Event,
    Receipt,
    ReceiptState,
    RejectReason,
    RejectReceived,
    SessionState,
    encode,
)
from device_bridge.protocol.events import MAX_INBOUND_TEXT_CHARS
from tests.helpers.auth import wait_until
from tests.helpers.phones import start_phones
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess

SENDER = "+15550002222"
NUMBER = "+15550003333"
TIMEOUT = 20.0
ENCODINGS = pytest.mark.parametrize("encoding", [Encoding.PROTO, Encoding.JSON], ids=["proto", "json"])
_ids = itertools.count(1)
# A 110-part concatenated SMS (153 GSM-7 characters per part): over the 16,384-character bound.
LONG_TEXT = "".join(f"part {i:03d} " + "x" * 144 for i in range(110))


def _send_raw(phone: RawPhone, **members: object) -> None:
    phone.ws.send(encode(device_pb2.DeviceFrame(**members), phone.proto.encoding))  # type: ignore[arg-type]


def _answers(phone: RawPhone, event_ids: set[int]) -> dict[int, Event]:
    """Read until every id in `event_ids` was Acked or Rejected; id -> the Ack or Reject."""
    seen: dict[int, Event] = {}
    for _ in range(50):  # bounded: each event is answered once, and the raw phone's recv times out
        event = phone.next_event()
        if isinstance(event, AckReceived):
            seen.update((i, event) for i in event.event_ids if i in event_ids)
        elif isinstance(event, RejectReceived) and event.event_id in event_ids:
            seen[event.event_id] = event
        if seen.keys() == event_ids:
            return seen
    raise AssertionError(f"unanswered events: {event_ids - seen.keys()}")


def _reconnect(server: ServerProcess, creds: Credentials, encoding: Encoding) -> RawPhone:
    return RawPhone(open_raw(server.device_url, f"Bearer {creds.token}", subprotocols=[encoding]), encoding, 4)


@ENCODINGS
def test_an_oversized_inbound_is_stored_truncated_and_the_receipt_behind_it_is_stored(
    shared_server: ServerProcess, encoding: Encoding
) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, encoding=encoding)
    with Client(server.grpc_target, server.token) as client:
        message_id = client.send_message([NUMBER], "your code is 4711", device_id=creds.device_id).id
        assert phone.next_deliver().delivery.message_id == message_id
        # The order: the oversized SMS first, the DELIVERED receipt queued behind it.
        inbound = device_pb2.Inbound(event_id=1000, id=f"long-{next(_ids)}", sender=SENDER, sim_number=1, text=LONG_TEXT)
        _send_raw(phone, inbound=inbound)
        receipt_id = phone.receipt(message_id, ReceiptState.DELIVERED)
        answers = _answers(phone, {1000, receipt_id})
        assert all(isinstance(a, AckReceived) for a in answers.values())  # both stored
        assert phone.proto.state is SessionState.OPEN

        [stored] = client.list_inbound(device_id=creds.device_id).messages
        assert stored.truncated and stored.text_message.text == LONG_TEXT[:MAX_INBOUND_TEXT_CHARS]
        assert client.get_message(message_id).state == common_pb2.DELIVERED
        stream = client.watch_inbound(0, creds.device_id, timeout=TIMEOUT)
        try:
            watched = next(iter(stream))
        finally:
            stream.close()
        assert watched.message.truncated and watched.message.id == stored.id
        phone.ws.close()

        # The Ack was "lost": the phone re-sends after the next Welcome; it is Acked again,
        # kept once, and the session stays open.
        again = _reconnect(server, creds, encoding)
        _send_raw(again, inbound=inbound)
        assert isinstance(_answers(again, {1000})[1000], AckReceived)
        assert again.proto.state is SessionState.OPEN
        assert [m.id for m in client.list_inbound(device_id=creds.device_id).messages] == [stored.id]
        again.ws.close()
    log = server.log_text()
    assert LONG_TEXT[:40] not in log and SENDER not in log


@ENCODINGS
def test_events_that_can_never_be_stored_are_refused_and_the_session_goes_on(
    shared_server: ServerProcess, encoding: Encoding
) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url, encoding=encoding)
    with Client(server.grpc_target, server.token) as client:
        message_id = client.send_message([NUMBER], "two recipients?", device_id=creds.device_id).id
        phone.next_deliver()
        unknown = phone.receipt("01NOSUCHMESSAGE00000000000", ReceiptState.DELIVERED)
        bad_index = phone.receipt(message_id, ReceiptState.SENT, recipient_index=5)
        _send_raw(phone, receipt=device_pb2.Receipt(event_id=500, message_id=message_id))  # no state
        _send_raw(phone, inbound=device_pb2.Inbound(event_id=501, id="no-sender", text="hello there"))
        expected = {
            unknown: RejectReason.UNKNOWN_MESSAGE,
            bad_index: RejectReason.UNKNOWN_RECIPIENT,
            500: RejectReason.INVALID_EVENT,
            501: RejectReason.INVALID_EVENT,
        }
        answers = _answers(phone, set(expected))
        assert {i: a.reason for i, a in answers.items() if isinstance(a, RejectReceived)} == expected
        rejects = [a for a in answers.values() if isinstance(a, RejectReceived)]
        assert all(0 < len(r.detail.encode()) <= MAX_REASON_BYTES for r in rejects)
        assert "Receipt.state" in answers[500].detail and "Inbound.sender" in answers[501].detail  # type: ignore[union-attr]

        # Refused again the same way, and the session still stores what is valid.
        _send_raw(phone, receipt=device_pb2.Receipt(event_id=500, message_id=message_id))
        assert _answers(phone, {500})[500] == answers[500]
        ok = phone.receipt(message_id, ReceiptState.DELIVERED)
        assert isinstance(_answers(phone, {ok})[ok], AckReceived)
        assert client.get_message(message_id).state == common_pb2.DELIVERED
        assert client.list_inbound(device_id=creds.device_id).messages == []  # the refused SMS
        assert phone.proto.state is SessionState.OPEN
        phone.ws.close()
    assert "hello there" not in server.log_text()


def test_the_reference_phone_forgets_a_refused_event_and_never_sends_it_again(server: ServerProcess) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1)
            # A receipt the phone still holds for a message the server no longer has (e.g.
            # deleted), as if its Ack had been lost: it goes out after the next Welcome.
            event_id = phone._next_event_id
            phone._next_event_id += 1
            phone.unacked[event_id] = Receipt(event_id, "01NOSUCHMESSAGE00000000000", ReceiptState.DELIVERED)
            await phone.drop_session()
            with trio.fail_after(TIMEOUT):
                await phone.wait_for(lambda p: p.sessions >= 2 and event_id in p.rejected)
            assert phone.unacked == {} and phone.rejected[event_id].reason is RejectReason.UNKNOWN_MESSAGE
            await phone.drop_session()
            with trio.fail_after(TIMEOUT):
                await phone.wait_for(lambda p: p.sessions >= 3)
            # A marker SMS stored after the third Welcome: anything re-sent before it was read first.
            phone.receive_sms(SENDER, "marker")
            with trio.fail_after(TIMEOUT):
                await phone.wait_for(lambda p: p.connected and not p.inbound_unacked)
            assert phone.statistics().rejected == 1
            nursery.cancel_scope.cancel()

    trio.run(main)
    refusal = "refused: no such message on this device"
    assert wait_until(lambda: refusal in server.log_text(), timeout=TIMEOUT)
    assert server.log_text().count(refusal) == 1  # refused once, never re-sent
