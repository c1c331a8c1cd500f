"""Tests for device_bridge.protocol.session: a BRIDGE and a PHONE session wired together.

No sockets: frames_to_send() of one side goes into receive_frame() of the
other. Every test runs for both encodings (the ``encoding`` fixture).
"""

from __future__ import annotations

import ast
import importlib
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from smsgw.device.v1 import device_pb2

import device_bridge.protocol
from device_bridge.protocol import (
    MAX_REASON_BYTES,
    AckReceived,
    CloseCode,
    Credentials,
    DeliverReceived,
    Delivery,
    DeviceSession,
    DropReceived,
    Encoding,
    HelloReceived,
    InvalidEventReceived,
    PushTokenReceived,
    InvalidState,
    ProtocolError,
    Receipt,
    ReceiptReceived,
    ReceiptState,
    RejectReason,
    RejectReceived,
    RemoteProtocolError,
    SessionState,
    SessionStatistics,
    Side,
    SimInfo,
    WelcomeReceived,
    codec,
    encode,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
NUMBER = "+15550001234"
BODY = "SECRET BODY 4711"
FAST = settings(max_examples=200, deadline=None, database=None)

_event_ids = itertools.count(1)


# --- helpers ------------------------------------------------------------------


@pytest.fixture(params=list(Encoding), ids=["proto", "json"])
def encoding(request: pytest.FixtureRequest) -> Encoding:
    return request.param  # type: ignore[no-any-return]


def transfer(sender: DeviceSession, receiver: DeviceSession) -> list[Any]:
    """Pass every frame ``sender`` has queued to ``receiver``; return its events."""
    for frame in sender.frames_to_send():
        receiver.receive_frame(frame)
    return receiver.events_received()


def state_of(session: DeviceSession) -> SessionState:
    return session.state


def make_pair(encoding: Encoding, *, window: int = 3, max_window: int = 1000) -> tuple[DeviceSession, DeviceSession]:
    return (
        DeviceSession(Side.BRIDGE, encoding, max_window=max_window),
        DeviceSession(Side.PHONE, encoding, window=window),
    )


def open_pair(encoding: Encoding, *, window: int = 3, max_window: int = 1000) -> tuple[DeviceSession, DeviceSession]:
    """A BRIDGE and a PHONE session past the handshake, with nothing queued."""
    bridge, phone = make_pair(encoding, window=window, max_window=max_window)
    phone.send_hello(app_version="1.2.3", sims=[SimInfo(1, "Op", "de")])
    transfer(phone, bridge)
    bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
    transfer(bridge, phone)
    return bridge, phone


def delivery(message_id: str = "m1", **kwargs: Any) -> Delivery:
    kwargs.setdefault("text", BODY)
    return Delivery(message_id, (NUMBER,), **kwargs)


def receipt(message_id: str = "m1", state: ReceiptState = ReceiptState.ACCEPTED, **kwargs: Any) -> Receipt:
    return Receipt(next(_event_ids), message_id, state, **kwargs)


def deliver(bridge: DeviceSession, phone: DeviceSession, *message_ids: str) -> list[Any]:
    for message_id in message_ids:
        bridge.send_deliver(delivery(message_id))
    return transfer(bridge, phone)


def raw(encoding: Encoding, **members: Any) -> bytes | str:
    """Encode a hand-made frame: a BridgeFrame for welcome/deliver/ack/drop, else a DeviceFrame."""
    if members.keys() & {"hello", "receipt", "push_token"}:
        return encode(device_pb2.DeviceFrame(**members), encoding)
    return encode(device_pb2.BridgeFrame(**members), encoding)


def raw_deliver(encoding: Encoding, message_id: str) -> bytes | str:
    return raw(encoding, deliver=codec.delivery_to_proto(delivery(message_id)))


def assert_fails(session: DeviceSession, data: bytes | str, code: CloseCode) -> RemoteProtocolError:
    """Feed ``data``; check the session fails with ``code`` and a safe reason."""
    with pytest.raises(RemoteProtocolError) as info:
        session.receive_frame(data)
    exc = info.value
    assert exc.code is code, exc.reason
    assert 0 < len(exc.reason.encode()) <= MAX_REASON_BYTES
    assert NUMBER not in str(exc) and BODY not in str(exc)
    assert session.state is SessionState.CLOSED
    assert session.events_received() == []
    return exc


# --- tests --------------------------------------------------------------------


class TestHandshake:
    def test_hello_then_welcome_opens_both_sides(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding, window=5)
        assert (bridge.state, phone.state) == (SessionState.AWAIT_HELLO, SessionState.AWAIT_HELLO)

        phone.send_hello(app_version="1.2.3", sims=[SimInfo(1, "Op", "de"), SimInfo(2)], held_message_ids=["h1"])
        assert phone.state is SessionState.AWAIT_WELCOME
        assert transfer(phone, bridge) == [
            HelloReceived("1.2.3", (SimInfo(1, "Op", "de"), SimInfo(2)), 5, ("h1",)),
        ]
        assert bridge.state is SessionState.AWAIT_WELCOME
        assert bridge.window == 5

        bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
        assert state_of(bridge) is SessionState.OPEN  # (mypy narrows bridge.state above)
        assert transfer(bridge, phone) == [WelcomeReceived("dev-1", 5, 20, NOW, None)]
        assert state_of(phone) is SessionState.OPEN
        assert phone.window == bridge.window == 5

    def test_frames_are_binary_or_text_by_encoding(self, encoding: Encoding) -> None:
        _, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        [frame] = phone.frames_to_send()
        assert isinstance(frame, bytes if encoding is Encoding.PROTO else str)
        assert phone.frames_to_send() == []  # drained

    def test_bridge_caps_the_window_with_max_window(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=10, max_window=4)
        assert bridge.window == phone.window == 4
        assert bridge.window_available == 4

    def test_welcome_carries_credentials_once(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        bridge.send_welcome("dev-9", ping_interval=0, server_time=NOW, credentials=Credentials("dev-9", "s3cr3t"))
        [event] = transfer(bridge, phone)
        assert isinstance(event, WelcomeReceived)
        assert event.credentials == Credentials("dev-9", "s3cr3t")
        assert "s3cr3t" not in repr(event)

    def test_server_time_is_aware_utc(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW.astimezone(timezone(timedelta(hours=2))))
        [event] = transfer(bridge, phone)
        assert event.server_time == NOW and event.server_time.tzinfo is UTC

    def test_commands_out_of_order_are_our_bug(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(InvalidState):
            bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)  # before Hello
        with pytest.raises(InvalidState):
            bridge.send_hello(app_version="1", sims=[])  # wrong side
        with pytest.raises(InvalidState):
            phone.send_welcome("dev-1", ping_interval=20, server_time=NOW)  # wrong side
        with pytest.raises(InvalidState):
            phone.send_receipt(receipt())  # before Welcome
        phone.send_hello(app_version="1", sims=[])
        with pytest.raises(InvalidState):
            phone.send_hello(app_version="1", sims=[])  # twice
        transfer(phone, bridge)
        bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
        with pytest.raises(InvalidState):
            bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)  # twice
        assert issubclass(InvalidState, AssertionError) and issubclass(InvalidState, ProtocolError)

    @pytest.mark.parametrize(
        ("side", "kwargs"),
        [
            (Side.PHONE, {}),  # a phone must advertise a window
            (Side.PHONE, {"window": 0}),
            (Side.PHONE, {"window": 5, "max_window": 4}),
            (Side.BRIDGE, {"window": 5}),  # the bridge learns it from Hello
            (Side.BRIDGE, {"max_window": 0}),
            (Side.BRIDGE, {"max_window": 1001}),
        ],
    )
    def test_bad_constructor_arguments(self, encoding: Encoding, side: Side, kwargs: dict[str, int]) -> None:
        with pytest.raises(ValueError):
            DeviceSession(side, encoding, **kwargs)

    def test_bad_command_arguments(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(ValueError):
            phone.send_hello(app_version="1", sims=[], held_message_ids=[""])
        with pytest.raises(ValueError):
            SimInfo(0)  # slots are 1-based
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        with pytest.raises(ValueError):
            bridge.send_welcome("dev-1", ping_interval=20, server_time=datetime(2026, 1, 1))  # naive
        with pytest.raises(ValueError):
            bridge.send_welcome("", ping_interval=20, server_time=NOW)
        assert bridge.state is SessionState.AWAIT_WELCOME  # nothing happened
        assert bridge.frames_to_send() == []

    def test_statistics(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=4)
        deliver(bridge, phone, "m1", "m2")
        assert bridge.statistics() == SessionStatistics(frames_received=1, frames_sent=3, in_flight=2, window=4)
        assert phone.statistics() == SessionStatistics(frames_received=3, frames_sent=1, in_flight=2, window=4)
        assert bridge.side is Side.BRIDGE and phone.side is Side.PHONE
        assert bridge.encoding is phone.encoding is encoding
        assert "BRIDGE OPEN" in repr(bridge)


class TestPushToken:
    """The phone's FCM token (docs/protocol.md rule 13): in Hello, and in a PushToken frame."""

    def test_in_hello_and_as_a_frame(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[], push_token="fcm:APA91b-x_y")
        [hello] = transfer(phone, bridge)
        assert hello.push_token == "fcm:APA91b-x_y"
        bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
        transfer(bridge, phone)
        phone.send_push_token("fcm:new")
        phone.send_push_token("")  # none any more
        assert transfer(phone, bridge) == [PushTokenReceived("fcm:new"), PushTokenReceived("")]
        assert bridge.state is SessionState.OPEN

    def test_a_hello_without_one_has_none(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        [hello] = transfer(phone, bridge)
        assert hello.push_token == ""

    @pytest.mark.parametrize("bad", ["has space", "é", "x" * 1025, "tab\t"])
    def test_a_token_that_is_not_printable_ascii_or_too_long_closes_4000(self, encoding: Encoding, bad: str) -> None:
        bridge, _ = make_pair(encoding)
        frame = raw(encoding, hello=device_pb2.Hello(app_version="1", window=3, push_token=bad))
        exc = assert_fails(bridge, frame, CloseCode.BAD_FRAME)
        assert "Hello.push_token" in exc.reason and bad not in exc.reason
        bridge, _ = open_pair(encoding)
        exc = assert_fails(bridge, raw(encoding, push_token=device_pb2.PushToken(token=bad)), CloseCode.BAD_FRAME)
        assert "PushToken.token" in exc.reason
        with pytest.raises(ValueError):
            open_pair(encoding)[1].send_push_token(bad)

    def test_only_an_open_phone_sends_one(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(InvalidState):
            phone.send_push_token("t")
        with pytest.raises(InvalidState):
            bridge.send_push_token("t")


class TestDeliver:
    def test_deliver_carries_every_field(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        sent = Delivery(
            "m1",
            (NUMBER, "+15550009999"),
            text=BODY,
            sim_number=2,
            is_encrypted=True,
            with_delivery_report=False,
            priority=-5,
            valid_until=NOW,
        )
        bridge.send_deliver(sent)
        assert transfer(bridge, phone) == [DeliverReceived(sent, duplicate=False)]

    def test_data_message(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        sent = Delivery("m1", (NUMBER,), data=b"\x00\x01\xff", port=2948)
        bridge.send_deliver(sent)
        [event] = transfer(bridge, phone)
        assert event.delivery == sent and event.delivery.text is None

    def test_delivery_repr_hides_numbers_and_body(self) -> None:
        text = repr(delivery("m1"))
        assert NUMBER not in text and BODY not in text and "'m1'" in text
        assert b"\xff\xfe" not in repr(Delivery("m2", (NUMBER,), data=b"\xff\xfe")).encode()

    def test_both_sides_count_it_in_flight(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1", "m2")
        assert bridge.in_flight == phone.in_flight == {"m1", "m2"}

    def test_bridge_cannot_deliver_an_id_twice(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1")
        with pytest.raises(InvalidState, match="already in flight"):
            bridge.send_deliver(delivery("m1"))

    def test_phone_flags_a_duplicate(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=2)
        deliver(bridge, phone, "m1", "m2")  # window full
        phone.receive_frame(raw_deliver(encoding, "m1"))  # does not count twice
        [event] = phone.events_received()
        assert isinstance(event, DeliverReceived) and event.duplicate
        assert phone.in_flight == {"m1", "m2"}

    def test_delivery_validates_itself(self) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            Delivery("m1", (NUMBER,))
        with pytest.raises(ValueError, match="exactly one"):
            Delivery("m1", (NUMBER,), text="x", data=b"x")
        with pytest.raises(ValueError, match="phone_numbers"):
            Delivery("m1", (), text="x")
        with pytest.raises(TypeError):
            Delivery("m1", NUMBER, text="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="port"):
            Delivery("m1", (NUMBER,), text="x", port=80)
        with pytest.raises(ValueError, match="port"):
            Delivery("m1", (NUMBER,), data=b"", port=70000)
        with pytest.raises(ValueError, match="message_id"):
            Delivery("", (NUMBER,), text="x")
        with pytest.raises(ValueError, match="timezone-aware"):
            Delivery("m1", (NUMBER,), text="x", valid_until=datetime(2026, 1, 1))
        assert Delivery("m1", [NUMBER], text="x").phone_numbers == (NUMBER,)  # type: ignore[arg-type]

    def test_only_the_bridge_delivers_and_only_when_open(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(InvalidState):
            bridge.send_deliver(delivery())
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        with pytest.raises(InvalidState):
            bridge.send_deliver(delivery())  # Welcome not sent yet
        with pytest.raises(InvalidState):
            phone.send_deliver(delivery())


class TestReceiptAndAck:
    @pytest.mark.parametrize("state", list(ReceiptState))
    def test_any_receipt_frees_the_window(self, encoding: Encoding, state: ReceiptState) -> None:
        bridge, phone = open_pair(encoding, window=1)
        deliver(bridge, phone, "m1")
        assert bridge.window_available == phone.window_available == 0
        phone.send_receipt(receipt("m1", state))
        assert phone.in_flight == set() and bridge.in_flight == {"m1"}  # in transit
        [event] = transfer(phone, bridge)
        assert isinstance(event, ReceiptReceived) and event.receipt.state is state
        assert bridge.in_flight == set() and bridge.window_available == 1

    def test_receipt_carries_every_field(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        sent = Receipt(
            2**64 - 1, "m1", ReceiptState.FAILED, recipient_index=3, error="RESULT_ERROR_NO_SERVICE", time=NOW
        )
        phone.send_receipt(sent)
        assert transfer(phone, bridge) == [ReceiptReceived(sent)]

    def test_receipts_for_messages_not_in_flight_are_fine(self, encoding: Encoding) -> None:
        # After a reconnect the phone re-sends receipts the bridge never acked.
        bridge, phone = open_pair(encoding)
        phone.send_receipt(receipt("old", ReceiptState.DELIVERED))
        [event] = transfer(phone, bridge)
        assert event.receipt.message_id == "old"
        assert bridge.state is SessionState.OPEN

    def test_accepted_then_sent(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1")
        phone.send_receipt(receipt("m1", ReceiptState.ACCEPTED))
        phone.send_receipt(receipt("m1", ReceiptState.SENT, recipient_index=0))
        events = transfer(phone, bridge)
        assert [e.receipt.state for e in events] == [ReceiptState.ACCEPTED, ReceiptState.SENT]

    def test_ack(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        bridge.send_ack([1, 2, 2**64 - 1])
        assert transfer(bridge, phone) == [AckReceived((1, 2, 2**64 - 1))]

    def test_empty_ack_sends_nothing(self, encoding: Encoding) -> None:
        bridge, _ = open_pair(encoding)
        bridge.send_ack([])
        assert bridge.frames_to_send() == []

    def test_bad_receipts_and_acks_are_refused_before_sending(self, encoding: Encoding) -> None:
        bridge, _ = open_pair(encoding)
        with pytest.raises(ValueError):
            Receipt(0, "m1", ReceiptState.ACCEPTED)
        with pytest.raises(ValueError):
            Receipt(1, "m1", 0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            bridge.send_ack([0])
        assert Receipt(1, "m1", 2).state is ReceiptState.SENT  # type: ignore[arg-type]

    def test_wrong_side_or_state(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(InvalidState):
            bridge.send_ack([1])  # not open
        bridge, phone = open_pair(encoding)
        with pytest.raises(InvalidState):
            phone.send_ack([1])
        with pytest.raises(InvalidState):
            bridge.send_receipt(receipt())


class TestReject:
    def test_the_bridge_refuses_one_event_and_the_session_goes_on(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        bridge.send_reject(2**64 - 1, RejectReason.UNKNOWN_MESSAGE, "no such message on this device")
        bridge.send_ack([3])
        assert transfer(bridge, phone) == [
            RejectReceived(2**64 - 1, RejectReason.UNKNOWN_MESSAGE, "no such message on this device"),
            AckReceived((3,)),
        ]
        assert bridge.state is phone.state is SessionState.OPEN

    def test_json_mapping(self) -> None:
        bridge, _ = open_pair(Encoding.JSON)
        bridge.send_reject(12, RejectReason.INVALID_EVENT, "Inbound.sender must not be empty")
        [data] = bridge.frames_to_send()
        assert json.loads(data) == {
            "reject": {"eventId": "12", "reason": "INVALID_EVENT", "detail": "Inbound.sender must not be empty"}
        }

    def test_the_phone_accepts_numbers_and_ignores_unknown_fields(self) -> None:
        _, phone = open_pair(Encoding.JSON)
        phone.receive_frame(json.dumps({"reject": {"event_id": 5, "reason": 3, "hint": "x"}, "future": {}}))
        assert phone.events_received() == [RejectReceived(5, RejectReason.UNKNOWN_RECIPIENT)]

    def test_an_unknown_reason_reads_as_unspecified(self, encoding: Encoding) -> None:
        _, phone = open_pair(encoding)
        if encoding is Encoding.PROTO:
            data = raw(encoding, reject=device_pb2.Reject(event_id=5, reason=99))  # type: ignore[arg-type]
        else:
            data = json.dumps({"reject": {"eventId": "5", "reason": "FROM_THE_FUTURE"}})
        phone.receive_frame(data)
        assert phone.events_received() == [RejectReceived(5, RejectReason.UNSPECIFIED)]
        assert phone.state is SessionState.OPEN

    def test_a_reject_naming_no_event_is_a_bad_frame(self, encoding: Encoding) -> None:
        _, phone = open_pair(encoding)
        assert_fails(phone, raw(encoding, reject=device_pb2.Reject(reason=1)), CloseCode.BAD_FRAME)

    def test_detail_is_cut_to_120_bytes(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        bridge.send_reject(1, RejectReason.INVALID_EVENT, "é" * 100)
        [event] = transfer(bridge, phone)
        assert event.detail == "é" * 60

    def test_wrong_side_or_state(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(InvalidState):
            bridge.send_reject(1, RejectReason.INVALID_EVENT)  # not open
        phone.send_hello(app_version="1", sims=[])
        assert_fails(phone, raw(encoding, reject=device_pb2.Reject(event_id=1)), CloseCode.PROTOCOL_VIOLATION)
        bridge, phone = open_pair(encoding)
        with pytest.raises(InvalidState):
            phone.send_reject(1, RejectReason.INVALID_EVENT)
        with pytest.raises(ValueError):
            bridge.send_reject(0, RejectReason.INVALID_EVENT)
        assert bridge.frames_to_send() == []

    def test_reasons_mirror_the_proto(self) -> None:
        assert {r.name: r.value for r in RejectReason if r} == {
            n: v for n, v in device_pb2.RejectReason.items() if v
        }


class TestDrop:
    def test_drop_frees_the_window_on_both_sides(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=1)
        deliver(bridge, phone, "m1")
        bridge.send_drop("m1", "expired")
        assert bridge.in_flight == set() and bridge.window_available == 1
        bridge.send_deliver(delivery("m2"))  # sent behind the Drop
        assert transfer(bridge, phone) == [DropReceived("m1", "expired"), DeliverReceived(delivery("m2"), False)]
        assert phone.in_flight == {"m2"}

    def test_drop_of_an_accepted_message(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1")
        phone.send_receipt(receipt("m1"))
        transfer(phone, bridge)
        bridge.send_drop("m1", "cancelled")
        assert transfer(bridge, phone) == [DropReceived("m1", "cancelled")]
        assert bridge.in_flight == phone.in_flight == set()

    def test_redeliver_after_drop_is_not_a_duplicate(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1")
        bridge.send_drop("m1", "")
        [_, event] = deliver(bridge, phone, "m1")
        assert event == DeliverReceived(delivery("m1"), duplicate=False)

    def test_wrong_side_or_state(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        with pytest.raises(InvalidState):
            bridge.send_drop("m1", "")
        bridge, phone = open_pair(encoding)
        with pytest.raises(InvalidState):
            phone.send_drop("m1", "")
        with pytest.raises(ValueError):
            bridge.send_drop("", "")


class TestFlowControl:
    def test_bridge_never_exceeds_the_window(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=3)
        deliver(bridge, phone, "m1", "m2", "m3")
        assert bridge.window_available == 0
        with pytest.raises(InvalidState, match="window"):
            bridge.send_deliver(delivery("m4"))
        assert bridge.in_flight == {"m1", "m2", "m3"} and bridge.frames_to_send() == []

    def test_no_window_before_open(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding, window=3)
        assert bridge.window == 0 and bridge.window_available == 0
        assert phone.window == 3 and phone.window_available == 0
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        assert bridge.window == 3 and bridge.window_available == 0  # Welcome not sent
        bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
        assert bridge.window_available == 3

    def test_phone_refuses_window_plus_one_delivers(self, encoding: Encoding) -> None:
        _, phone = open_pair(encoding, window=3)
        for message_id in ("m1", "m2", "m3"):
            phone.receive_frame(raw_deliver(encoding, message_id))
        assert len(phone.events_received()) == 3
        exc = assert_fails(phone, raw_deliver(encoding, "m4"), CloseCode.WINDOW_EXCEEDED)
        assert exc.reason == "Deliver beyond the window of 3"
        assert phone.in_flight == {"m1", "m2", "m3"}

    def test_phone_enforces_the_negotiated_window(self, encoding: Encoding) -> None:
        _, phone = open_pair(encoding, window=5, max_window=2)
        phone.receive_frame(raw_deliver(encoding, "m1"))
        phone.receive_frame(raw_deliver(encoding, "m2"))
        assert len(phone.events_received()) == 2
        assert_fails(phone, raw_deliver(encoding, "m3"), CloseCode.WINDOW_EXCEEDED)

    def test_receipt_in_transit_keeps_the_bridge_conservative(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=1)
        deliver(bridge, phone, "m1")
        phone.send_receipt(receipt("m1"))
        assert phone.window_available == 1 and bridge.window_available == 0
        transfer(phone, bridge)
        assert bridge.window_available == 1

    def test_receipts_free_the_window_for_more(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding, window=2)
        for round_ in range(5):
            ids = [f"m{round_}a", f"m{round_}b"]
            deliver(bridge, phone, *ids)
            assert bridge.window_available == 0
            for message_id in ids:
                phone.send_receipt(receipt(message_id))
            transfer(phone, bridge)
        assert bridge.in_flight == phone.in_flight == set()


class BridgePhoneMachine(RuleBasedStateMachine):
    """A bridge and a phone with frames in transit, receipts, drops and reconnects.

    ``pending`` models storage: messages neither accepted nor finished nor
    dropped, which the bridge (re)delivers. ``held`` models the phone's
    durable store of accepted messages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoding = Encoding.PROTO
        self.pending: set[str] = set()
        self.held: set[str] = set()
        self.skip: set[str] = set()
        self.unacked: list[int] = []
        self.to_phone: list[bytes | str] = []
        self.to_bridge: list[bytes | str] = []
        self.ids = itertools.count(1)
        self.advertised = 0

    def connect(self, window: int, max_window: int) -> None:
        self.bridge = DeviceSession(Side.BRIDGE, self.encoding, max_window=max_window)
        self.phone = DeviceSession(Side.PHONE, self.encoding, window=window)
        self.advertised = window
        self.phone.send_hello(app_version="t", sims=[SimInfo(1)], held_message_ids=sorted(self.held))
        [hello] = transfer(self.phone, self.bridge)
        self.skip = set(hello.held_message_ids)  # the bridge does not re-send these
        self.bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
        transfer(self.bridge, self.phone)
        self.to_phone.clear()
        self.to_bridge.clear()

    def send_receipt(self, message_id: str, state: ReceiptState) -> None:
        self.phone.send_receipt(Receipt(next(self.ids), message_id, state))
        self.to_bridge.extend(self.phone.frames_to_send())

    @initialize(encoding=st.sampled_from(list(Encoding)), window=st.integers(1, 4), max_window=st.integers(1, 4))
    def start(self, encoding: Encoding, window: int, max_window: int) -> None:
        self.encoding = encoding
        self.connect(window, max_window)

    @rule()
    def new_message(self) -> None:
        self.pending.add(f"m{next(self.ids)}")

    @rule()
    def dispatch(self) -> None:
        candidates = sorted(self.pending - self.bridge.in_flight - self.skip)
        if not candidates:
            return
        if self.bridge.window_available == 0:
            with pytest.raises(InvalidState):
                self.bridge.send_deliver(delivery(candidates[0]))
            return
        self.bridge.send_deliver(delivery(candidates[0]))
        self.to_phone.extend(self.bridge.frames_to_send())

    @precondition(lambda self: self.to_phone)
    @rule(count=st.integers(1, 3))
    def pump_to_phone(self, count: int) -> None:
        for _ in range(min(count, len(self.to_phone))):
            self.phone.receive_frame(self.to_phone.pop(0))
        for event in self.phone.events_received():
            if isinstance(event, DeliverReceived) and event.delivery.message_id in self.held:
                self.send_receipt(event.delivery.message_id, ReceiptState.ACCEPTED)  # already held
            elif isinstance(event, DropReceived):
                self.held.discard(event.message_id)

    @precondition(lambda self: self.to_bridge)
    @rule(count=st.integers(1, 3))
    def pump_to_bridge(self, count: int) -> None:
        for _ in range(min(count, len(self.to_bridge))):
            self.bridge.receive_frame(self.to_bridge.pop(0))
        for event in self.bridge.events_received():
            assert isinstance(event, ReceiptReceived)
            self.pending.discard(event.receipt.message_id)
            self.unacked.append(event.receipt.event_id)

    @precondition(lambda self: self.phone.in_flight)
    @rule(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.phone.in_flight)))
        self.held.add(message_id)
        self.send_receipt(message_id, ReceiptState.ACCEPTED)

    @precondition(lambda self: self.held or self.phone.in_flight)
    @rule(data=st.data(), state=st.sampled_from([ReceiptState.SENT, ReceiptState.DELIVERED, ReceiptState.FAILED]))
    def finish(self, data: st.DataObject, state: ReceiptState) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.held | self.phone.in_flight)))
        self.held.discard(message_id)
        self.send_receipt(message_id, state)

    @precondition(lambda self: self.bridge.in_flight)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.bridge.in_flight)))
        self.pending.discard(message_id)
        self.bridge.send_drop(message_id, "cancelled")
        self.to_phone.extend(self.bridge.frames_to_send())

    @rule()
    def ack(self) -> None:
        self.bridge.send_ack(self.unacked)
        self.unacked.clear()
        self.to_phone.extend(self.bridge.frames_to_send())

    @rule(window=st.integers(1, 4), max_window=st.integers(1, 4))
    def reconnect(self, window: int, max_window: int) -> None:
        self.bridge.receive_closed()
        self.phone.receive_closed()
        assert self.bridge.in_flight <= self.pending | self.held  # what the bridge requeues
        self.connect(window, max_window)

    @invariant()
    def within_the_window(self) -> None:
        assert len(self.bridge.in_flight) <= self.bridge.window
        assert len(self.phone.in_flight) <= self.phone.window
        assert self.bridge.window == self.phone.window <= self.advertised
        assert self.bridge.state is self.phone.state is SessionState.OPEN


TestBridgePhoneMachine = BridgePhoneMachine.TestCase
TestBridgePhoneMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None, database=None)


class TestErrors:
    def test_bridge_wants_hello_first(self, encoding: Encoding) -> None:
        bridge, _ = make_pair(encoding)
        exc = assert_fails(
            bridge, raw(encoding, receipt=codec.receipt_to_proto(receipt())), CloseCode.PROTOCOL_VIOLATION
        )
        assert exc.reason == "unexpected Receipt in state AWAIT_HELLO"

    def test_second_hello(self, encoding: Encoding) -> None:
        bridge, _ = open_pair(encoding)
        hello = device_pb2.Hello(window=3)
        assert_fails(bridge, raw(encoding, hello=hello), CloseCode.PROTOCOL_VIOLATION)

    def test_hello_before_welcome_is_sent(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        assert_fails(bridge, raw(encoding, hello=device_pb2.Hello(window=3)), CloseCode.PROTOCOL_VIOLATION)

    def test_receipt_before_welcome_is_sent(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        transfer(phone, bridge)
        frame = raw(encoding, receipt=codec.receipt_to_proto(receipt()))
        assert_fails(bridge, frame, CloseCode.PROTOCOL_VIOLATION)

    @pytest.mark.parametrize("kind", ["welcome", "deliver", "ack", "drop"])
    def test_phone_hears_nothing_before_hello(self, encoding: Encoding, kind: str) -> None:
        _, phone = make_pair(encoding)
        assert_fails(phone, _valid_bridge_frame(encoding, kind), CloseCode.PROTOCOL_VIOLATION)

    @pytest.mark.parametrize("kind", ["deliver", "ack", "drop"])
    def test_phone_wants_welcome_first(self, encoding: Encoding, kind: str) -> None:
        _, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        exc = assert_fails(phone, _valid_bridge_frame(encoding, kind), CloseCode.PROTOCOL_VIOLATION)
        assert exc.reason == f"unexpected {kind.capitalize()} in state AWAIT_WELCOME"

    def test_second_welcome(self, encoding: Encoding) -> None:
        _, phone = open_pair(encoding)
        assert_fails(phone, _valid_bridge_frame(encoding, "welcome"), CloseCode.PROTOCOL_VIOLATION)

    def test_welcome_may_not_widen_the_window(self, encoding: Encoding) -> None:
        _, phone = make_pair(encoding, window=3)
        phone.send_hello(app_version="1", sims=[])
        welcome = device_pb2.Welcome(device_id="dev-1", window=4)
        assert_fails(phone, raw(encoding, welcome=welcome), CloseCode.PROTOCOL_VIOLATION)

    @pytest.mark.parametrize(
        "hello",
        [
            device_pb2.Hello(window=0),
            device_pb2.Hello(window=1001),
            device_pb2.Hello(window=3, sims=[device_pb2.Sim(slot=0)]),
            device_pb2.Hello(window=3, held_message_ids=["m1", ""]),
        ],
        ids=["window-0", "window-1001", "sim-slot-0", "empty-held-id"],
    )
    def test_bad_hello(self, encoding: Encoding, hello: device_pb2.Hello) -> None:
        bridge, _ = make_pair(encoding)
        exc = assert_fails(bridge, raw(encoding, hello=hello), CloseCode.BAD_FRAME)
        assert exc.reason.startswith("invalid Hello: ")

    def test_a_receipt_without_event_id_is_a_bad_frame(self, encoding: Encoding) -> None:
        # Nothing names it, so it cannot be refused alone: the frame is bad.
        bridge, _ = open_pair(encoding)
        message = device_pb2.Receipt(event_id=0, message_id="m1", state=device_pb2.ACCEPTED)
        exc = assert_fails(bridge, raw(encoding, receipt=message), CloseCode.BAD_FRAME)
        assert exc.reason.startswith("invalid Receipt: ")

    @pytest.mark.parametrize(
        ("message", "field"),
        [
            (device_pb2.Receipt(event_id=7, message_id="", state=device_pb2.ACCEPTED), "Receipt.message_id"),
            (device_pb2.Receipt(event_id=7, message_id="m1"), "Receipt.state"),
            (device_pb2.Receipt(event_id=7, message_id="m1", state=device_pb2.SENT, recipient_indices=[1, 1]),
             "Receipt.recipient_indices"),
        ],
        ids=["empty-message-id", "unspecified-state", "repeated-index"],
    )  # fmt: skip
    def test_an_invalid_named_receipt_is_refused_and_the_session_stays_open(
        self, encoding: Encoding, message: device_pb2.Receipt, field: str
    ) -> None:
        bridge, _ = open_pair(encoding)
        for _ in range(2):  # refused the same way every time (a phone may re-send it)
            bridge.receive_frame(raw(encoding, receipt=message))
            [event] = bridge.events_received()
            assert isinstance(event, InvalidEventReceived)
            assert (event.event_id, event.kind) == (7, "Receipt") and field in event.detail
            assert bridge.state is SessionState.OPEN

    def test_unknown_receipt_state(self) -> None:
        # Only the binary encoding can carry an unknown enum number.
        bridge, _ = open_pair(Encoding.PROTO)
        message = device_pb2.Receipt(event_id=1, message_id="m1", state=9)  # type: ignore[arg-type]
        bridge.receive_frame(raw(Encoding.PROTO, receipt=message))
        [event] = bridge.events_received()
        assert event == InvalidEventReceived(1, "Receipt", "Receipt.state must be ACCEPTED, SENT, DELIVERED or FAILED")

    def test_a_refused_receipt_frees_the_window_slot_of_its_message(self) -> None:
        # The phone drops a refused event; were its Deliver kept in flight, `window` bad
        # receipts (here FAILED with an unknown failure_class) would close the window for good.
        bridge, phone = open_pair(Encoding.PROTO, window=2)
        deliver(bridge, phone, "m1", "m2")
        assert bridge.window_available == 0
        for event_id, message_id in ((1, "m1"), (2, "m2")):
            message = device_pb2.Receipt(
                event_id=event_id, message_id=message_id, state=device_pb2.FAILED, failure_class=99  # type: ignore[arg-type]
            )
            bridge.receive_frame(raw(Encoding.PROTO, receipt=message))
            [event] = bridge.events_received()
            assert isinstance(event, InvalidEventReceived) and event.event_id == event_id
        assert bridge.in_flight == set() and bridge.window_available == 2

    def test_unknown_receipt_state_name(self) -> None:
        bridge, _ = open_pair(Encoding.JSON)
        data = json.dumps({"receipt": {"eventId": "1", "messageId": "m1", "state": "LOST_IN_SPACE"}})
        bridge.receive_frame(data)  # unknown name ignored -> unspecified -> refused
        [event] = bridge.events_received()
        assert isinstance(event, InvalidEventReceived) and event.event_id == 1

    @pytest.mark.parametrize(
        "message",
        [
            device_pb2.Deliver(message_id="m1", phone_numbers=[NUMBER]),
            device_pb2.Deliver(message_id="m1", text=BODY),
            device_pb2.Deliver(message_id="", phone_numbers=[NUMBER], text=BODY),
            device_pb2.Deliver(message_id="m1", phone_numbers=[NUMBER, ""], text=BODY),
            device_pb2.Deliver(message_id="m1", phone_numbers=[NUMBER], data=device_pb2.Data(port=70000)),
        ],
        ids=["no-content", "no-numbers", "empty-id", "empty-number", "port-too-big"],
    )
    def test_bad_deliver(self, encoding: Encoding, message: device_pb2.Deliver) -> None:
        _, phone = open_pair(encoding)
        exc = assert_fails(phone, raw(encoding, deliver=message), CloseCode.BAD_FRAME)
        assert exc.reason.startswith("invalid Deliver: ")

    def test_deliver_with_a_timestamp_out_of_range(self) -> None:
        _, phone = open_pair(Encoding.PROTO)
        message = codec.delivery_to_proto(delivery())
        message.valid_until.seconds = 2**62
        assert_fails(phone, raw(Encoding.PROTO, deliver=message), CloseCode.BAD_FRAME)

    @pytest.mark.parametrize(
        "members",
        [
            {"welcome": device_pb2.Welcome(device_id="dev-1", window=0)},
            {"welcome": device_pb2.Welcome(device_id="", window=3)},
            {"welcome": device_pb2.Welcome(device_id="d", window=3, credentials=device_pb2.Credentials(device_id="d"))},
        ],
        ids=["window-0", "empty-device-id", "credentials-without-token"],
    )
    def test_bad_welcome(self, encoding: Encoding, members: dict[str, Any]) -> None:
        _, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        assert_fails(phone, raw(encoding, **members), CloseCode.BAD_FRAME)

    @pytest.mark.parametrize(
        "members",
        [
            {"ack": device_pb2.Ack()},
            {"ack": device_pb2.Ack(event_ids=[1, 0])},
            {"drop": device_pb2.Drop(reason="x")},
        ],
        ids=["empty-ack", "ack-event-0", "drop-without-id"],
    )
    def test_bad_ack_or_drop(self, encoding: Encoding, members: dict[str, Any]) -> None:
        _, phone = open_pair(encoding)
        assert_fails(phone, raw(encoding, **members), CloseCode.BAD_FRAME)

    def test_undecodable_frames(self, encoding: Encoding) -> None:
        garbage: bytes | str = b"\xff\xff" if encoding is Encoding.PROTO else "{not json"
        bridge, _ = make_pair(encoding)
        assert_fails(bridge, garbage, CloseCode.BAD_FRAME)

    def test_wrong_frame_type_for_the_subprotocol(self, encoding: Encoding) -> None:
        bridge, phone = make_pair(encoding)
        phone.send_hello(app_version="1", sims=[])
        [frame] = phone.frames_to_send()
        other = frame.decode() if isinstance(frame, bytes) else frame.encode()
        exc = assert_fails(bridge, other, CloseCode.BAD_FRAME)
        assert "subprotocol" in exc.reason

    def test_empty_frame(self, encoding: Encoding) -> None:
        bridge, _ = make_pair(encoding)
        assert_fails(bridge, b"" if encoding is Encoding.PROTO else "{}", CloseCode.BAD_FRAME)

    def test_a_bridge_frame_sent_to_the_bridge(self, encoding: Encoding) -> None:
        bridge, _ = make_pair(encoding)
        with pytest.raises(RemoteProtocolError) as info:
            bridge.receive_frame(_valid_bridge_frame(encoding, "deliver"))
        assert info.value.code in (CloseCode.BAD_FRAME, CloseCode.PROTOCOL_VIOLATION)
        assert bridge.state is SessionState.CLOSED

    def test_reasons_never_leak_numbers_or_bodies(self, encoding: Encoding) -> None:
        _, phone = open_pair(encoding, window=1)
        phone.receive_frame(raw_deliver(encoding, "m1"))
        phone.events_received()
        exc = assert_fails(phone, raw_deliver(encoding, "m2"), CloseCode.WINDOW_EXCEEDED)
        assert exc.__cause__ is None
        _, phone = open_pair(encoding)
        bad = device_pb2.Deliver(message_id="", phone_numbers=[NUMBER], text=BODY)
        assert_fails(phone, raw(encoding, deliver=bad), CloseCode.BAD_FRAME)

    @pytest.mark.parametrize("side", list(Side))
    @FAST
    @given(data=st.binary(max_size=48) | st.text(max_size=48))
    def test_fuzz_only_remote_protocol_errors(self, side: Side, data: bytes | str) -> None:
        for encoding in Encoding:
            if side is Side.BRIDGE:
                session = DeviceSession(side, encoding)
            else:
                _, session = open_pair(encoding)
            try:
                session.receive_frame(data)
            except RemoteProtocolError as exc:
                assert len(exc.reason.encode()) <= MAX_REASON_BYTES
                assert session.state is SessionState.CLOSED


def _valid_bridge_frame(encoding: Encoding, kind: str) -> bytes | str:
    message: Any = {
        "welcome": device_pb2.Welcome(device_id="dev-1", window=3),
        "deliver": codec.delivery_to_proto(delivery()),
        "ack": device_pb2.Ack(event_ids=[1]),
        "drop": device_pb2.Drop(message_id="m1"),
    }[kind]
    return raw(encoding, **{kind: message})


class TestClose:
    def test_receive_closed(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1", "m2")
        bridge.receive_closed()
        bridge.receive_closed()  # idempotent
        assert bridge.state is SessionState.CLOSED
        assert bridge.in_flight == {"m1", "m2"}  # the bridge requeues these
        assert bridge.window_available == 0

    def test_commands_after_close_are_our_bug(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        bridge.receive_closed()
        phone.receive_closed()
        with pytest.raises(InvalidState):
            bridge.send_deliver(delivery())
        with pytest.raises(InvalidState):
            bridge.send_ack([1])
        with pytest.raises(InvalidState):
            bridge.send_drop("m1", "")
        with pytest.raises(InvalidState):
            phone.send_receipt(receipt())

    def test_frames_after_close(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        phone.send_receipt(receipt())
        [frame] = phone.frames_to_send()
        bridge.receive_closed()
        exc = assert_fails(bridge, frame, CloseCode.PROTOCOL_VIOLATION)
        assert exc.reason == "frame after the session closed"

    def test_a_protocol_error_closes_the_session(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        deliver(bridge, phone, "m1")
        assert_fails(phone, _valid_bridge_frame(encoding, "welcome"), CloseCode.PROTOCOL_VIOLATION)
        assert phone.in_flight == {"m1"}
        with pytest.raises(InvalidState):
            phone.send_receipt(receipt("m1"))
        assert_fails(phone, raw_deliver(encoding, "m2"), CloseCode.PROTOCOL_VIOLATION)


class TestPackage:
    MODULES: ClassVar[list[str]] = ["__init__", "codec", "errors", "events", "flow", "session"]

    @pytest.mark.parametrize("name", MODULES)
    def test_all_names_exist(self, name: str) -> None:
        module = importlib.import_module(
            "device_bridge.protocol" if name == "__init__" else f"device_bridge.protocol.{name}"
        )
        assert module.__all__, name
        for export in module.__all__:
            assert hasattr(module, export), export

    def test_package_reexports_every_public_name(self) -> None:
        for name in ("codec", "errors", "events", "session"):
            module = importlib.import_module(f"device_bridge.protocol.{name}")
            for export in module.__all__:
                if export.endswith("_proto") or export in {"AWAIT_HELLO", "AWAIT_WELCOME", "OPEN", "CLOSED"}:
                    continue  # conversion helpers and state aliases stay in their module
                assert export in device_bridge.protocol.__all__, export

    @pytest.mark.parametrize("name", MODULES)
    def test_no_io_and_no_clock(self, name: str) -> None:
        path = Path(device_bridge.protocol.__file__).with_name(f"{name}.py")
        tree = ast.parse(path.read_text())
        forbidden = {"trio", "websockets", "asyncio", "sqlmodel", "sqlalchemy", "socket", "time", "gateway"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] not in forbidden
            elif isinstance(node, ast.Attribute):
                assert node.attr not in {"now", "utcnow", "today", "monotonic"}, f"{name} reads a clock"
