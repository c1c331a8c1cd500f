"""SMSGate's webhooks and settings on smsgw (issue 19): the official Python client registers,
lists, replaces and deletes webhooks and reads, replaces and patches settings; a phone's
sent/delivered receipts and an inbound SMS reach a real receiver on 127.0.0.1 in SMSGate's
format, signed as SMSGate signs (X-Timestamp, X-Signature) with the account's signing key,
while a gRPC webhook beside them keeps the Standard Webhooks format; the send-rate settings
become the phone's pacing; bad input on every new endpoint is a 4xx `{"message"}` with
nothing stored. One server for the module (private mode: the receiver is plain http on
loopback, as in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from android_sms_gateway import APIClient, Message, TextMessage
from android_sms_gateway import domain
from android_sms_gateway.enums import LimitPeriod, WebhookEvent
from smsgw_client import Client, FailedPrecondition

from device_bridge.protocol import InboundSms, ReceiptState
from tests.helpers.raw_phone import RawPhone, pair_raw
from tests.helpers.server import PRIVATE_TOKEN, SMSGW, ServerProcess, private_webhook_env
from tests.helpers.webhook_receiver import Receiver, Received


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("smsgate-webhooks") / "data"
    with ServerProcess(data, env=private_webhook_env(SMSGW_COMPAT__SMSGATE__LISTEN="127.0.0.1:0")) as proc:
        yield proc


@pytest.fixture(scope="module")
def phone(server: ServerProcess) -> Iterator[RawPhone]:
    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url, private_token=PRIVATE_TOKEN)
    yield phone
    phone.ws.close()


@pytest.fixture(autouse=True)
def no_webhooks_left(server: ServerProcess) -> Iterator[None]:
    """Each test starts with no webhook, whatever the one before it left behind."""
    yield
    with Client(server.grpc_target, server.token) as client:
        for w in client.webhooks.list().webhooks:
            client.webhooks.delete(w.id)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(default=204) as r:
        yield r


def _api(server: ServerProcess, username: str = "admin", password: str | None = None) -> APIClient:
    return APIClient(username, password or server.admin_password, base_url=server.endpoints["smsgate"])


def _call(server: ServerProcess, method: str, path: str, auth: tuple[str, str] | None = None, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{server.endpoints['smsgate']}{path}", auth=auth or ("admin", server.admin_password),
                         timeout=10, **kwargs)  # type: ignore[arg-type]


def _smsgate_verified(got: Received, key: str) -> bool:
    """SMSGate's check, written from its docs (the Python client 4.3.3 ships no helper):
    hex HMAC-SHA256 keyed with the key's UTF-8 over the raw body + the X-Timestamp text."""
    expected = hmac.new(key.encode(), got.body + got.headers["x-timestamp"].encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, got.headers.get("x-signature", ""))


def _inbound(phone: RawPhone, phone_id: str, text: str, sim_number: int = 0) -> None:
    """An SMS the phone received, as its next event (after its receipts)."""
    phone._event_id += 1
    phone.proto.send_inbound(InboundSms(event_id=phone._event_id, id=phone_id, sender="+15557654321", text=text,
                                        sim_number=sim_number))
    phone.flush()


def _cleanup(api: APIClient) -> None:
    for w in api.get_webhooks():
        assert w.id is not None
        api.delete_webhook(w.id)


