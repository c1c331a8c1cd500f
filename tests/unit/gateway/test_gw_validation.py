"""gateway.api.validation: every rule of parse_send_request names its field path
(google.rpc.BadRequest), all bad fields are listed at once, and check_e164 never crashes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from smsgw.v1 import messages_pb2
from smsgw_client.envelope import seal

from gateway.api.validation import MAX_BATCH, check_e164, in_item, parse_send_many, parse_send_request
from gateway.config import LimitsSettings
from gateway.errors import InvalidArgument

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LIMITS = LimitsSettings()
US, UK, DE = "+14155550123", "+447911123456", "+4915112345678"
SALT, IV = b"s" * 16, b"i" * 12  # fixed: the envelopes are only checked for form here


def ts(t: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(t)
    return out


def text_req(**kw: object) -> messages_pb2.SendMessageRequest:
    req = messages_pb2.SendMessageRequest(
        phone_numbers=[US], text_message=messages_pb2.TextMessage(text="hello"), idempotency_key="k-1"
    )
    for name, value in kw.items():
        if name == "phone_numbers":
            del req.phone_numbers[:]
            req.phone_numbers.extend(value)  # type: ignore[arg-type]
        elif name == "text":
            req.text_message.text = value  # type: ignore[assignment]
        elif name == "data":
            req.data_message.data = value  # type: ignore[assignment]
        elif name == "port":
            req.data_message.port = value  # type: ignore[assignment]
        elif name == "valid_until":
            req.valid_until.CopyFrom(ts(value))  # type: ignore[arg-type]
        else:
            setattr(req, name, value)
    return req


def data_req(data: bytes = b"\x01\x02", port: int = 5000, **kw: object) -> messages_pb2.SendMessageRequest:
    req = text_req(**kw)
    req.data_message.data = data
    req.data_message.port = port
    return req


def violations(req: messages_pb2.SendMessageRequest, limits: LimitsSettings = LIMITS) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        parse_send_request(req, limits, NOW)
    return info.value.violations


def fields(req: messages_pb2.SendMessageRequest, limits: LimitsSettings = LIMITS) -> list[str]:
    return [f for f, _ in violations(req, limits)]


def no_content() -> messages_pb2.SendMessageRequest:
    return messages_pb2.SendMessageRequest(phone_numbers=[US], idempotency_key="k")


# (case id, request builder, limits, expected field list)
RULES: list[tuple[str, Callable[[], messages_pb2.SendMessageRequest], LimitsSettings, list[str]]] = [
    ("no recipients", lambda: text_req(phone_numbers=[]), LIMITS, ["phone_numbers"]),
    (
        "too many recipients",
        lambda: text_req(phone_numbers=[US, UK, DE]),
        LimitsSettings(max_recipients=2),
        ["phone_numbers"],
    ),
    ("not E.164 (no plus)", lambda: text_req(phone_numbers=["14155550123"]), LIMITS, ["phone_numbers[0]"]),
    ("not E.164 (too short)", lambda: text_req(phone_numbers=[US, "+1234567"]), LIMITS, ["phone_numbers[1]"]),
    ("not E.164 (leading 0)", lambda: text_req(phone_numbers=["+04155550123"]), LIMITS, ["phone_numbers[0]"]),
    ("not E.164 (spaces)", lambda: text_req(phone_numbers=["+1 415 555 0123"]), LIMITS, ["phone_numbers[0]"]),
    ("unknown country", lambda: text_req(phone_numbers=[UK, "+99912345678"]), LIMITS, ["phone_numbers[1]"]),
    ("impossible length", lambda: text_req(phone_numbers=["+1415555012345"]), LIMITS, ["phone_numbers[0]"]),
    ("duplicate", lambda: text_req(phone_numbers=[US, UK, US]), LIMITS, ["phone_numbers[2]"]),
    ("no content", no_content, LIMITS, ["content"]),
    ("empty text", lambda: text_req(text=""), LIMITS, ["text_message.text"]),
    ("too many parts", lambda: text_req(text="a" * (153 * 10 + 1)), LIMITS, ["text_message.text"]),
    ("too many UCS-2 parts", lambda: text_req(text="ж" * 135), LimitsSettings(max_parts=2), ["text_message.text"]),
    (
        "encrypted text too long",
        lambda: text_req(text=seal("pw", b"A" * 4801, salt=SALT, iv=IV), is_encrypted=True),
        LIMITS,
        ["text_message.text"],
    ),
    ("encrypted text that is no envelope", lambda: text_req(text="hello", is_encrypted=True), LIMITS, ["text_message.text"]),
    (
        "encrypted text too short to be any ciphertext",
        lambda: text_req(text=base64.b64encode(b"smsgw2" + bytes(6)).decode(), is_encrypted=True),
        LIMITS,
        ["text_message.text"],
    ),
    (
        "encrypted text too short",
        lambda: text_req(text=base64.b64encode(b"smsgw1" + bytes(20)).decode(), is_encrypted=True),
        LIMITS,
        ["text_message.text"],
    ),
    ("encrypted data that is no envelope", lambda: data_req(data=b"\x00\x01", port=9, is_encrypted=True), LIMITS, ["data_message.data"]),
    ("empty data", lambda: data_req(data=b""), LIMITS, ["data_message.data"]),
    ("data too long", lambda: data_req(data=b"x" * 1401), LIMITS, ["data_message.data"]),
    ("port 0", lambda: data_req(port=0), LIMITS, ["data_message.port"]),
    ("port too big", lambda: data_req(port=65536), LIMITS, ["data_message.port"]),
    ("sim 9", lambda: text_req(sim_number=9), LIMITS, ["sim_number"]),
    ("priority 128", lambda: text_req(priority=128), LIMITS, ["priority"]),
    ("priority -129", lambda: text_req(priority=-129), LIMITS, ["priority"]),
    ("ttl 0", lambda: text_req(ttl=0), LIMITS, ["ttl"]),
    ("ttl too long", lambda: text_req(ttl=LIMITS.max_ttl_seconds + 1), LIMITS, ["ttl"]),
    ("valid_until now", lambda: text_req(valid_until=NOW), LIMITS, ["valid_until"]),
    ("valid_until past", lambda: text_req(valid_until=NOW - timedelta(hours=1)), LIMITS, ["valid_until"]),
    (
        "valid_until too far",
        lambda: text_req(valid_until=NOW + timedelta(seconds=LIMITS.max_ttl_seconds + 1)),
        LIMITS,
        ["valid_until"],
    ),
    ("key too long", lambda: text_req(idempotency_key="k" * 129), LIMITS, ["idempotency_key"]),
    ("key with space", lambda: text_req(idempotency_key="a b"), LIMITS, ["idempotency_key"]),
    ("key non-ASCII", lambda: text_req(idempotency_key="ключ"), LIMITS, ["idempotency_key"]),
    ("key control char", lambda: text_req(idempotency_key="a\tb"), LIMITS, ["idempotency_key"]),
]


@pytest.mark.parametrize(("build", "limits", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_names_its_field(
    build: Callable[[], messages_pb2.SendMessageRequest], limits: LimitsSettings, expected: list[str]
) -> None:
    got = violations(build(), limits)
    assert [f for f, _ in got] == expected
    assert all(reason for _, reason in got)


def test_duplicate_reason_points_at_the_first() -> None:
    assert violations(text_req(phone_numbers=[US, UK, US])) == [("phone_numbers[2]", "duplicate of phone_numbers[0]")]


def test_several_bad_fields_are_all_listed() -> None:
    req = text_req(
        phone_numbers=["nope", US, US],
        text="",
        sim_number=9,
        priority=1000,
        ttl=0,
        idempotency_key="has space",
    )
    assert fields(req) == [
        "phone_numbers[0]",
        "phone_numbers[2]",
        "text_message.text",
        "sim_number",
        "priority",
        "ttl",
        "idempotency_key",
    ]
    req = data_req(data=b"", port=0, phone_numbers=[], valid_until=NOW - timedelta(seconds=1))
    assert fields(req) == ["phone_numbers", "data_message.data", "data_message.port", "valid_until"]


def test_message_of_invalid_argument_names_every_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_send_request(text_req(sim_number=9, priority=500), LIMITS, NOW)
    assert "sim_number" in str(info.value) and "priority" in str(info.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: text_req(),
        lambda: text_req(phone_numbers=[US, UK, DE], sim_number=8, priority=-128),
        lambda: text_req(priority=127, ttl=LIMITS.max_ttl_seconds, idempotency_key="k" * 128),
        lambda: text_req(text="a" * (153 * 10)),
        lambda: text_req(text=seal("pw", b"A" * 4800, salt=SALT, iv=IV), is_encrypted=True),
        lambda: text_req(text=seal("pw", "ж".encode() * 500, salt=SALT, iv=IV), is_encrypted=True),
        lambda: data_req(data=seal("pw", b"x" * 1400, salt=SALT, iv=IV).encode(), port=9, is_encrypted=True),
        lambda: data_req(data=b"x" * 1400, port=65535),
        lambda: data_req(port=1),
        lambda: text_req(valid_until=NOW + timedelta(seconds=LIMITS.max_ttl_seconds)),
        lambda: text_req(idempotency_key=""),
    ],
)
def test_valid_requests_pass(build: Callable[[], messages_pb2.SendMessageRequest]) -> None:
    new = parse_send_request(build(), LIMITS, NOW)
    assert new.phone_numbers


def test_fields_are_carried_over() -> None:
    new = parse_send_request(
        text_req(phone_numbers=[US, UK], text="hi", device_id="dev-1", sim_number=2, priority=5), LIMITS, NOW
    )
    assert new.phone_numbers == (US, UK)
    assert (new.text, new.data, new.port) == ("hi", None, 0)
    assert (new.device_id, new.sim_number, new.priority) == ("dev-1", 2, 5)
    assert (new.parts, new.encoding) == (1, "GSM_7")
    assert new.valid_until is None
    assert new.idempotency_key == "k-1"
    data = parse_send_request(data_req(data=b"\x00\xff", port=1234), LIMITS, NOW)
    assert (data.text, data.data, data.port, data.encoding) == (None, b"\x00\xff", 1234, "DATA")
    envelope = seal("pw", b"hi", salt=SALT, iv=IV)
    enc = parse_send_request(text_req(text=envelope, is_encrypted=True), LIMITS, NOW)
    assert enc.text == envelope, "stored and forwarded as is"
    assert enc.is_encrypted
    assert (enc.parts, enc.encoding) == (0, "UCS_2")


def test_ttl_sets_valid_until_from_now() -> None:
    assert parse_send_request(text_req(ttl=90), LIMITS, NOW).valid_until == NOW + timedelta(seconds=90)
    until = NOW + timedelta(hours=2)
    assert parse_send_request(text_req(valid_until=until), LIMITS, NOW).valid_until == until


def test_delivery_report_defaults_true() -> None:
    assert parse_send_request(text_req(), LIMITS, NOW).with_delivery_report is True
    assert parse_send_request(text_req(with_delivery_report=False), LIMITS, NOW).with_delivery_report is False
    assert parse_send_request(text_req(with_delivery_report=True), LIMITS, NOW).with_delivery_report is True


def test_missing_key_gets_a_unique_server_key() -> None:
    a = parse_send_request(text_req(idempotency_key=""), LIMITS, NOW)
    b = parse_send_request(text_req(idempotency_key=""), LIMITS, NOW)
    assert a.idempotency_key.startswith("srv-") and b.idempotency_key.startswith("srv-")
    assert a.idempotency_key != b.idempotency_key


# ---- content hash ------------------------------------------------------------------


def content_hash(req: messages_pb2.SendMessageRequest, now: datetime = NOW) -> str:
    return parse_send_request(req, LIMITS, now).content_hash


def test_content_hash_ignores_the_key_and_the_clock() -> None:
    assert content_hash(text_req(idempotency_key="a")) == content_hash(text_req(idempotency_key="b"))
    # ttl is hashed as given, so a retry a minute later still matches.
    assert content_hash(text_req(ttl=60)) == content_hash(text_req(ttl=60), NOW + timedelta(minutes=1))
    assert content_hash(data_req(idempotency_key="x")) == content_hash(data_req(idempotency_key="y"))


CONTENT_CHANGES: list[tuple[str, Callable[[], messages_pb2.SendMessageRequest]]] = [
    ("phone_numbers", lambda: text_req(phone_numbers=[UK])),
    ("more phone_numbers", lambda: text_req(phone_numbers=[US, UK])),
    ("recipient order", lambda: text_req(phone_numbers=[UK, US])),
    ("text", lambda: text_req(text="hello!")),
    ("data instead of text", lambda: data_req(data=b"hello", port=1)),
    ("device_id", lambda: text_req(device_id="dev-2")),
    ("sim_number", lambda: text_req(sim_number=1)),
    ("priority", lambda: text_req(priority=1)),
    ("ttl", lambda: text_req(ttl=61)),
    ("valid_until", lambda: text_req(valid_until=NOW + timedelta(hours=1))),
    ("with_delivery_report", lambda: text_req(with_delivery_report=False)),
    ("is_encrypted", lambda: text_req(text=seal("pw", b"hello", salt=SALT, iv=IV), is_encrypted=True)),
]


@pytest.mark.parametrize("build", [c[1] for c in CONTENT_CHANGES], ids=[c[0] for c in CONTENT_CHANGES])
def test_content_hash_differs_when_content_differs(build: Callable[[], messages_pb2.SendMessageRequest]) -> None:
    base = {content_hash(text_req(idempotency_key="k1")), content_hash(text_req(ttl=60, idempotency_key="k1"))}
    changed = build()
    changed.idempotency_key = "k2"
    assert content_hash(changed) not in base


def test_content_hash_differs_for_data_fields() -> None:
    base = content_hash(data_req(data=b"ab", port=10))
    assert content_hash(data_req(data=b"ac", port=10)) != base
    assert content_hash(data_req(data=b"ab", port=11)) != base


# ---- check_e164 --------------------------------------------------------------------

ACCEPTED_SHAPE = re.compile(r"^\+[1-9]\d{7,14}$")


@pytest.mark.parametrize("number", [US, UK, DE, "+79161234567", "+861012345678"])
def test_e164_accepts_real_numbers(number: str) -> None:
    assert check_e164(number) is None


@pytest.mark.parametrize(
    "number",
    ["", "+", "14155550123", "+0123456789", "+1234567", "+1234567890123456", " +14155550123",
     "+14155550123\n", "+1415555012३", "+１4155550123", "+99912345678", "+1415555012345", "tel:+14155550123"],
)
def test_e164_rejects(number: str) -> None:
    why = check_e164(number)
    assert isinstance(why, str) and why


@given(st.one_of(st.text(max_size=30), st.from_regex(r"\+[0-9]{1,17}", fullmatch=True),
                 st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)))
@settings(max_examples=250, database=None)
def test_e164_never_crashes_and_accepts_only_the_shape(number: str) -> None:
    why = check_e164(number)
    assert why is None or (isinstance(why, str) and why)
    if why is None:
        assert ACCEPTED_SHAPE.match(number)
        assert number.isascii() and "\n" not in number


# ---- no input crashes the parser (RELIABILITY 30) ------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253402300800, 0),  # year 10000: past what a Timestamp (and datetime) can hold
        (2**62, 0),
        (-62135596801, 0),  # before year 1
        (-(2**62), 0),
        (int(NOW.timestamp()) + 60, 1_000_000_000),  # nanos out of range
        (int(NOW.timestamp()) + 60, -1),
    ],
)
def test_out_of_range_valid_until_is_an_invalid_argument(seconds: int, nanos: int) -> None:
    req = text_req()
    req.valid_until.seconds = seconds
    req.valid_until.nanos = nanos
    assert fields(req) == ["valid_until"]


numbers = st.one_of(
    st.sampled_from([US, UK, DE, "+99912345678", "+1415555012345", ""]),
    st.from_regex(r"\+[0-9]{1,16}", fullmatch=True),
    st.text(max_size=20),
)


@st.composite
def send_requests(draw: st.DrawFn) -> messages_pb2.SendMessageRequest:
    req = messages_pb2.SendMessageRequest(
        phone_numbers=draw(st.lists(numbers, max_size=4)),
        device_id=draw(st.text(max_size=5)),
        sim_number=draw(st.integers(0, 2**32 - 1)),
        priority=draw(st.integers(-(2**31), 2**31 - 1)),
        is_encrypted=draw(st.booleans()),
        idempotency_key=draw(st.text(max_size=140)),
    )
    content = draw(st.sampled_from(["none", "text", "data"]))
    if content == "text":
        req.text_message.text = draw(st.one_of(st.text(max_size=50), st.just("a" * 1600), st.just("ж" * 700)))
    elif content == "data":
        req.data_message.data = draw(st.binary(max_size=20))
        req.data_message.port = draw(st.integers(0, 2**32 - 1))
    expiry = draw(st.sampled_from(["none", "ttl", "valid_until"]))
    if expiry == "ttl":
        req.ttl = draw(st.integers(0, 2**64 - 1))
    elif expiry == "valid_until":
        req.valid_until.seconds = draw(
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(int(NOW.timestamp()) - 10, int(NOW.timestamp()) + 10**8))
        )
        req.valid_until.nanos = draw(st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)))
    report = draw(st.sampled_from([None, True, False]))
    if report is not None:
        req.with_delivery_report = report
    return req


@given(send_requests())
@settings(max_examples=300, database=None)
def test_parse_send_request_raises_only_invalid_argument(req: messages_pb2.SendMessageRequest) -> None:
    try:
        new = parse_send_request(req, LIMITS, NOW)
    except InvalidArgument as exc:
        assert exc.violations and all(f and r for f, r in exc.violations)
        return
    assert 1 <= len(new.phone_numbers) <= LIMITS.max_recipients
    assert all(ACCEPTED_SHAPE.match(n) for n in new.phone_numbers)
    assert len(set(new.phone_numbers)) == len(new.phone_numbers)
    if new.valid_until is not None:
        assert NOW < new.valid_until <= NOW + timedelta(seconds=LIMITS.max_ttl_seconds)


def test_unset_delivery_report_hashes_like_an_explicit_true() -> None:
    """The default spelled out is the same request: a retry must not get ALREADY_EXISTS."""
    from datetime import UTC, datetime

    from smsgw.v1 import messages_pb2

    from gateway.api.validation import parse_send_request
    from gateway.config import LimitsSettings

    def request(**extra: object) -> messages_pb2.SendMessageRequest:
        return messages_pb2.SendMessageRequest(
            phone_numbers=["+15551234567"], text_message=messages_pb2.TextMessage(text="x"), **extra
        )

    now = datetime.now(UTC)
    unset = parse_send_request(request(), LimitsSettings(), now).content_hash
    assert parse_send_request(request(with_delivery_report=True), LimitsSettings(), now).content_hash == unset
    assert parse_send_request(request(with_delivery_report=False), LimitsSettings(), now).content_hash != unset


# ---- SendMessages: each item as SendMessage, its fields named messages[i].<field> --------


def batch(*items: messages_pb2.SendMessageRequest) -> messages_pb2.SendMessagesRequest:
    return messages_pb2.SendMessagesRequest(messages=list(items))


def item_fields(item: object) -> list[str]:
    assert isinstance(item, InvalidArgument), item
    return [f for f, _ in item.violations]


def test_send_many_names_bad_fields_by_item_and_keeps_good_items() -> None:
    parsed = parse_send_many(
        batch(text_req(idempotency_key="a"), text_req(idempotency_key="b", phone_numbers=["555"], priority=999),
              text_req(idempotency_key="c")),
        LIMITS, NOW,
    )
    assert [type(p).__name__ for p in parsed] == ["NewMessage", "InvalidArgument", "NewMessage"]
    assert item_fields(parsed[1]) == ["messages[1].phone_numbers[0]", "messages[1].priority"]
    good = parsed[2]
    assert not isinstance(good, InvalidArgument)
    assert good == parse_send_request(text_req(idempotency_key="c"), LIMITS, NOW)


def test_send_many_requires_a_key_per_item_and_refuses_a_key_twice() -> None:
    parsed = parse_send_many(
        batch(text_req(idempotency_key="k"), text_req(idempotency_key=""), text_req(idempotency_key="k"),
              text_req(idempotency_key="k", text="other")),
        LIMITS, NOW,
    )
    assert not isinstance(parsed[0], InvalidArgument)
    assert item_fields(parsed[1]) == ["messages[1].idempotency_key"]
    for later in (2, 3):
        item = parsed[later]
        assert item_fields(item) == [f"messages[{later}].idempotency_key"]
        assert isinstance(item, InvalidArgument) and "messages[0]" in item.violations[0][1]


@pytest.mark.parametrize("n", [0, 1001])
def test_send_many_refuses_an_empty_or_oversized_call(n: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_send_many(batch(*(text_req(idempotency_key=f"k{i}") for i in range(n))), LIMITS, NOW)
    assert item_fields(info.value) == ["messages"]


def test_send_many_takes_exactly_max_batch() -> None:
    parsed = parse_send_many(batch(*(text_req(idempotency_key=f"k{i}") for i in range(MAX_BATCH))), LIMITS, NOW)
    assert len(parsed) == MAX_BATCH and not any(isinstance(p, InvalidArgument) for p in parsed)


def test_in_item_prefixes_every_field() -> None:
    exc = in_item(InvalidArgument("device_id", "unknown device", ("sim_number", "bad")), 7)
    assert exc.violations == [("messages[7].device_id", "unknown device"), ("messages[7].sim_number", "bad")]


def test_other_gateways_ciphertext_passes_through() -> None:
    """SMSGate's format (text and numbers sealed) and httpSMS's (unmarked base64) are opaque
    ciphertext the server keeps as given; a malformed SMSGate one is refused, naming the field."""
    from smsgw_client.foreign import httpsms_encrypt, smsgate_encrypt

    sealed_text, sealed_number = smsgate_encrypt("pass", "hello", iterations=1000), smsgate_encrypt("pass", "+15550001234", iterations=1000)
    new = parse_send_request(text_req(text=sealed_text, phone_numbers=[sealed_number], is_encrypted=True), LIMITS, NOW)
    assert new.text == sealed_text and new.phone_numbers == (sealed_number,)
    assert parse_send_request(text_req(text=httpsms_encrypt("pass", "hi"), is_encrypted=True), LIMITS, NOW).is_encrypted
    assert fields(text_req(text=sealed_text[:-8] + "!!!!!!!!", is_encrypted=True)) == ["text_message.text"]
    assert fields(text_req(text=sealed_text, phone_numbers=["$aes-256-cbc/pbkdf2-sha1$i=x$y$z"], is_encrypted=True)) == ["phone_numbers[0]"]
    assert fields(text_req(text=sealed_text, phone_numbers=[sealed_number])) == ["phone_numbers[0]"]  # not encrypted: E.164


def test_a_text_may_not_pose_as_a_one_time_passwords_sealed_sms() -> None:
    """`otp1:` marks the OTP service's sealed SMS, which the bridge opens: a client's copy of
    one (from GetMessage) must not reach another number through SendMessage."""
    assert fields(text_req(text="otp1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")) == ["text_message.text"]
    assert parse_send_request(text_req(text="otp 1: not the prefix"), LIMITS, NOW).text == "otp 1: not the prefix"
