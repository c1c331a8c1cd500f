"""One-time passwords (issue 20) through `smsgw serve` and simulated phones: the code a phone's
modem was given approves the verification once; a brute force is stopped after 5; a resend
sends the same code; the limits refuse with RetryInfo; the pumping guard trips on a prefix
nobody converts and not on a healthy one; no code appears anywhere but the SMS (storage,
logs, events, webhooks, metrics, GetVerification)."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from smsgw.v1 import otp_pb2
from smsgw_client import Client
from smsgw_client.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

from tests.helpers.phones import GatedModem, start_phones
from tests.helpers.server import PRIVATE_TOKEN, ServerProcess, private_webhook_env
from tests.helpers.webhook_receiver import Receiver

_CODE = re.compile(r"\b(\d{4,10})\b")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        **private_webhook_env(), "SMSGW_OTP__RESEND_COOLDOWN": "0.5", "SMSGW_OTP__PUMPING_MIN_VOLUME": "4",
        "SMSGW_OTP__SENDS_PER_NUMBER": "3", "SMSGW_JOBS__EXPIRY_INTERVAL": "0.5",
    }
    with ServerProcess(tmp_path_factory.mktemp("otp") / "data", env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def receiver(server: ServerProcess) -> Iterator[Receiver]:
    """A webhook for the OTP events (and sms:sent, whose payload carries the SMS's message)."""
    with Receiver(default=204) as r, Client(server.grpc_target, server.token) as client:
        client.webhooks.create(r.url, ["otp:approved", "otp:expired", "sms:sent"])
        yield r


def _codes(phone: object) -> list[tuple[str, str]]:
    """(number, code) of every SMS the phone's modem was asked to send."""
    assert isinstance(getattr(phone, "modem", None), GatedModem)
    out = []
    for d in phone.modem.asked:  # type: ignore[attr-defined]
        found = _CODE.search(d.text or "")
        if found:
            out.extend((n, found.group(1)) for n in d.phone_numbers)
    return out


def test_the_code_the_phone_sends_approves_once(server: ServerProcess, receiver: Receiver) -> None:
    with Client(server.grpc_target, server.token) as client:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1, private_token=PRIVATE_TOKEN)
                started = await trio.to_thread.run_sync(lambda: client.otp.start("+15550100001", template="Your ACME code: {code}. Valid {ttl_minutes} min."))
                assert started.status == otp_pb2.VERIFICATION_STATUS_PENDING and started.sends == 1
                with trio.fail_after(20):
                    while not _codes(phone):
                        await trio.sleep(0.02)
                [(number, code)] = _codes(phone)
                assert number == "+15550100001" and len(code) == 6
                assert phone.modem.asked[0].text == f"Your ACME code: {code}. Valid 10 min."  # type: ignore[attr-defined]
                wrong = "0" * 6 if code != "0" * 6 else "1" * 6
                denied = await trio.to_thread.run_sync(lambda: client.otp.check(started.id, wrong))
                assert denied.result == otp_pb2.CHECK_RESULT_DENIED and denied.attempts_left == 4
                approved = await trio.to_thread.run_sync(lambda: client.otp.check(started.id, code))
                assert approved.result == otp_pb2.CHECK_RESULT_APPROVED
                assert approved.verification.status == otp_pb2.VERIFICATION_STATUS_APPROVED
                again = await trio.to_thread.run_sync(lambda: client.otp.check(started.id, code))
                assert again.result == otp_pb2.CHECK_RESULT_CANCELED  # a code works once
                with trio.fail_after(20):
                    while (await trio.to_thread.run_sync(lambda: client.otp.get(started.id))).delivery_status != otp_pb2.DELIVERY_STATUS_DELIVERED:
                        await trio.sleep(0.05)
                # The sealed SMS, copied from GetMessage, cannot be sent anywhere else.
                sealed = (await trio.to_thread.run_sync(lambda: client.get_message(started.message_id))).text_message.text
                assert sealed.startswith("otp1:") and code not in sealed
                with pytest.raises(InvalidArgument):
                    await trio.to_thread.run_sync(lambda: client.send_message(["+15550100099"], sealed))
                nursery.cancel_scope.cancel()
                receiver.wait_for(lambda got: any(r.event.get("event") == "otp:approved" for r in got))
                [hook] = receiver.events("otp:approved")
                assert hook.event["verification"]["id"] == started.id
                assert hook.event["verification"]["status"] == "VERIFICATION_STATUS_APPROVED"
                receiver.wait_for(lambda got: any(r.event.get("event") == "sms:sent" for r in got))
                _assert_nowhere(server, receiver, code)

        trio.run(main)


