"""The pure parts of SMSGate's settings and webhooks on smsgw: the settings whitelist and its
checks, the public view, the send-rate settings as pacing, the SMSGate body and signature,
and the https-only rule under a public-mode policy."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.compat.smsgate import pacing
from gateway.compat.smsgate.settings import parse, public
from gateway.compat.smsgate.webhooks import SmsgateWebhooks
from gateway.errors import InvalidArgument
from gateway.messages.pacing import DevicePacing, SimLimits
from gateway.webhooks.formats import Format, render, sign
from gateway.webhooks.records import WebhookEvent
from gateway.webhooks.ssrf import Policy

NOW = datetime(2026, 12, 1, 21, 20, 31, 512_000, tzinfo=UTC)


def test_parse_keeps_the_whitelist_and_nulls_and_drops_the_rest() -> None:
    got = parse({"messages": {"limit_period": "Per30Minutes", "limit_value": 5, "send_interval_min": None, "x": 1},
                 "webhooks": {"signing_key": "k"}, "gateway": {"cloud_url": "https://x"}, "other": 5})
    assert got == {"messages": {"limit_period": "Per30Minutes", "limit_value": 5, "send_interval_min": None},
                   "webhooks": {"signing_key": "k"}, "gateway": {}}
    assert public({"encryption": {"passphrase": "p"}, "webhooks": {"signing_key": "k", "retry_count": 2}}) == {
        "encryption": {}, "webhooks": {"retry_count": 2}}


@pytest.mark.parametrize("body, field", [
    ("x", "body"), ({"ping": []}, "ping"), ({"ping": {"interval_seconds": True}}, "ping.interval_seconds"),
    ({"messages": {"sim_selection_mode": "Any"}}, "messages.sim_selection_mode"),
    ({"messages": {"work_hours_end": "9:00"}}, "messages.work_hours_end"),
    ({"receiver": {"content_provider_enabled": 1}}, "receiver.content_provider_enabled"),
    ({"encryption": {"passphrase": 5}}, "encryption.passphrase"),
])
def test_parse_names_the_bad_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(body)
    assert [f for f, _ in caught.value.violations] == [field]


BASE = DevicePacing(SimLimits(parts_per_minute=24, min_interval_ms=2500, parts_per_hour=0, parts_per_day=0))


@pytest.mark.parametrize("messages, expect", [
    ({"limit_period": "PerMinute", "limit_value": 10, "send_interval_min": 3}, (10, 3000, 0, 0)),
    ({"limit_period": "PerHour", "limit_value": 100}, (24, 2500, 100, 0)),
    ({"limit_period": "Per30Minutes", "limit_value": 50}, (24, 2500, 50, 0)),
    ({"limit_period": "PerDay", "limit_value": 2_000_000}, (24, 2500, 0, 1_000_000)),
    ({"limit_period": "Disabled", "limit_value": 10}, (24, 2500, 0, 0)),
    ({}, (24, 2500, 0, 0)),
])
def test_send_rate_settings_as_pacing(messages: dict[str, Any], expect: tuple[int, ...]) -> None:
    current = DevicePacing(SimLimits(1, 1, 1, 1, 7), sims={2: SimLimits(5, 5, 5, 5, 9)}, phone_parts_per_minute=20)
    got = pacing.apply({"messages": messages}, current, BASE)
    for limits, month in ((got.default, 7), (got.sims[2], 9)):
        assert (limits.parts_per_minute, limits.min_interval_ms, limits.parts_per_hour, limits.parts_per_day) == expect
        assert limits.recipients_per_month == month  # not SMSGate's: kept
    assert got.phone_parts_per_minute == 20


def test_the_smsgate_body_and_signature() -> None:
    record = {"recipient_index": 1, "phone_number": "+15550002222", "state": "FAILED", "error": "no service",
              "message": {"id": "M1", "parts": 2, "recipients": [{}, {"phone_number": "+15550002222", "sim_number": 2}]}}
    body = render(Format.SMSGATE, WebhookEvent.SMS_FAILED, "msg_1", "hook-1", "D1", NOW, record)
    assert json.loads(body) == {
        "deviceId": "D1", "event": "sms:failed", "id": "msg_1", "webhookId": "hook-1",
        "payload": {"messageId": "M1", "phoneNumber": "+15550002222", "recipient": "+15550002222", "sender": None,
                    "simNumber": 2, "failedAt": "2026-12-01T21:20:31.512Z", "reason": "no service"}}
    inbound = {"inbound": {"id": "I1", "sender": "12345", "data_message": {"data": "AQI=", "port": 80},
                           "received_at": "2026-12-01T21:20:30.123456789Z"}}
    data = json.loads(render(Format.SMSGATE, WebhookEvent.SMS_DATA_RECEIVED, "msg_2", "h", "D1", NOW, inbound))
    assert data["payload"] == {"messageId": "I1", "phoneNumber": "12345", "sender": "12345", "recipient": None,
                               "simNumber": None, "data": "AQI=", "receivedAt": "2026-12-01T21:20:30.123Z"}
    headers = sign(Format.SMSGATE, ("key",), "msg_1", 1700000000, body.encode())
    assert headers == {"X-Timestamp": "1700000000", "X-Signature": hmac.new(
        b"key", body.encode() + b"1700000000", hashlib.sha256).hexdigest()}
    standard = sign(Format.STANDARD, ("whsec_" + "A" * 43 + "=",), "msg_1", 1700000000, body.encode())
    assert set(standard) == {"webhook-id", "webhook-timestamp", "webhook-signature"}


def test_a_public_server_takes_https_only() -> None:
    hooks = SmsgateWebhooks(SimpleNamespace(policy=Policy()), SimpleNamespace())  # type: ignore[arg-type]
    for url in ("http://example.com/hook", "HTTP://example.com/", "ftp://example.com/", ""):
        with pytest.raises(InvalidArgument) as caught:
            asyncio.run(hooks._url(url))
        assert [f for f, _ in caught.value.violations] == ["url"]
    with pytest.raises(InvalidArgument, match="loopback"):
        asyncio.run(hooks._url("https://127.0.0.1/hook"))


def test_the_store_keeps_hidden_keys_and_calls_the_hooks(tmp_path: Any) -> None:
    """The mobile API's side: `get` gives the whole map; `on_change` hears every write."""
    from gateway.compat.smsgate.settings import SettingsStore
    from gateway.storage.engine import Database
    from gateway.storage.models import Owner

    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    db.migrate()
    with db.write() as s:
        s.add(Owner(id="o1", name="o", username="o", created_at=NOW))
    store = SettingsStore(db)
    heard: list[tuple[str, str]] = []
    store.on_change.append(lambda owner, what: heard.append((owner, what)))

    async def later(owner: str, what: str) -> None:
        heard.append((owner, what + "!"))

    store.on_change.append(later)

    async def main() -> None:
        assert await store.get("o1") == {}
        _, after = await store.patch("o1", {"encryption": {"passphrase": "p"}, "ping": {"interval_seconds": 5}})
        assert after["encryption"] == {"passphrase": "p"} and after["webhooks"]["signing_key"]  # made once
        key = after["webhooks"]["signing_key"]
        _, after = await store.replace("o1", {"logs": {"lifetime_days": 2}})
        assert after == {"logs": {"lifetime_days": 2}, "webhooks": {"signing_key": key}}  # the key stays
        assert await store.get("o1") == after

    asyncio.run(main())
    db.close()
    assert heard == [("o1", "settings"), ("o1", "settings!")] * 2
