"""The scheduler through the real `smsgw serve` process and the real gRPC client: part counts
and encodings, schedule_at / RescheduleMessage / cancel of a scheduled message, device pacing
settings (validation, live push to the phone), retries by failure class, expiry of a message
a phone holds (Drop). Pacing itself is proven on the virtual clock (test_scheduler.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from smsgw.v1 import common_pb2, devices_pb2
from smsgw_client import Client, FailedPrecondition, InvalidArgument, NotFound

from device_bridge.protocol import (
    AckReceived,
    DeliverReceived,
    DropReceived,
    FailureClass,
    ReceiptState,
    SettingsReceived,
)
from tests.helpers.raw_phone import RawPhone, pair_raw
from tests.helpers.server import ServerProcess

QUIET = 0.5  # how long "nothing more arrives" is watched; no assertion is made on time
RETRY_BASE = 0.3  # seconds: the first retry's backoff (+-20 %)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "SMSGW_SCHEDULER__RETRY_BASE": str(RETRY_BASE),
        "SMSGW_SCHEDULER__MAX_ATTEMPTS": "3",
        "SMSGW_JOBS__EXPIRY_INTERVAL": "0.2",
    }
    with ServerProcess(tmp_path_factory.mktemp("scheduler") / "data", env=env) as proc:
        yield proc


@pytest.fixture
def phone(server: ServerProcess) -> Iterator[tuple[RawPhone, str]]:
    raw, creds = pair_raw(server.grpc_target, server.token, server.device_url, window=8)
    try:
        yield raw, creds.device_id
    finally:
        raw.ws.close()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.grpc_target, server.token) as c:
        yield c


def _wait(client: Client, message_id: str, check: object, limit: float = 10.0) -> common_pb2.Message:
    """Poll GetMessage until `check(message)` holds (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        message = client.get_message(message_id)
        if check(message):  # type: ignore[operator]
            return message
        if time.monotonic() > deadline:
            raise AssertionError(f"{message_id} never matched: {message}")
        time.sleep(0.02)


def _deliver(raw: RawPhone, timeout: float = 10.0) -> DeliverReceived:
    return raw.next_deliver(timeout)


def _field_names(error: InvalidArgument) -> set[str]:
    return {field for field, _ in error.field_violations}


def test_send_returns_parts_and_encoding(client: Client, phone: tuple[RawPhone, str]) -> None:
    _, device = phone
    cases = [
        ("plain ascii", "GSM_7", 1),
        ("a" * 160, "GSM_7", 1),
        ("a" * 161, "GSM_7", 2),
        ("€" * 80, "GSM_7", 1),  # extension characters take two septets
        ("€" * 81, "GSM_7", 2),
        ("{^}" + "a" * 154, "GSM_7", 1),
        ("hi 😀", "UCS_2", 1),
        ("ж" * 71, "UCS_2", 2),
    ]
    for text, encoding, parts in cases:
        m = client.send_message(["+15551230000"], text, device_id=device, schedule_at=datetime.now(UTC) + timedelta(days=1))
        assert (m.encoding, m.parts) == (encoding, parts), text[:10]
        assert [r.parts_total for r in m.recipients] == [parts]
        client.cancel_message(m.id)
    data = client.send_message(["+15551230000"], data=b"\x01\x02", port=5000, device_id=device,
                               schedule_at=datetime.now(UTC) + timedelta(days=1))
    assert data.parts == 1
    client.cancel_message(data.id)


def test_scheduled_message_waits_reschedule_and_cancel(client: Client, phone: tuple[RawPhone, str]) -> None:
    raw, device = phone
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    held = client.send_message(["+15551230001"], "at nine", device_id=device, schedule_at=later)
    assert held.state == common_pb2.PENDING
    assert held.schedule_at.ToDatetime(tzinfo=UTC) == later
    assert held.next_attempt_at.ToDatetime(tzinfo=UTC) == later
    assert held.recipients[0].next_attempt_at.ToDatetime(tzinfo=UTC) == later
    with pytest.raises(TimeoutError):
        raw.next_deliver(QUIET)

    # Rescheduled to "now": it goes at once, and can no longer be rescheduled.
    moved = client.reschedule_message(held.id, None)
    assert not moved.HasField("schedule_at")
    assert _deliver(raw).delivery.message_id == held.id
    _wait(client, held.id, lambda m: m.state == common_pb2.DISPATCHED)
    with pytest.raises(FailedPrecondition):
        client.reschedule_message(held.id, later)

    # A scheduled message cancelled before its time is never handed to the phone.
    other = client.send_message(["+15551230002"], "never", device_id=device, schedule_at=later)
    assert client.cancel_message(other.id).state == common_pb2.CANCELLED
    with pytest.raises(FailedPrecondition):
        client.reschedule_message(other.id, None)
    with pytest.raises(TimeoutError):
        raw.next_deliver(QUIET)

    # Bad times name the field.
    with pytest.raises(InvalidArgument) as too_far:
        client.send_message(["+15551230003"], "x", schedule_at=datetime.now(UTC) + timedelta(days=31))
    assert _field_names(too_far.value) == {"schedule_at"}
    with pytest.raises(InvalidArgument) as after_expiry:
        client.send_message(["+15551230003"], "x", schedule_at=later, valid_until=later - timedelta(minutes=1))
    assert _field_names(after_expiry.value) == {"schedule_at"}
    pending = client.send_message(["+15551230004"], "x", device_id=device, schedule_at=later)
    with pytest.raises(InvalidArgument) as resched_far:
        client.reschedule_message(pending.id, datetime.now(UTC) + timedelta(days=40))
    assert _field_names(resched_far.value) == {"schedule_at"}
    assert client.get_message(pending.id).schedule_at.ToDatetime(tzinfo=UTC) == later  # unchanged
    with pytest.raises(NotFound):
        client.reschedule_message("01ARZ3NDEKTSV4RRFFQ69G5FAV", None)
    client.cancel_message(pending.id)


def test_device_settings_validated_and_pushed_live(client: Client, phone: tuple[RawPhone, str]) -> None:
    raw, device = phone
    welcome_settings = raw.welcome.settings
    assert welcome_settings is not None and [s.slot for s in welcome_settings.sims] == [1, 2]

    current = client.get_device_settings(device)
    assert not current.customized
    assert (current.default_pacing.parts_per_minute, current.default_pacing.min_interval_ms) == (0, 0)  # LENIENT_LIMITS

    wanted = devices_pb2.DeviceSettings(device_id=device, phone_parts_per_minute=20, priority_bypass=True)
    wanted.default_pacing.parts_per_minute = 12
    wanted.default_pacing.min_interval_ms = 5000
    sim2 = wanted.sims.add(slot=2, parts_per_minute=6, min_interval_ms=10_000, parts_per_hour=100)
    stored = client.update_device_settings(wanted)
    assert stored.customized and stored.sims[0].parts_per_hour == 100 and stored.phone_parts_per_minute == 20
    assert client.get_device_settings(device) == stored

    pushed = _next_settings(raw)
    by_slot = {s.slot: s for s in pushed.settings.sims}
    assert (by_slot[1].parts_per_minute, by_slot[1].min_interval_ms) == (12, 5000)
    assert (by_slot[2].parts_per_minute, by_slot[2].min_interval_ms, by_slot[2].parts_per_hour) == (6, 10_000, 100)
    assert pushed.settings.phone_parts_per_minute == 20 and pushed.settings.priority_bypass

    bad = devices_pb2.DeviceSettings(device_id=device, phone_parts_per_minute=5000)
    bad.default_pacing.parts_per_minute = 100_000
    bad.sims.add(slot=9)
    bad.sims.add(slot=2)
    bad.sims.add(slot=2)
    with pytest.raises(InvalidArgument) as refused:
        client.update_device_settings(bad)
    assert _field_names(refused.value) == {
        "settings.phone_parts_per_minute",
        "settings.default_pacing.parts_per_minute",
        "settings.sims[0].slot",
        "settings.sims[2].slot",
    }
    assert client.get_device_settings(device) == stored  # a refused update changes nothing
    with pytest.raises(NotFound):
        client.get_device_settings("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    with pytest.raises(InvalidArgument):
        client.get_device_settings("")

    reset = client.update_device_settings(devices_pb2.DeviceSettings(device_id=device), reset=True)
    assert not reset.customized and reset == current
    assert _next_settings(raw).settings.phone_parts_per_minute == 0
    del sim2


def _next_settings(raw: RawPhone) -> SettingsReceived:
    for _ in range(20):
        event = raw.next_event()
        if isinstance(event, SettingsReceived):
            return event
    raise AssertionError("no Settings frame")


def test_retryable_failure_comes_back_as_the_next_attempt_final_one_does_not(
    client: Client, phone: tuple[RawPhone, str]
) -> None:
    raw, device = phone
    mid = client.send_message(["+15551230010", "+15551230011"], "retry me", device_id=device).id
    first = _deliver(raw).delivery
    assert (first.message_id, first.attempt, first.recipient_indices) == (mid, 1, (0, 1))
    raw.receipt(mid, ReceiptState.ACCEPTED)
    raw.receipt(mid, ReceiptState.FAILED, 0, "no signal", failure_class=FailureClass.NO_SERVICE, attempt=1)
    raw.receipt(mid, ReceiptState.FAILED, 1, "carrier refused", failure_class=FailureClass.INVALID_NUMBER, attempt=1)
    waiting = _wait(client, mid, lambda m: m.recipients[1].state == common_pb2.FAILED and m.recipients[0].attempt == 2)
    r0, r1 = waiting.recipients
    assert r0.state == common_pb2.PENDING and r0.last_error == "no_service: no signal" and r0.HasField("next_attempt_at")
    assert r1.error == "invalid_number: carrier refused" and r1.attempt == 1
    assert waiting.attempts == 2

    again = _next_deliver_for(raw, mid)
    assert (again.attempt, again.recipient_indices) == (2, (0,))
    # A late report of attempt 1 is stale: it moves nothing.
    raw.receipt(mid, ReceiptState.SENT, 0, attempt=1)
    raw.receipt(mid, ReceiptState.ACCEPTED, attempt=2)
    raw.receipt(mid, ReceiptState.FAILED, 0, failure_class=FailureClass.RADIO_OFF, attempt=2)
    third = _next_deliver_for(raw, mid)
    assert third.attempt == 3
    raw.receipt(mid, ReceiptState.ACCEPTED, attempt=3)
    raw.receipt(mid, ReceiptState.FAILED, 0, failure_class=FailureClass.LIMIT_EXCEEDED, attempt=3)
    # max_attempts = 3: that was the last one.
    final = _wait(client, mid, lambda m: m.state == common_pb2.FAILED)
    assert final.recipients[0].attempt == 3 and final.recipients[0].error == "limit_exceeded"
    assert final.attempts == 3 and final.last_error in ("limit_exceeded", "invalid_number: carrier refused")
    with pytest.raises(TimeoutError):
        _next_deliver_for(raw, mid, QUIET)


def _next_deliver_for(raw: RawPhone, message_id: str, timeout: float = 10.0) -> DeliverReceived:
    """The next Deliver of `message_id`, skipping Acks (bounded by `timeout` per frame)."""
    for _ in range(50):
        event = raw.next_event(timeout)
        if isinstance(event, DeliverReceived) and event.delivery.message_id == message_id:
            return event.delivery  # type: ignore[return-value]
        assert isinstance(event, AckReceived | DeliverReceived), event
    raise AssertionError("no Deliver")


def test_expiry_of_a_held_message_drops_it_and_the_phones_sent_still_wins(
    client: Client, phone: tuple[RawPhone, str]
) -> None:
    raw, device = phone
    valid_until = datetime.now(UTC) + timedelta(seconds=1.5)
    mid = client.send_message(["+15551230020"], "soon stale", device_id=device, valid_until=valid_until).id
    assert _deliver(raw).delivery.message_id == mid
    raw.receipt(mid, ReceiptState.ACCEPTED)
    _wait(client, mid, lambda m: m.state == common_pb2.ACCEPTED)
    # The phone holds it and has not sent it when valid_until passes: EXPIRED, and Drop.
    for _ in range(100):
        event = raw.next_event()
        if isinstance(event, DropReceived):
            break
    else:
        raise AssertionError("no Drop")
    assert (event.message_id, event.reason) == (mid, "expired")
    expired = client.get_message(mid)
    assert expired.state == common_pb2.EXPIRED and expired.recipients[0].state == common_pb2.EXPIRED
    # The phone had sent it already (the Drop came too late): its SENT and DELIVERED are the
    # truth and win over the expiry (issue 14). A stream following the message sees them.
    seen: list[int] = []
    errors: list[Exception] = []

    def follow() -> None:
        stream = client.watch_messages(after_event_id=0, message_ids=[mid], timeout=20)
        try:
            for event in stream:
                seen.append(event.state)
                if event.state == common_pb2.DELIVERED:
                    return
        except Exception as exc:  # judged by the test thread (the client closes when it fails)
            errors.append(exc)
        finally:
            stream.close()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    raw.receipt(mid, ReceiptState.SENT, 0)
    raw.receipt(mid, ReceiptState.DELIVERED, 0)
    delivered = _wait(client, mid, lambda m: m.state == common_pb2.DELIVERED)
    assert delivered.recipients[0].state == common_pb2.DELIVERED and delivered.recipients[0].error == ""
    watcher.join(20)
    assert not watcher.is_alive() and not errors, errors
    assert seen == [
        common_pb2.PENDING, common_pb2.DISPATCHED, common_pb2.ACCEPTED, common_pb2.EXPIRED,
        common_pb2.SENT, common_pb2.DELIVERED,
    ]


def test_cli_schedule_show_reschedule_cancel_and_device_settings(
    server: ServerProcess, client: Client, phone: tuple[RawPhone, str]
) -> None:
    import subprocess

    from tests.helpers.server import SMSGW

    raw, device = phone
    auth = ["--server", server.grpc_target, "--token-file", str(server.token_file())]

    def smsgw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SMSGW, *args, *auth], capture_output=True, text=True, timeout=60)

    sent = smsgw("send", "--to", "+15551230030", "--text", "x" * 200, "--device", device,
                 "--at", "2099-01-01T09:00:00Z", "--no-wait")
    # 2099 is more than 30 days ahead: refused with the field named, exit 2.
    assert sent.returncode == 2 and "schedule_at" in sent.stderr, sent
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    sent = smsgw("send", "--to", "+15551230030", "--text", "x" * 200, "--device", device,
                 "--at", at.isoformat().replace("+00:00", "Z"), "--no-wait")
    assert sent.returncode == 0, sent
    mid = sent.stdout.split()[0]
    shown = smsgw("show", mid)
    assert shown.returncode == 0, shown
    assert "PENDING  parts=2 GSM_7" in shown.stdout
    assert f"scheduled for {at:%Y-%m-%d %H:%M:%S} UTC" in shown.stdout
    assert "+15551230030" not in shown.stdout  # numbers are redacted
    assert f"next attempt {at:%Y-%m-%d %H:%M:%S} UTC" in shown.stdout

    moved = smsgw("reschedule", mid, "--now")
    assert moved.returncode == 0, moved
    assert _next_deliver_for(raw, mid).message_id == mid
    cancelled = smsgw("cancel", mid)  # dispatched, not yet accepted: still cancellable, the phone drops it
    assert cancelled.returncode == 0 and f"{mid} CANCELLED" in cancelled.stdout, cancelled
    drop = next(e for e in (raw.next_event() for _ in range(20)) if isinstance(e, DropReceived))
    assert (drop.message_id, drop.reason) == (mid, "cancelled")
    resched = smsgw("reschedule", mid, "--now")
    assert resched.returncode == 2 and "FAILED_PRECONDITION" in resched.stderr

    changed = smsgw("devices", "settings", device, "--sim", "2", "--parts-per-minute", "10", "--parts-per-hour", "200")
    assert changed.returncode == 0, changed
    assert "custom" in changed.stdout and "SIM 2: 10 parts/min" in changed.stdout and "200/h" in changed.stdout
    stored = client.get_device_settings(device)
    assert [(s.slot, s.parts_per_minute, s.parts_per_hour) for s in stored.sims] == [(2, 10, 200)]
    assert _next_settings(raw).settings.sims[1].parts_per_minute == 10
    bad = smsgw("devices", "settings", device, "--sim", "9", "--parts-per-minute", "1")
    assert bad.returncode == 2 and "settings.sims[1].slot: must be a SIM slot 1..8" in bad.stderr  # [0] is SIM 2
    reset = smsgw("devices", "settings", device, "--reset")
    assert reset.returncode == 0 and "server defaults" in reset.stdout