def _assert_nowhere(server: ServerProcess, receiver: Receiver, code: str) -> None:
    """The code is in no stored row, log line, webhook or metric (only the SMS had it)."""
    db = sqlite3.connect(server.data_dir / "smsgw.db")
    try:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 — table names from the schema
                assert not any(code in str(v) for v in row if isinstance(v, (str, bytes))), table
    finally:
        db.close()
    assert code not in server.log_text()
    assert all(code not in r.body.decode() for r in receiver.received), "a webhook carried the code"
    assert code not in httpx.get(server.endpoints["metrics"], timeout=10).text


def test_a_brute_force_is_stopped_after_five_and_a_resend_keeps_the_code(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1, private_token=PRIVATE_TOKEN)
                started = await trio.to_thread.run_sync(lambda: client.otp.start("+15550100002", code_length=4))
                with pytest.raises(ResourceExhausted) as cooling:  # the resend cooldown
                    await trio.to_thread.run_sync(lambda: client.otp.start("+15550100002"))
                assert cooling.value.retry_delay is not None and cooling.value.retry_delay <= 1
                await trio.sleep(0.6)
                resent = await trio.to_thread.run_sync(lambda: client.otp.start("+15550100002"))
                assert resent.id == started.id and resent.sends == 2 and resent.message_id != started.message_id
                with trio.fail_after(20):
                    while len(_codes(phone)) < 2:
                        await trio.sleep(0.02)
                [(_, first), (_, second)] = _codes(phone)
                assert first == second and len(first) == 4  # one valid code
                results = []
                for guess in range(1000):
                    if f"{guess:04d}" == first:
                        continue
                    checked = await trio.to_thread.run_sync(lambda: client.otp.check(started.id, f"{guess:04d}"))
                    results.append(checked.result)
                    if len(results) >= 1000:
                        break
                assert results[:4] == [otp_pb2.CHECK_RESULT_DENIED] * 4
                assert results[4] == otp_pb2.CHECK_RESULT_MAX_ATTEMPTS
                assert set(results[5:]) == {otp_pb2.CHECK_RESULT_MAX_ATTEMPTS}
                late = await trio.to_thread.run_sync(lambda: client.otp.check(started.id, first))
                assert late.result == otp_pb2.CHECK_RESULT_MAX_ATTEMPTS  # even the right code, now
                # The per-number limit (3 here): a third send is allowed, the fourth refused.
                await trio.sleep(0.6)
                third = await trio.to_thread.run_sync(lambda: client.otp.start("+15550100002"))
                assert third.id != started.id  # the old one ended: a new verification
                await trio.sleep(0.6)
                with pytest.raises(ResourceExhausted) as limited:
                    await trio.to_thread.run_sync(lambda: client.otp.start("+15550100002"))
                assert "at most 3 codes" in str(limited.value) and limited.value.retry_delay > 60
                nursery.cancel_scope.cancel()

        trio.run(main)


