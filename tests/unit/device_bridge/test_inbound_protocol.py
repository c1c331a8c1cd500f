"""The Inbound frame: the InboundSms value object, both encodings, and the session rules
(PHONE sends it only while OPEN; the BRIDGE turns it into InboundReceived, an over-long body
cut and flagged truncated; an invalid one that names its event id into InvalidEventReceived,
the session staying open; one without an event id is BAD_FRAME)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smsgw.device.v1 import device_pb2

from device_bridge.protocol import (
    MAX_REASON_BYTES,
    CloseCode,
    DeviceSession,
    Encoding,
    InboundReceived,
    InboundSms,
    InvalidEvent,
    InvalidEventReceived,
    InvalidState,
    RemoteProtocolError,
    SessionState,
    Side,
    SimInfo,
    codec,
    decode,
    encode,
)
from device_bridge.protocol.events import MAX_INBOUND_DATA_BYTES, MAX_INBOUND_TEXT_CHARS, MAX_SENDER_CHARS

NOW = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
SENDER = "+15550009876"
BODY = "SECRET INBOUND 0815"
FAST = settings(max_examples=200, deadline=None, database=None)

ENCODINGS = pytest.mark.parametrize("encoding", list(Encoding), ids=["proto", "json"])

_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
inbounds = st.builds(
    InboundSms,
    event_id=st.integers(1, 2**64 - 1),
    id=_ids,
    sender=st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_SENDER_CHARS),
    text=st.text(st.characters(codec="utf-8"), max_size=40),
    sim_number=st.integers(0, 2**32 - 1),
    received_at=st.none() | st.datetimes(timezones=st.just(UTC)),
    is_encrypted=st.booleans(),
    truncated=st.booleans(),
) | st.builds(
    InboundSms,
    event_id=st.integers(1, 2**64 - 1),
    id=_ids,
    sender=st.just(SENDER),
    text=st.none(),
    data=st.binary(max_size=40),
    port=st.integers(0, 65535),
)


def _with_text(**kwargs: Any) -> dict[str, Any]:
    return kwargs if "data" in kwargs or "text" in kwargs else {**kwargs, "text": BODY}


def inbound(event_id: int = 1, phone_id: str = "in-1", **kwargs: Any) -> InboundSms:
    return InboundSms(event_id, phone_id, kwargs.pop("sender", SENDER), **_with_text(**kwargs))


def open_pair(encoding: Encoding) -> tuple[DeviceSession, DeviceSession]:
    bridge = DeviceSession(Side.BRIDGE, encoding)
    phone = DeviceSession(Side.PHONE, encoding, window=3)
    phone.send_hello(app_version="1", sims=[SimInfo(1)])
    for frame in phone.frames_to_send():
        bridge.receive_frame(frame)
    bridge.events_received()
    bridge.send_welcome("dev-1", ping_interval=20, server_time=NOW)
    for frame in bridge.frames_to_send():
        phone.receive_frame(frame)
    phone.events_received()
    return bridge, phone


def device_frame(encoding: Encoding, message: device_pb2.Inbound) -> bytes | str:
    return encode(device_pb2.DeviceFrame(inbound=message), encoding)


class TestValueObject:
    def test_text_and_data(self) -> None:
        text = inbound(text=BODY, sim_number=2, received_at=NOW, is_encrypted=True)
        assert text.text == BODY and text.data is None and text.port == 0
        data = inbound(data=bytearray(b"\x01\x02"), port=2948)
        assert data.data == b"\x01\x02" and isinstance(data.data, bytes) and data.text is None

    def test_received_at_is_normalised_to_utc(self) -> None:
        local = NOW.astimezone(timezone(timedelta(hours=5)))
        assert inbound(received_at=local).received_at == NOW
        assert inbound(received_at=local).received_at.tzinfo is UTC  # type: ignore[union-attr]

    def test_repr_hides_sender_and_body(self) -> None:
        for value in (inbound(), inbound(data=BODY.encode(), port=1)):
            shown = repr(value)
            assert SENDER not in shown and BODY not in shown and "SECRET" not in shown
            assert "in-1" in shown  # the phone's id is not sensitive and helps debugging

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"event_id": 0}, "Inbound.event_id"),
            ({"event_id": 2**64}, "Inbound.event_id"),
            ({"phone_id": ""}, "Inbound.id"),
            ({"phone_id": "x" * 65}, "Inbound.id"),
            ({"sender": ""}, "Inbound.sender"),
            ({"sender": "1" * (MAX_SENDER_CHARS + 1)}, "Inbound.sender"),
            ({"text": "x" * (MAX_INBOUND_TEXT_CHARS + 1)}, "Inbound.text"),
            ({"data": b"x" * (MAX_INBOUND_DATA_BYTES + 1)}, "Inbound.data"),
            ({"data": b"", "port": 65536}, "Inbound.port"),
            ({"data": b"", "port": -1}, "Inbound.port"),
            ({"text": "hi", "port": 5}, "Inbound.port"),
            ({"text": "hi", "data": b"x"}, "exactly one"),
            ({"text": None}, "exactly one"),
            ({"sim_number": -1}, "Inbound.sim_number"),
            ({"received_at": datetime(2026, 1, 1)}, "Inbound.received_at"),
        ],
    )
    def test_bounds(self, kwargs: dict[str, Any], field: str) -> None:
        with pytest.raises((ValueError, TypeError), match=field) as info:
            inbound(**kwargs)
        assert BODY not in str(info.value) and SENDER not in str(info.value)

    def test_bounds_are_inclusive(self) -> None:
        inbound(phone_id="x" * 64, sender="1" * MAX_SENDER_CHARS, text="x" * MAX_INBOUND_TEXT_CHARS)
        inbound(data=b"x" * MAX_INBOUND_DATA_BYTES, port=65535)
        inbound(event_id=2**64 - 1, data=b"")

    def test_types(self) -> None:
        with pytest.raises(TypeError):
            inbound(data="not bytes")
        with pytest.raises(TypeError):
            inbound(text=b"not text")
        with pytest.raises(TypeError):
            inbound(is_encrypted=1)
        with pytest.raises(TypeError):
            InboundReceived("not an InboundSms")  # type: ignore[arg-type]


class TestCodec:
    @FAST
    @given(encoding=st.sampled_from(Encoding), value=inbounds)
    def test_round_trip(self, encoding: Encoding, value: InboundSms) -> None:
        frame = device_pb2.DeviceFrame(inbound=codec.inbound_to_proto(value))
        decoded = decode(encode(frame, encoding), device_pb2.DeviceFrame, encoding)
        assert decoded == frame
        assert codec.inbound_from_proto(decoded.inbound) == value

    @ENCODINGS
    def test_empty_data_sms_keeps_its_content(self, encoding: Encoding) -> None:
        value = inbound(data=b"")
        decoded = decode(device_frame(encoding, codec.inbound_to_proto(value)), device_pb2.DeviceFrame, encoding)
        assert codec.inbound_from_proto(decoded.inbound) == value

    def test_json_mapping(self) -> None:
        value = inbound(event_id=7, text="hi", sim_number=2, received_at=NOW)
        obj = json.loads(device_frame(Encoding.JSON, codec.inbound_to_proto(value)))  # type: ignore[arg-type]
        assert obj == {
            "inbound": {
                "eventId": "7",
                "id": "in-1",
                "simNumber": 2,
                "sender": SENDER,
                "text": "hi",
                "receivedAt": "2026-03-04T05:06:07.890Z",
            }
        }

    def test_an_inbound_without_event_id_is_a_bad_frame(self) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            codec.inbound_from_proto(device_pb2.Inbound(event_id=0, id="a", sender=SENDER, text=BODY))
        exc = info.value
        assert exc.code is CloseCode.BAD_FRAME and exc.reason.startswith("invalid Inbound: ")
        assert BODY not in exc.reason and SENDER not in exc.reason

    @pytest.mark.parametrize(
        ("message", "field"),
        [
            (device_pb2.Inbound(event_id=9, id="", sender=SENDER, text=BODY), "Inbound.id"),
            (device_pb2.Inbound(event_id=9, id="a", sender="", text=BODY), "Inbound.sender"),
            (device_pb2.Inbound(event_id=9, id="a", sender="1" * (MAX_SENDER_CHARS + 1), text=BODY), "Inbound.sender"),
            (device_pb2.Inbound(event_id=9, id="a", sender=SENDER), "exactly one"),
            (device_pb2.Inbound(event_id=9, id="a", sender=SENDER, data=device_pb2.Data(port=70000)), "Inbound.port"),
            (device_pb2.Inbound(event_id=9, id="a" * 65, sender=SENDER, text=BODY), "Inbound.id"),
        ],
        ids=["empty-id", "empty-sender", "long-sender", "no-content", "port", "long-id"],
    )
    def test_an_invalid_named_inbound_is_an_invalid_event(self, message: device_pb2.Inbound, field: str) -> None:
        with pytest.raises(InvalidEvent) as info:
            codec.inbound_from_proto(message)
        exc = info.value
        assert (exc.event_id, exc.kind) == (9, "Inbound") and field in exc.detail
        assert len(exc.detail.encode()) <= MAX_REASON_BYTES
        assert BODY not in exc.detail and SENDER not in exc.detail

    def test_received_at_out_of_range(self) -> None:
        message = device_pb2.Inbound(event_id=1, id="a", sender=SENDER, text=BODY)
        message.received_at.seconds = 253_402_300_800
        with pytest.raises(InvalidEvent):
            codec.inbound_from_proto(message)

    @ENCODINGS
    def test_an_over_long_body_is_cut_to_the_bound_and_flagged(self, encoding: Encoding) -> None:
        # A 110-part SMS (> 16,384 characters) used to close every session with 4000.
        text = "".join(chr(0x41 + i % 26) for i in range(110 * 153))
        for content, cut in [
            ({"text": text}, {"text": text[:MAX_INBOUND_TEXT_CHARS]}),
            ({"data": device_pb2.Data(data=b"\x01" * 9000, port=7)}, {"data": b"\x01" * MAX_INBOUND_DATA_BYTES, "port": 7}),
        ]:
            message = device_pb2.Inbound(event_id=3, id="long", sender=SENDER, **content)  # type: ignore[arg-type]
            frame = decode(encode(device_pb2.DeviceFrame(inbound=message), encoding), device_pb2.DeviceFrame, encoding)
            assert codec.inbound_from_proto(frame.inbound) == InboundSms(3, "long", SENDER, truncated=True, **cut)  # type: ignore[arg-type]

    def test_a_body_at_the_bound_is_whole_and_the_phones_own_flag_is_kept(self) -> None:
        message = device_pb2.Inbound(event_id=3, id="a", sender=SENDER, text="x" * MAX_INBOUND_TEXT_CHARS)
        assert codec.inbound_from_proto(message).truncated is False
        message.truncated = True  # the phone cut it itself
        assert codec.inbound_from_proto(message).truncated is True
        assert json.loads(device_frame(Encoding.JSON, message))["inbound"]["truncated"] is True  # type: ignore[arg-type]


class TestSession:
    @ENCODINGS
    def test_phone_forwards_and_bridge_receives(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        sent = inbound(event_id=5, received_at=NOW, sim_number=1)
        phone.send_inbound(sent)
        for frame in phone.frames_to_send():
            bridge.receive_frame(frame)
        assert bridge.events_received() == [InboundReceived(sent)]
        assert bridge.state is SessionState.OPEN and phone.window_available == 3  # no window slot

    @ENCODINGS
    def test_only_an_open_phone_sends_it(self, encoding: Encoding) -> None:
        phone = DeviceSession(Side.PHONE, encoding, window=3)
        with pytest.raises(InvalidState):
            phone.send_inbound(inbound())  # before Hello
        phone.send_hello(app_version="1", sims=[])
        with pytest.raises(InvalidState):
            phone.send_inbound(inbound())  # before Welcome
        bridge, phone = open_pair(encoding)
        with pytest.raises(InvalidState):
            bridge.send_inbound(inbound())
        phone.receive_closed()
        with pytest.raises(InvalidState):
            phone.send_inbound(inbound())

    @ENCODINGS
    def test_inbound_before_welcome_is_a_violation(self, encoding: Encoding) -> None:
        bridge = DeviceSession(Side.BRIDGE, encoding)
        with pytest.raises(RemoteProtocolError) as info:
            bridge.receive_frame(device_frame(encoding, codec.inbound_to_proto(inbound())))
        assert info.value.code is CloseCode.PROTOCOL_VIOLATION
        assert info.value.reason == "unexpected Inbound in state AWAIT_HELLO"

    @ENCODINGS
    def test_an_inbound_without_event_id_closes_with_bad_frame(self, encoding: Encoding) -> None:
        bridge, _ = open_pair(encoding)
        bad = device_pb2.Inbound(id="a", sender=SENDER, text=BODY)
        with pytest.raises(RemoteProtocolError) as info:
            bridge.receive_frame(device_frame(encoding, bad))
        assert info.value.code is CloseCode.BAD_FRAME
        assert bridge.state is SessionState.CLOSED and bridge.events_received() == []

    @ENCODINGS
    def test_an_invalid_inbound_is_refused_and_the_session_stays_open(self, encoding: Encoding) -> None:
        bridge, phone = open_pair(encoding)
        bad = device_pb2.Inbound(event_id=4, id="a", sender="", text=BODY)
        bridge.receive_frame(device_frame(encoding, bad))
        assert bridge.events_received() == [InvalidEventReceived(4, "Inbound", "Inbound.sender must not be empty")]
        assert bridge.state is SessionState.OPEN
        good = inbound(event_id=5)
        phone.send_inbound(good)
        for frame in phone.frames_to_send():
            bridge.receive_frame(frame)
        assert bridge.events_received() == [InboundReceived(good)]

    def test_phone_refuses_an_inbound_frame(self) -> None:
        # The phone decodes BridgeFrames, which have no such member (JSON names it).
        _, phone = open_pair(Encoding.JSON)
        with pytest.raises(RemoteProtocolError) as info:
            phone.receive_frame(device_frame(Encoding.JSON, codec.inbound_to_proto(inbound())))
        assert info.value.code is CloseCode.BAD_FRAME and phone.state is SessionState.CLOSED