def test_webhooks_through_the_official_client(server: ServerProcess, phone: RawPhone, receiver: Receiver) -> None:
    device_id = phone.welcome.device_id
    with _api(server) as api:
        made = api.create_webhook(domain.Webhook(id=None, url=receiver.url, event=WebhookEvent.SMS_RECEIVED))
        assert made.id and len(made.id) == 26  # generated: a ULID
        assert (made.url, made.event, made.device_id) == (receiver.url, WebhookEvent.SMS_RECEIVED, None)
        mine = api.create_webhook(domain.Webhook(id="hook-1", url=receiver.url, event=WebhookEvent.SMS_SENT,
                                                 device_id=device_id))
        assert (mine.id, mine.url, mine.event, mine.device_id) == ("hook-1", receiver.url, WebhookEvent.SMS_SENT, device_id)
        # The same id again replaces it (SMSGate's upsert).
        replaced = api.create_webhook(domain.Webhook(id="hook-1", url=receiver.url + "?v=2", event=WebhookEvent.SMS_FAILED))
        assert (replaced.id, replaced.url, replaced.event, replaced.device_id) == (
            "hook-1", receiver.url + "?v=2", WebhookEvent.SMS_FAILED, None)
        listed = sorted(api.get_webhooks(), key=lambda w: str(w.id))
        assert [(w.id, w.url, w.event, w.device_id) for w in listed] == sorted([
            (made.id, receiver.url, WebhookEvent.SMS_RECEIVED, None),
            ("hook-1", receiver.url + "?v=2", WebhookEvent.SMS_FAILED, None),
        ], key=lambda t: str(t[0]))
        api.delete_webhook("hook-1")
        api.delete_webhook("hook-1")  # nothing matched: still 204, as SMSGate answers
        assert [w.id for w in api.get_webhooks()] == [made.id]
        with Client(server.grpc_target, server.token) as client:  # gRPC sees it, with one event
            [seen] = client.webhooks.list().webhooks
            assert list(seen.events) == ["sms:received"] and seen.url == receiver.url
            assert client.webhooks.test(seen.id).status_code == 204  # a system:ping, in SMSGate's format
            [ping] = receiver.received
            assert ping.event["event"] == "system:ping" and ping.event["webhookId"] == made.id
            assert ping.event["payload"]["health"]["status"] == "pass" and len(ping.headers["x-signature"]) == 64
            with pytest.raises(FailedPrecondition):  # its key is the account's signing_key setting
                client.webhooks.rotate_secret(seen.id)
        _cleanup(api)


def test_deliveries_in_smsgate_format_signed_with_the_signing_key(
    server: ServerProcess, phone: RawPhone, receiver: Receiver
) -> None:
    key = "first-key-" + secrets.token_hex(4)
    with _api(server) as api, Client(server.grpc_target, server.token) as client:
        api.patch_settings(domain.DeviceSettings(webhooks=domain.SettingsWebhooks(signing_key=key)))
        for event in (WebhookEvent.SMS_SENT, WebhookEvent.SMS_DELIVERED, WebhookEvent.SMS_RECEIVED):
            api.create_webhook(domain.Webhook(id=f"h-{event.value}", url=receiver.url, event=event))
        standard = client.webhooks.create(receiver.url + "?grpc", ["sms:sent"])  # Standard Webhooks, unchanged
        receiver.secret = standard.secret

        sent = api.send(Message(phone_numbers=["+15550001234"], text_message=TextMessage("hi there")))
        deliver = phone.next_deliver().delivery
        for state in (ReceiptState.ACCEPTED, ReceiptState.SENT, ReceiptState.DELIVERED):
            phone.receipt(sent.id, state, 0, attempt=deliver.attempt)
        _inbound(phone, "sms-in-1", "STOP", sim_number=2)
        got = receiver.wait_for(lambda got: len(got) >= 4)
        by_event = {r.event["event"]: r for r in got if "x-signature" in r.headers}
        assert sorted(by_event) == ["sms:delivered", "sms:received", "sms:sent"]
        [grpc] = [r for r in got if "webhook-signature" in r.headers]
        assert grpc.verified and grpc.event["event"] == "sms:sent" and grpc.event["message"]["id"] == sent.id
        assert "x-signature" not in grpc.headers and "webhook-signature" not in by_event["sms:sent"].headers

        device_id = phone.welcome.device_id
        for name, r in by_event.items():
            assert _smsgate_verified(r, key), name
            assert abs(int(r.headers["x-timestamp"]) - time.time()) < 60
            body = r.event
            assert sorted(body) == ["deviceId", "event", "id", "payload", "webhookId"]
            assert body["webhookId"] == f"h-{name}" and body["deviceId"] == device_id and body["id"].startswith("msg_")
        sent_payload = by_event["sms:sent"].event["payload"]
        assert sent_payload["messageId"] == sent.id and sent_payload["recipient"] == "+15550001234"
        assert sent_payload["phoneNumber"] == "+15550001234" and sent_payload["partsCount"] == 1
        assert sent_payload["sender"] is None and "sentAt" in sent_payload
        delivered = by_event["sms:delivered"].event["payload"]
        assert delivered["messageId"] == sent.id and delivered["deliveredAt"].endswith("Z")
        received = by_event["sms:received"].event["payload"]
        assert (received["sender"], received["phoneNumber"], received["message"], received["simNumber"]) == (
            "+15557654321", "+15557654321", "STOP", 2)
        assert received["messageId"] and received["receivedAt"].endswith("Z")

        # A new key signs from the next attempt on; the old one no longer verifies.
        new_key = "second-key-" + secrets.token_hex(4)
        api.patch_settings(domain.DeviceSettings(webhooks=domain.SettingsWebhooks(signing_key=new_key)))
        _inbound(phone, "sms-in-2", "again")
        later = receiver.wait_for(lambda got: len(got) >= 5)[-1]
        assert later.event["payload"]["message"] == "again"
        assert _smsgate_verified(later, new_key) and not _smsgate_verified(later, key)
        _cleanup(api)
        client.webhooks.delete(standard.webhook.id)