def test_bad_requests_name_their_field(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        for kwargs, field in (
            ({"to": "12345"}, "to"),
            ({"to": "+15550100003", "code_length": 3}, "code_length"),
            ({"to": "+15550100003", "ttl_seconds": 3600}, "ttl_seconds"),
            ({"to": "+15550100003", "template": "no placeholder"}, "template"),
            ({"to": "+15550100003", "template": "{code} {other}"}, "template"),
            ({"to": "+15550100003", "app_hash": "short"}, "app_hash"),
            ({"to": "+15550100003", "app_hash": "FA+9qCX9VSu", "template": "{code} " + "x" * 200}, "template"),
        ):
            with pytest.raises(InvalidArgument) as refused:
                client.otp.start(**kwargs)
            assert field in str(refused.value), (kwargs, refused.value)
        with pytest.raises(InvalidArgument):
            client.otp.check("", "123456")
        from smsgw_client.errors import NotFound

        with pytest.raises(NotFound):
            client.otp.get("01NOSUCHVERIFICATION00000")


def test_the_pumping_guard_trips_on_a_prefix_nobody_converts(server: ServerProcess, receiver: Receiver) -> None:
    """Four verifications to +1555020xxxx expire unentered (min volume 4 here): the fifth is
    refused, audited and counted; +1555030xxxx, whose codes are entered, is not."""
    with Client(server.grpc_target, server.token) as client:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1, private_token=PRIVATE_TOKEN)
                for i in range(4):
                    await trio.to_thread.run_sync(lambda: client.otp.start(f"+1555020{i:04d}", ttl_seconds=60))
                    healthy = await trio.to_thread.run_sync(lambda: client.otp.start(f"+1555030{i:04d}"))
                    with trio.fail_after(20):
                        while not any(n == f"+1555030{i:04d}" for n, _ in _codes(phone)):
                            await trio.sleep(0.02)
                    code = dict(_codes(phone))[f"+1555030{i:04d}"]
                    assert (await trio.to_thread.run_sync(lambda: client.otp.check(healthy.id, code))).result == otp_pb2.CHECK_RESULT_APPROVED
                # Their codes are never entered: cancel stands in for waiting out the expiry.
                nursery.cancel_scope.cancel()

        trio.run(main)
        _expire_all(server, "+1555020")
        receiver.wait_for(lambda got: sum(r.event.get("event") == "otp:expired" for r in got) >= 4)
        assert {r.event["verification"]["to"][:8] for r in receiver.events("otp:expired")} == {"+1555020"}
        with pytest.raises(ResourceExhausted) as pumped:
            client.otp.start("+15550200009")
        assert "pumping" in str(pumped.value)
        client.otp.start("+15550300009")  # the healthy prefix still gets codes
        metrics = httpx.get(server.endpoints["metrics"], timeout=10).text
        assert re.search(r'^smsgw_otp_blocked_total\{reason="pumping"\} [1-9]', metrics, re.M)
        events = client.list_audit_events(action="otp.blocked").events
        assert events and "+1555020" in events[0].detail


def _expire_all(server: ServerProcess, prefix: str) -> None:
    """Move the prefix's verifications' expiry into the past, as an hour would; the sweep
    then writes EXPIRED."""
    db = sqlite3.connect(server.data_dir / "smsgw.db")
    try:
        db.execute("UPDATE otp_verification SET expires_at = '2000-01-01 00:00:00.000000' WHERE to_number LIKE ?", (prefix + "%",))
        db.commit()
    finally:
        db.close()
    deadline = time.monotonic() + 20
    while True:
        db = sqlite3.connect(server.data_dir / "smsgw.db")
        try:
            left = db.execute("SELECT count(*) FROM otp_verification WHERE to_number LIKE ? AND status = 1", (prefix + "%",)).fetchone()[0]
        finally:
            db.close()
        if not left:
            return
        assert time.monotonic() < deadline, "the sweep did not expire them"
        time.sleep(0.1)


def test_premium_rate_numbers_get_no_codes(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        with pytest.raises(FailedPrecondition) as refused:
            client.otp.start("+19005550100")  # a US 900 number
        assert "premium-rate" in str(refused.value)


def test_without_the_destination_allowed(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", env={"SMSGW_OTP__ALLOWED_PREFIXES": "+44,+49"}) as server, \
            Client(server.grpc_target, server.token) as client:
        with pytest.raises(FailedPrecondition) as refused:
            client.otp.start("+15550100009")
        assert "allowed_prefixes" in str(refused.value)


def test_cancel_withdraws_the_sms_no_phone_took(server: ServerProcess) -> None:
    """No phone online: the code's SMS waits QUEUED; cancelling the verification cancels it."""
    with Client(server.grpc_target, server.token) as client:
        started = client.otp.start("+15550100077")
        assert client.otp.get(started.id).delivery_status == otp_pb2.DELIVERY_STATUS_QUEUED
        canceled = client.otp.cancel(started.id)
        assert canceled.status == otp_pb2.VERIFICATION_STATUS_CANCELED
        assert canceled.delivery_status == otp_pb2.DELIVERY_STATUS_FAILED  # its SMS is CANCELLED
        assert client.otp.check(started.id, "000000").result == otp_pb2.CHECK_RESULT_CANCELED


def test_the_asyncio_client_has_the_same_calls(server: ServerProcess) -> None:
    import asyncio

    from smsgw_client.aio import AsyncClient

    async def main() -> None:
        async with AsyncClient(server.grpc_target, server.token) as client:
            started = await client.otp.start("+15550100088", code_length=8)
            assert started.code_length == 8
            checked = await client.otp.check_number("+15550100088", "00000000")
            assert checked.result in (otp_pb2.CHECK_RESULT_DENIED, otp_pb2.CHECK_RESULT_APPROVED)
            assert (await client.otp.get(started.id)).attempts == 1
            assert (await client.otp.cancel(started.id)).status == otp_pb2.VERIFICATION_STATUS_CANCELED

    asyncio.run(main())
