"""Tests for device_bridge.protocol.codec: both encodings, round trips, fuzzing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from smsgw.device.v1 import device_pb2

from device_bridge.protocol import codec
from device_bridge.protocol.codec import SUBPROTOCOLS, CloseCode, Encoding, decode, encode
from device_bridge.protocol.errors import MAX_REASON_BYTES, InvalidEvent, RemoteProtocolError
from device_bridge.protocol.events import (
    AckReceived,
    Credentials,
    Delivery,
    DropReceived,
    HelloReceived,
    Receipt,
    ReceiptState,
    SimInfo,
    WelcomeReceived,
)

FAST = settings(max_examples=200, deadline=None, database=None)

ENCODINGS = pytest.mark.parametrize("encoding", list(Encoding), ids=["proto", "json"])
FRAME_TYPES = pytest.mark.parametrize(
    "frame_type", [device_pb2.DeviceFrame, device_pb2.BridgeFrame], ids=["device", "bridge"]
)

# --- strategies -----------------------------------------------------------------

encodings = st.sampled_from(Encoding)
frame_types = st.sampled_from([device_pb2.DeviceFrame, device_pb2.BridgeFrame])

texts = st.text(st.characters(codec="utf-8"), max_size=30)
ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)
uint32 = st.integers(0, 2**32 - 1)
utc_times = st.datetimes(timezones=st.just(UTC))
# Offsets other than UTC come back normalized to UTC (and compare equal).
offset_times = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(-23 * 60, 23 * 60),
)
times = st.one_of(utc_times, offset_times)

_delivery_common: dict[str, Any] = {
    "message_id": ids,
    "phone_numbers": st.lists(ids, min_size=1, max_size=4).map(tuple),
    "sim_number": uint32,
    "is_encrypted": st.booleans(),
    "with_delivery_report": st.booleans(),
    "priority": st.integers(-(2**31), 2**31 - 1),
    "valid_until": st.none() | times,
}
deliveries = st.one_of(
    st.builds(Delivery, text=texts, **_delivery_common),
    st.builds(Delivery, data=st.binary(max_size=40), port=st.integers(0, 65535), **_delivery_common),
)
receipts = st.builds(
    Receipt,
    event_id=st.integers(1, 2**64 - 1),
    message_id=ids,
    state=st.sampled_from(ReceiptState),
    recipient_index=uint32,
    error=texts,
    time=st.none() | times,
)
hellos = st.builds(
    HelloReceived,
    app_version=texts,
    sims=st.lists(
        st.builds(SimInfo, slot=st.integers(1, 2**32 - 1), operator_name=texts, country_iso=texts), max_size=3
    ).map(tuple),
    window=st.integers(1, 1000),
    held_message_ids=st.lists(ids, max_size=5).map(tuple),
)
welcomes = st.builds(
    WelcomeReceived,
    device_id=ids,
    window=st.integers(1, 1000),
    ping_interval=uint32,
    server_time=st.none() | times,
    credentials=st.none() | st.builds(Credentials, device_id=ids, token=ids),
)
acks = st.builds(AckReceived, st.lists(st.integers(1, 2**64 - 1), min_size=1, max_size=5).map(tuple))
drops = st.builds(DropReceived, message_id=ids, reason=texts)


def _round_trip(
    value: Any,
    encoding: Encoding,
    wrap: Callable[[Any], device_pb2.DeviceFrame | device_pb2.BridgeFrame],
    unwrap: Callable[[Any], Any],
) -> Any:
    frame = wrap(value)
    data = encode(frame, encoding)
    assert isinstance(data, bytes if encoding is Encoding.PROTO else str)
    decoded: Any = decode(data, type(frame), encoding)  # type: ignore[type-var]
    assert decoded == frame
    return unwrap(decoded)


class TestRoundTrip:
    @FAST
    @given(encoding=encodings, value=hellos)
    def test_hello(self, encoding: Encoding, value: HelloReceived) -> None:
        result = _round_trip(
            value,
            encoding,
            lambda v: device_pb2.DeviceFrame(hello=codec.hello_to_proto(v)),
            lambda f: codec.hello_from_proto(f.hello),
        )
        assert result == value

    @FAST
    @given(encoding=encodings, value=receipts)
    def test_receipt(self, encoding: Encoding, value: Receipt) -> None:
        result = _round_trip(
            value,
            encoding,
            lambda v: device_pb2.DeviceFrame(receipt=codec.receipt_to_proto(v)),
            lambda f: codec.receipt_from_proto(f.receipt),
        )
        assert result == value
        assert result.time is None or result.time.tzinfo is UTC

    @FAST
    @given(encoding=encodings, value=welcomes)
    def test_welcome(self, encoding: Encoding, value: WelcomeReceived) -> None:
        result = _round_trip(
            value,
            encoding,
            lambda v: device_pb2.BridgeFrame(welcome=codec.welcome_to_proto(v)),
            lambda f: codec.welcome_from_proto(f.welcome),
        )
        assert result == value
        if value.credentials is not None:
            assert result.credentials.token == value.credentials.token

    @FAST
    @given(encoding=encodings, value=deliveries)
    def test_deliver(self, encoding: Encoding, value: Delivery) -> None:
        result = _round_trip(
            value,
            encoding,
            lambda v: device_pb2.BridgeFrame(deliver=codec.delivery_to_proto(v)),
            lambda f: codec.delivery_from_proto(f.deliver),
        )
        assert result == value
        assert (result.text is None) == (value.text is None)

    @FAST
    @given(encoding=encodings, value=acks)
    def test_ack(self, encoding: Encoding, value: AckReceived) -> None:
        result = _round_trip(
            value,
            encoding,
            lambda v: device_pb2.BridgeFrame(ack=codec.ack_to_proto(v)),
            lambda f: codec.ack_from_proto(f.ack),
        )
        assert result == value

    @FAST
    @given(encoding=encodings, value=drops)
    def test_drop(self, encoding: Encoding, value: DropReceived) -> None:
        result = _round_trip(
            value,
            encoding,
            lambda v: device_pb2.BridgeFrame(drop=codec.drop_to_proto(v)),
            lambda f: codec.drop_from_proto(f.drop),
        )
        assert result == value

    @ENCODINGS
    def test_empty_data_message_keeps_its_content(self, encoding: Encoding) -> None:
        delivery = Delivery("m1", ("+15550000001",), data=b"")
        frame = device_pb2.BridgeFrame(deliver=codec.delivery_to_proto(delivery))
        decoded = decode(encode(frame, encoding), device_pb2.BridgeFrame, encoding)
        assert codec.delivery_from_proto(decoded.deliver) == delivery

    @FAST
    @given(moment=times)
    def test_timestamps(self, moment: datetime) -> None:
        result = codec.timestamp_from_proto(codec.timestamp_to_proto(moment))
        assert result == moment
        assert result.tzinfo is UTC

    def test_naive_timestamp_is_refused(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            codec.timestamp_to_proto(datetime(2026, 1, 1))


class TestJsonMapping:
    def test_field_names_are_lower_camel_case_and_compact(self) -> None:
        delivery = Delivery(
            "m1", ("+15550000001",), text="hi", sim_number=2, valid_until=datetime(2026, 1, 1, tzinfo=UTC)
        )
        data = encode(device_pb2.BridgeFrame(deliver=codec.delivery_to_proto(delivery)), Encoding.JSON)
        assert data == (
            '{"deliver":{"messageId":"m1","phoneNumbers":["+15550000001"],"text":"hi",'
            '"simNumber":2,"withDeliveryReport":true,"validUntil":"2026-01-01T00:00:00Z",'
            '"recipientIndices":[0],"attempt":1}}'
        )

    def test_enums_are_names_and_uint64_are_strings(self) -> None:
        receipt = Receipt(2**64 - 1, "m1", ReceiptState.DELIVERED, recipient_index=1)
        data = encode(device_pb2.DeviceFrame(receipt=codec.receipt_to_proto(receipt)), Encoding.JSON)
        assert json.loads(data) == {
            "receipt": {"eventId": str(2**64 - 1), "messageId": "m1", "state": "DELIVERED", "recipientIndex": 1}
        }

    def test_unknown_fields_are_ignored(self) -> None:
        data = json.dumps({"hello": {"window": 5, "batteryLevel": 80}, "futureThing": {"x": 1}})
        frame = decode(data, device_pb2.DeviceFrame, Encoding.JSON)
        assert frame.hello.window == 5

    def test_numbers_as_strings_and_snake_case_are_accepted(self) -> None:
        # The protobuf JSON mapping accepts both; a hand-written phone may use either.
        data = json.dumps({"receipt": {"event_id": 7, "message_id": "m1", "state": 2}})
        frame = decode(data, device_pb2.DeviceFrame, Encoding.JSON)
        assert codec.receipt_from_proto(frame.receipt) == Receipt(7, "m1", ReceiptState.SENT)


class TestEnums:
    def test_close_codes_mirror_the_proto(self) -> None:
        proto = {name: value for name, value in device_pb2.CloseCode.items() if value}
        assert {code.name: code.value for code in CloseCode} == proto

    def test_close_codes_are_in_the_application_range(self) -> None:
        assert all(4000 <= code <= 4999 for code in CloseCode)

    def test_receipt_states_mirror_the_proto(self) -> None:
        proto = {name: value for name, value in device_pb2.ReceiptState.items() if value}
        assert {state.name: state.value for state in ReceiptState} == proto

    def test_subprotocols(self) -> None:
        assert SUBPROTOCOLS == ("smsgw.device.v1+proto", "smsgw.device.v1+json")
        assert SUBPROTOCOLS == (Encoding.PROTO, Encoding.JSON)


# --- refusing bad input ---------------------------------------------------------


def _expect_bad_frame(data: Any, frame_type: type, encoding: Encoding) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, frame_type, encoding)
    assert info.value.code is CloseCode.BAD_FRAME
    assert len(info.value.reason.encode()) <= MAX_REASON_BYTES
    return info.value


_VALIDATORS: dict[str, Callable[[Any], object]] = {
    "hello": codec.hello_from_proto,
    "receipt": codec.receipt_from_proto,
    "welcome": codec.welcome_from_proto,
    "deliver": codec.delivery_from_proto,
    "ack": codec.ack_from_proto,
    "drop": codec.drop_from_proto,
    "inbound": codec.inbound_from_proto,
    "settings": codec.settings_from_proto,
    "reject": codec.reject_from_proto,
}


def _decode_and_validate(data: Any, frame_type: type, encoding: Encoding) -> None:
    """Decode and validate like a session does; only BAD_FRAME may come out, or InvalidEvent
    for a Receipt / Inbound that names its event id."""
    kind = None
    try:
        frame = decode(data, frame_type, encoding)
        kind = frame.WhichOneof("frame")
        _VALIDATORS[kind](getattr(frame, kind))
    except RemoteProtocolError as exc:
        assert exc.code is CloseCode.BAD_FRAME
        assert len(exc.reason.encode()) <= MAX_REASON_BYTES
    except InvalidEvent as exc:
        assert kind in ("receipt", "inbound") and exc.event_id > 0
        assert len(exc.detail.encode()) <= MAX_REASON_BYTES


class TestBadInput:
    @FRAME_TYPES
    def test_text_on_the_binary_subprotocol(self, frame_type: type) -> None:
        exc = _expect_bad_frame('{"hello": {}}', frame_type, Encoding.PROTO)
        assert exc.reason == "text frame on a binary subprotocol"

    @FRAME_TYPES
    def test_bytes_on_the_text_subprotocol(self, frame_type: type) -> None:
        exc = _expect_bad_frame(b'{"hello": {}}', frame_type, Encoding.JSON)
        assert exc.reason == "binary frame on a text subprotocol"

    @ENCODINGS
    @FRAME_TYPES
    def test_not_bytes_nor_text(self, encoding: Encoding, frame_type: type) -> None:
        _expect_bad_frame(42, frame_type, encoding)

    @FRAME_TYPES
    def test_undecodable_protobuf(self, frame_type: type) -> None:
        _expect_bad_frame(b"\xff\xff\xff", frame_type, Encoding.PROTO)

    @pytest.mark.parametrize(
        "data", ["", "{", "null", "[]", '"hello"', "1e999", '{"hello": {}, "hello": {}}', "[" * 10_000]
    )
    @FRAME_TYPES
    def test_invalid_json(self, data: str, frame_type: type) -> None:
        _expect_bad_frame(data, frame_type, Encoding.JSON)

    @pytest.mark.parametrize(
        "obj",
        [
            {"hello": {"window": "many"}},
            {"hello": {"sims": {"slot": 1}}},
            {"receipt": {"eventId": -1}},
            {"receipt": {"time": "yesterday"}},
            {"hello": 5},
            {"hello": {}, "receipt": {}},  # two members of the oneof
        ],
    )
    def test_json_not_matching_the_schema(self, obj: object) -> None:
        _expect_bad_frame(json.dumps(obj), device_pb2.DeviceFrame, Encoding.JSON)

    def test_schema_errors_do_not_quote_values(self) -> None:
        data = json.dumps({"deliver": {"messageId": "m1", "phoneNumbers": [15550001234], "text": "SECRET"}})
        exc = _expect_bad_frame(data, device_pb2.BridgeFrame, Encoding.JSON)
        assert "1555" not in str(exc) and exc.__cause__ is None and exc.__suppress_context__

    @ENCODINGS
    @FRAME_TYPES
    def test_frame_without_a_message(self, encoding: Encoding, frame_type: type) -> None:
        exc = _expect_bad_frame(encode(frame_type(), encoding), frame_type, encoding)
        assert exc.reason == "frame carries no known message"

    def test_unknown_frame_kind_from_a_newer_peer(self) -> None:
        # Field 9 is not a DeviceFrame member (yet): it is skipped, leaving no message.
        _expect_bad_frame(b"\x4a\x00", device_pb2.DeviceFrame, Encoding.PROTO)
        _expect_bad_frame('{"telemetry": {"battery": 1}}', device_pb2.DeviceFrame, Encoding.JSON)

    @pytest.mark.parametrize(
        ("seconds", "nanos"), [(-62_135_596_801, 0), (253_402_300_800, 0), (0, -1), (0, 1_000_000_000)]
    )
    def test_timestamp_out_of_range(self, seconds: int, nanos: int) -> None:
        with pytest.raises(ValueError, match="out of range"):
            codec.timestamp_from_proto(Timestamp(seconds=seconds, nanos=nanos))
        message = device_pb2.Receipt(event_id=1, message_id="m1", state=device_pb2.ACCEPTED)
        message.time.seconds, message.time.nanos = seconds, nanos
        with pytest.raises(InvalidEvent) as info:  # a named event: refused alone
            codec.receipt_from_proto(message)
        assert info.value.event_id == 1


# --- fuzzing: nothing but BAD_FRAME escapes ---------------------------------------

_KEYS = [
    "hello", "receipt", "welcome", "deliver", "ack", "drop", "inbound", "appVersion", "sims", "slot", "window",
    "heldMessageIds", "eventId", "messageId", "state", "recipientIndex", "error", "time", "phoneNumbers",
    "text", "data", "port", "simNumber", "isEncrypted", "withDeliveryReport", "priority", "validUntil",
    "deviceId", "serverTime", "pingIntervalSeconds", "credentials", "token", "eventIds", "reason",
    "seconds", "nanos", "@type", "value", "id", "sender", "receivedAt", "reject", "detail", "truncated",
]  # fmt: skip
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["ACCEPTED", "SENT", "2026-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "AAEC", "-1", "1e3", "NaN"]),
)
json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
json_frames = st.dictionaries(st.sampled_from(_KEYS[:7]), json_values, min_size=1, max_size=2)

_big = st.integers(0, 2**64 - 1)
_timestamps = st.builds(Timestamp, seconds=st.integers(-(2**63), 2**63 - 1), nanos=st.integers(-(2**31), 2**31 - 1))
_raw_strings = st.text(st.characters(codec="utf-8"), max_size=8)
raw_device_frames = st.one_of(
    st.builds(
        lambda window, slots, held: device_pb2.DeviceFrame(
            hello=device_pb2.Hello(window=window, sims=[device_pb2.Sim(slot=s) for s in slots], held_message_ids=held)
        ),
        st.integers(0, 2**32 - 1),
        st.lists(st.integers(0, 3), max_size=3),
        st.lists(_raw_strings, max_size=3),
    ),
    st.builds(
        lambda event_id, message_id, state, time: device_pb2.DeviceFrame(
            receipt=device_pb2.Receipt(event_id=event_id, message_id=message_id, state=state, time=time)
        ),
        _big,
        _raw_strings,
        st.integers(-5, 10),
        _timestamps,
    ),
    st.builds(
        lambda event_id, phone_id, sender, text, port, time: device_pb2.DeviceFrame(
            inbound=device_pb2.Inbound(
                event_id=event_id,
                id=phone_id,
                sender=sender,
                received_at=time,
                **({} if text is None else {"text": text} if port is None else {"data": device_pb2.Data(port=port)}),
            )
        ),
        _big,
        _raw_strings,
        _raw_strings,
        st.none() | _raw_strings,
        st.none() | st.integers(0, 2**32 - 1),
        _timestamps,
    ),
)
raw_bridge_frames = st.one_of(
    st.builds(
        lambda device_id, window, time: device_pb2.BridgeFrame(
            welcome=device_pb2.Welcome(device_id=device_id, window=window, server_time=time)
        ),
        _raw_strings,
        st.integers(0, 2**32 - 1),
        _timestamps,
    ),
    st.builds(
        lambda message_id, numbers, text, port, time: device_pb2.BridgeFrame(
            deliver=device_pb2.Deliver(
                message_id=message_id,
                phone_numbers=numbers,
                valid_until=time,
                **({} if text is None else {"text": text} if port is None else {"data": device_pb2.Data(port=port)}),
            )
        ),
        _raw_strings,
        st.lists(_raw_strings, max_size=2),
        st.none() | _raw_strings,
        st.none() | st.integers(0, 2**32 - 1),
        _timestamps,
    ),
    st.builds(lambda ids: device_pb2.BridgeFrame(ack=device_pb2.Ack(event_ids=ids)), st.lists(_big, max_size=3)),
    st.builds(lambda mid: device_pb2.BridgeFrame(drop=device_pb2.Drop(message_id=mid)), _raw_strings),
    st.builds(
        lambda event_id, reason, detail: device_pb2.BridgeFrame(
            reject=device_pb2.Reject(event_id=event_id, reason=reason, detail=detail)
        ),
        _big,
        st.integers(-5, 10),
        _raw_strings,
    ),
)


class TestFuzz:
    @FAST
    @given(encoding=encodings, frame_type=frame_types, data=st.binary(max_size=64))
    def test_arbitrary_bytes(self, encoding: Encoding, frame_type: type, data: bytes) -> None:
        _decode_and_validate(data, frame_type, encoding)

    @FAST
    @given(encoding=encodings, frame_type=frame_types, data=st.text(max_size=64))
    def test_arbitrary_text(self, encoding: Encoding, frame_type: type, data: str) -> None:
        _decode_and_validate(data, frame_type, encoding)

    @FAST
    @given(frame_type=frame_types, obj=json_values | json_frames)
    def test_arbitrary_json(self, frame_type: type, obj: object) -> None:
        _decode_and_validate(json.dumps(obj), frame_type, Encoding.JSON)

    @FAST
    @given(encoding=encodings, frame=raw_device_frames | raw_bridge_frames)
    def test_arbitrary_field_values(self, encoding: Encoding, frame: Any) -> None:
        # Valid wire messages with any values: validation refuses with BAD_FRAME only.
        try:
            data = encode(frame, encoding)
        except Exception:  # e.g. JSON cannot express an out-of-range Timestamp
            data = encode(frame, Encoding.PROTO)
            encoding = Encoding.PROTO
        _decode_and_validate(data, type(frame), encoding)

    @FAST
    @given(encoding=encodings, value=deliveries, cut=st.integers(0, 200), flip=st.integers(0, 255))
    def test_mangled_frames(self, encoding: Encoding, value: Delivery, cut: int, flip: int) -> None:
        data = encode(device_pb2.BridgeFrame(deliver=codec.delivery_to_proto(value)), encoding)
        if isinstance(data, bytes):
            mangled: bytes | str = data[:cut] + bytes([flip]) + data[cut + 1 :]
        else:
            mangled = data[:cut] + chr(flip) + data[cut + 1 :]
        _decode_and_validate(mangled, device_pb2.BridgeFrame, encoding)


class TestErrors:
    def test_reason_is_cut_to_120_utf8_bytes(self) -> None:
        exc = RemoteProtocolError(CloseCode.BAD_FRAME, "é" * 100)
        assert len(exc.reason.encode()) <= MAX_REASON_BYTES == 120
        assert exc.reason == "é" * 60
        assert str(exc).endswith("(BAD_FRAME 4000)")

    def test_reason_with_a_lone_surrogate(self) -> None:
        exc = RemoteProtocolError(CloseCode.BAD_FRAME, "bad \ud800")
        assert exc.reason.encode()  # encodable