def test_settings_and_the_pacing_they_set(server: ServerProcess, phone: RawPhone) -> None:
    device_id = phone.welcome.device_id
    with _api(server) as api, Client(server.grpc_target, server.token) as client:
        before = client.get_device_settings(device_id)
        api.update_settings(domain.DeviceSettings(
            messages=domain.SettingsMessages(limit_period=LimitPeriod.PER_MINUTE, limit_value=10, send_interval_min=3,
                                             send_interval_max=7),
            ping=domain.SettingsPing(interval_seconds=300),
            logs=domain.SettingsLogs(lifetime_days=14),
            encryption=domain.SettingsEncryption(passphrase="correct horse"),
            webhooks=domain.SettingsWebhooks(retry_count=3, internet_required=True, signing_key="k" * 20),
        ))
        got = api.get_settings()
        assert got.messages == domain.SettingsMessages(limit_period=LimitPeriod.PER_MINUTE, limit_value=10,
                                                       send_interval_min=3, send_interval_max=7)
        assert got.ping == domain.SettingsPing(300) and got.logs == domain.SettingsLogs(14)
        assert got.webhooks == domain.SettingsWebhooks(retry_count=3, internet_required=True)  # the key is hidden
        assert got.encryption == domain.SettingsEncryption()  # so is the passphrase
        raw = _call(server, "GET", "/settings").json()
        assert raw["encryption"] == {} and "signing_key" not in raw["webhooks"]

        pacing = client.get_device_settings(device_id).default_pacing
        assert (pacing.parts_per_minute, pacing.min_interval_ms) == (10, 3000)
        assert pacing.parts_per_hour == before.default_pacing.parts_per_hour  # not set: the default

        # PATCH merges: only the named keys change, and pacing is left alone when its inputs are.
        api.patch_settings(domain.DeviceSettings(ping=domain.SettingsPing(60), messages=domain.SettingsMessages(
            sim_selection_mode=domain.SimSelectionMode.ROUND_ROBIN)))
        got = api.get_settings()
        assert got.ping == domain.SettingsPing(60) and got.messages is not None
        assert (got.messages.limit_value, got.messages.sim_selection_mode) == (10, domain.SimSelectionMode.ROUND_ROBIN)
        assert got.logs == domain.SettingsLogs(14)
        # null passes through; a per-day limit; unknown keys and sections are dropped.
        patched = _call(server, "PATCH", "/settings", json={
            "messages": {"limit_period": "PerDay", "limit_value": 500, "send_interval_min": None, "bogus": 1},
            "nonsense": {"x": 1}}).json()
        assert patched["messages"]["send_interval_min"] is None and "bogus" not in patched["messages"]
        assert "nonsense" not in patched
        pacing = client.get_device_settings(device_id).default_pacing
        assert (pacing.parts_per_day, pacing.min_interval_ms, pacing.parts_per_minute) == (
            500, before.default_pacing.min_interval_ms, before.default_pacing.parts_per_minute)

        # PUT replaces: back to nothing, and the pacing back to the server's defaults.
        assert api.update_settings(domain.DeviceSettings()) is not None
        assert _call(server, "GET", "/settings").json() == {"webhooks": {}}  # the signing key stays, hidden
        assert client.get_device_settings(device_id).default_pacing == before.default_pacing


