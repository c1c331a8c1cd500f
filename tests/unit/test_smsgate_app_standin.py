"""The pure parts of the SMSGate app stand-in (tests/helpers/smsgate_app.py): Gson timestamps,
the SSE reader (chunks split anywhere, comments, nameless events), the webhook signature against
an HMAC computed outside Python, and the app's content selection order."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers.smsgate_app import (
    SseParser,
    gson_time,
    message_content,
    nanoid,
    parse_gson_date,
    real_app_reconnect_delay,
    sign_webhook,
)

MOMENT = datetime(2024, 5, 13, 9, 49, 17, 357_999, tzinfo=timezone.utc)


def test_gson_time_has_milliseconds_and_an_offset() -> None:
    assert gson_time(MOMENT, offset=timedelta(hours=7)) == "2024-05-13T16:49:17.357+07:00"
    assert gson_time(MOMENT, offset=timedelta(0)) == "2024-05-13T09:49:17.357Z"  # XXX writes Z for zero
    assert gson_time(MOMENT, offset=-timedelta(hours=3, minutes=30)) == "2024-05-13T06:19:17.357-03:30"
    whole = MOMENT.replace(microsecond=0)
    assert gson_time(whole, offset=timedelta(hours=7)) == "2024-05-13T16:49:17.000+07:00"
    # The default is a non-UTC offset, and it round-trips to the same instant.
    now = gson_time()
    assert now.endswith("+07:00")
    assert abs((parse_gson_date(now) - datetime.now(timezone.utc)).total_seconds()) < 5


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-13T16:49:17.357+07:00", MOMENT.replace(microsecond=357_000)),
    ("2024-05-13T09:49:17.357999999Z", MOMENT.replace(microsecond=357_000)),  # Go's 9 digits: ms kept
    ("2024-05-13T09:49:17.35Z", MOMENT.replace(microsecond=350_000)),  # Go drops trailing zeros
    ("2024-05-13T09:49:17Z", MOMENT.replace(microsecond=0)),
    ("2024-05-13T12:49:17+0300", MOMENT.replace(microsecond=0)),
    ("2024-05-13T09:49Z", MOMENT.replace(second=0, microsecond=0)),
])
def test_parse_gson_date_accepts_what_gson_accepts(text: str, expected: datetime) -> None:
    assert parse_gson_date(text) == expected


@pytest.mark.parametrize("text", ["2024-05-13T09:49:17", "2024-05-13T09:49:17.357", "13/05/2024", "", "2024-05-13 09:49:17Z"])
def test_parse_gson_date_refuses_a_time_without_offset_and_other_shapes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_gson_date(text)


STREAM = (
    ":keepalive\n"
    "\n"
    "event: MessageEnqueued\n"
    "data: null\n"
    "\n"
    ": another comment\r\n"
    "event: SettingsUpdated\r\n"
    "data:null\r\n"
    "\r\n"
    "data: {\"messageId\":\"é-id\"}\r"  # a nameless event, CR line ends, non-ASCII data
    "\r"
    "event: MessageCancelled\n"
    "data: {\"messageId\":\n"
    "data: \"x\"}\n"
    "\n"
    "event: WebhooksUpdated\n"  # no data line: OkHttp does not dispatch it
    "\n"
    "id: 7\n"
    "retry: 5000\n"
    "event: MessagesExportRequested\n"
    "data: {\"since\":\"2024-05-13T09:49:17.357Z\",\"triggerWebhooks\":\"true\"}\n"
    "\n"
    "event: MessageEnqueued\n"
    "data: null\n"  # no blank line yet: not dispatched
).encode("utf-8")

EXPECTED = [
    ("MessageEnqueued", "MessageEnqueued", "null"),
    ("SettingsUpdated", "SettingsUpdated", "null"),
    (None, "MessageEnqueued", "{\"messageId\":\"é-id\"}"),
    ("MessageCancelled", "MessageCancelled", "{\"messageId\":\n\"x\"}"),
    ("MessagesExportRequested", "MessagesExportRequested",
     "{\"since\":\"2024-05-13T09:49:17.357Z\",\"triggerWebhooks\":\"true\"}"),
]


def _parse(chunks: list[bytes]) -> tuple[list[tuple[str | None, str, str]], list[str]]:
    parser = SseParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk, at=0.0))
    return [(e.name, e.type, e.data) for e in events], parser.comments


def test_sse_in_one_chunk() -> None:
    events, comments = _parse([STREAM])
    assert events == EXPECTED
    assert comments == ["keepalive", " another comment"]


def test_sse_split_at_every_byte() -> None:
    # Splits CRLF pairs, the UTF-8 "é", field names and the "data:" prefix.
    events, comments = _parse([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED and len(comments) == 2


def test_sse_split_at_random_places() -> None:
    rng = random.Random(1715593757)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert _parse(chunks)[0] == EXPECTED, cuts


def test_sse_crlf_split_between_chunks_is_one_line_end() -> None:
    events, _ = _parse([b"event: SettingsUpdated\r", b"\ndata: null\r", b"\n\r", b"\n"])
    assert events == [("SettingsUpdated", "SettingsUpdated", "null")]


def test_sse_records_arrival_time_of_the_completing_chunk() -> None:
    parser = SseParser()
    assert parser.feed(b"event: MessageEnqueued\ndata: null\n", at=1.0) == []
    [event] = parser.feed(b"\n", at=2.5)
    assert event.at == 2.5 and event.type == "MessageEnqueued"


def test_signature_matches_an_hmac_computed_outside_python() -> None:
    body = '{"id":"Ab3_x","event":"sms:received","payload":{"message":"héllo"}}'.encode()
    # printf '%s' "$body""1715593757" | openssl dgst -sha256 -hmac 'k3Y-é8ab'   (UTF-8 key and body)
    expected = "bb83464cd8dd762664f6577baac973531df0e1f8f84fdec58db0846eab5085ad"
    assert sign_webhook("k3Y-é8ab", body, "1715593757") == expected
    assert sign_webhook("k3Y-é8ab", body + b" ", "1715593757") != expected
    assert sign_webhook("k3Y-é8ab", body, "1715593758") != expected


def test_content_selection_order_is_data_then_text_then_legacy() -> None:
    data = {"data": "AQI=", "port": 1234}
    everything = {"dataMessage": data, "textMessage": {"text": "t"}, "message": "legacy"}
    assert message_content(everything) == ("data", data)
    assert message_content({"textMessage": {"text": "t"}, "message": "legacy"}) == ("text", "t")
    assert message_content({"message": "legacy"}) == ("legacy", "legacy")
    assert message_content({"dataMessage": None, "textMessage": None, "message": "legacy"}) == ("legacy", "legacy")
    assert message_content({"phoneNumbers": ["+15550001234"]}) is None


def test_nanoid_and_reconnect_schedule() -> None:
    ids = {nanoid() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 21 for i in ids)
    assert all(set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") for i in ids)
    assert len(nanoid(8)) == 8
    assert [real_app_reconnect_delay(n) for n in (1, 5, 6, 10, 11, 50)] == [5, 5, 30, 30, 60, 60]