def _second_account(server: ServerProcess) -> tuple[str, str]:
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [SMSGW, "users", "add", "bob", "--password-stdin", "--data-dir", str(server.data_dir)],
        input=password + "\n", capture_output=True, text=True, timeout=60, check=True, env=server.env,
    )
    return "bob", password


def test_bad_input_is_refused_and_nothing_is_stored(server: ServerProcess, phone: RawPhone, receiver: Receiver) -> None:
    good = {"id": "keep", "url": receiver.url, "event": "sms:sent"}
    assert _call(server, "POST", "/webhooks", json=good).status_code == 201
    settings = {"messages": {"limit_value": 5}}
    assert _call(server, "PUT", "/settings", json=settings).status_code == 200
    stored_settings = _call(server, "GET", "/settings").json()

    for body, field in (
        (b"{not json", "body"),
        (b"x" * (100 << 10), "body"),
        ([], "body"),
        ({"url": receiver.url}, "event"),
        ({"url": receiver.url, "event": "sms:nope"}, "event"),
        ({"url": receiver.url, "event": "mms:received"}, "never sent by smsgw"),
        ({"url": receiver.url, "event": "sms:cancelled"}, "never sent by smsgw"),
        ({"url": receiver.url, "event": "device:online"}, "event"),
        ({"url": 5, "event": "sms:sent"}, "url"),
        ({"url": "ftp://example.com/x", "event": "sms:sent"}, "url"),
        ({"url": "https://user:pw@example.com/x", "event": "sms:sent"}, "url"),
        ({"id": 7, "url": receiver.url, "event": "sms:sent"}, "id"),
        ({"id": "a/b", "url": receiver.url, "event": "sms:sent"}, "id"),
        ({"id": "x" * 37, "url": receiver.url, "event": "sms:sent"}, "id"),
        ({"url": receiver.url, "event": "sms:sent", "deviceId": "01J00000000000000000000000"}, "deviceId"),
        ({"url": receiver.url, "event": "sms:sent", "deviceId": 5}, "deviceId"),
    ):
        answer = (_call(server, "POST", "/webhooks", content=body) if isinstance(body, bytes)
                  else _call(server, "POST", "/webhooks", json=body))
        assert answer.status_code == 400 and field in answer.json()["message"], (body, answer.text)

    for method in ("PUT", "PATCH"):
        for body, field in (
            (b"{not json", "body"),
            (b"x" * (100 << 10), "body"),
            ([1], "body"),
            ({"messages": "fast"}, "messages"),
            ({"messages": None}, "messages"),
            ({"messages": {"limit_value": "10"}}, "messages.limit_value"),
            ({"messages": {"limit_value": 0}}, "messages.limit_value"),
            ({"messages": {"limit_period": "PerWeek"}}, "messages.limit_period"),
            ({"messages": {"send_interval_min": 10, "send_interval_max": 5}}, "messages.send_interval_max"),
            ({"messages": {"work_hours_start": "25:00"}}, "messages.work_hours_start"),
            ({"webhooks": {"internet_required": "yes"}}, "webhooks.internet_required"),
            ({"webhooks": {"signing_key": ""}}, "webhooks.signing_key"),
            ({"gateway": {"notification_channel": "FCM"}}, "gateway.notification_channel"),
        ):
            answer = (_call(server, method, "/settings", content=body) if isinstance(body, bytes)
                      else _call(server, method, "/settings", json=body))
            assert answer.status_code == 400 and field in answer.json()["message"], (method, body, answer.text)

    now = datetime.now(UTC)
    span = {"since": (now - timedelta(days=1)).isoformat(), "until": now.isoformat()}
    for path, body, field in (
        ("/inbox/refresh", b"{", "body"),
        ("/inbox/refresh", {"until": span["until"]}, "since"),
        ("/inbox/refresh", {"since": span["until"], "until": span["since"]}, "until"),
        ("/inbox/refresh", {**span, "messageTypes": ["FAX"]}, "messageTypes"),
        ("/inbox/refresh", {**span, "webhookDelivery": "Now"}, "webhookDelivery"),
        ("/inbox/refresh", {**span, "deviceId": "01J00000000000000000000000"}, "deviceId"),
        ("/messages/inbox/export", span, "deviceId"),
    ):
        answer = (_call(server, "POST", path, content=body) if isinstance(body, bytes)
                  else _call(server, "POST", path, json=body))
        assert answer.status_code == 400 and field in answer.json()["message"], (path, body, answer.text)

    # Another account neither sees nor deletes this one's webhooks (204: SMSGate says nothing).
    bob = _second_account(server)
    assert _call(server, "GET", "/webhooks", auth=bob).json() == []
    assert _call(server, "DELETE", "/webhooks/keep", auth=bob).status_code == 204
    assert _call(server, "GET", "/settings", auth=bob).json() == {}
    other = _call(server, "POST", "/webhooks", auth=bob, json={**good, "deviceId": phone.welcome.device_id})
    assert other.status_code == 400 and "deviceId" in other.json()["message"]
    assert _call(server, "GET", "/webhooks", auth=bob).json() == []
    assert _call(server, "DELETE", "/webhooks/keep").status_code == 204  # then its owner deletes it
    assert _call(server, "GET", "/webhooks").json() == []

    # Nothing stored by any refusal.
    assert _call(server, "GET", "/settings").json() == stored_settings
    with Client(server.grpc_target, server.token) as client:
        assert client.webhooks.list().webhooks == []


def test_inbox_export_refresh_and_the_501s(server: ServerProcess, phone: RawPhone) -> None:
    now = datetime.now(UTC)
    with _api(server) as api:
        assert api.refresh_inbox(domain.InboxRefreshRequest(since=now - timedelta(hours=1), until=now)) == {}
        assert api.export_inbox(domain.MessagesExportRequest(device_id=phone.welcome.device_id,
                                                             since=now - timedelta(hours=1), until=now)) == {}
    exported = _call(server, "POST", "/messages/inbox/export", json={
        "deviceId": phone.welcome.device_id, "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"})
    assert exported.status_code == 202 and exported.json() == {} and exported.headers["deprecation"] == "true"
    for path in ("/inbox", "/logs"):
        answer = _call(server, "GET", path)
        assert answer.status_code == 501 and "not implemented" in answer.json()["message"]
        assert httpx.get(f"{server.endpoints['smsgate']}{path}", timeout=10).status_code == 401


def test_the_typescript_client_registers_webhooks_and_settings(server: ServerProcess, receiver: Receiver) -> None:
    """android-sms-gateway 3.0.0 (npm): registerWebhook, getWebhooks, deleteWebhook,
    getSettings, patchSettings (with SMSGate's snake_case keys: its own types say camelCase,
    which SMSGate's server and smsgw drop), updateSettings; clients/node/harness/smsgate-ts-settings.js."""
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    harness = Path(__file__).resolve().parents[2] / "clients" / "node" / "harness" / "smsgate-ts-settings.js"
    done = subprocess.run(
        [node, str(harness)], capture_output=True, text=True, timeout=60,
        input=json.dumps({"base": server.endpoints["smsgate"], "username": "admin", "password": server.admin_password,
                          "url": receiver.url}),
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["registered"] == {"id": "ts-1", "deviceId": None, "url": receiver.url, "event": "sms:delivered"}
    assert out["listed"] == [out["registered"]] and out["after"] == []
    assert out["patched"]["ping"] == {"interval_seconds": 120} and out["got"]["ping"] == {"interval_seconds": 120}
    assert out["replaced"] == {"logs": {"lifetime_days": 3}, "webhooks": {}}
    assert "HTTP error 400" in out["refused"]
