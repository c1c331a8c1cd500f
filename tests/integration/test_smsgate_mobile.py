"""SMSGate's mobile API (issue 19 item 4), driven by an SMSGate-app stand-in written from the
wire spec (tests/helpers/smsgate_app.py) against a real `smsgw serve`: registration (Basic,
private token, one-time code, re-registration), the SSE wake-up, pulls and state reports to
DELIVERED as smsgw's own WatchMessages sees them, inbound SMS over the app's signed webhook into
ListInbound, cancel, a lost stream recovered by re-pulling with nothing sent twice, presence,
and bad input."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from smsgw_client import Client
from smsgw_client.foreign import smsgate_encrypt

from tests.helpers.server import ServerProcess
from tests.helpers.smsgate_app import Behaviour, SmsgateApp, sign_webhook

_PRIVATE = "p" * 40
_WAIT = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "SMSGW_COMPAT__SMSGATE__LISTEN": "127.0.0.1:0", "SMSGW_COMPAT__SMSGATE__PHONE_LINGER": "1",
        "SMSGW_GATEWAY__MODE": "private", "SMSGW_GATEWAY__PRIVATE_TOKEN": _PRIVATE,
    }
    with ServerProcess(tmp_path_factory.mktemp("smsgate-mobile") / "data", env=env) as proc:
        yield proc


def _mobile(server: ServerProcess) -> str:
    return server.endpoints["smsgate"].replace("/3rdparty/v1", "/api/mobile/v1")


def _send(server: ServerProcess, auth: tuple[str, str], body: dict[str, object]) -> dict[str, object]:
    sent = httpx.post(f"{server.endpoints['smsgate']}/messages", auth=auth, json=body, timeout=10)
    assert sent.status_code == 202, sent.text
    return dict(sent.json())


def _state(server: ServerProcess, auth: tuple[str, str], message_id: str) -> dict[str, object]:
    got = httpx.get(f"{server.endpoints['smsgate']}/messages/{message_id}", auth=auth, timeout=10)
    assert got.status_code == 200, got.text
    return dict(got.json())


async def _until(predicate: object, what: str, timeout: float = _WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


def test_the_app_registers_wakes_pulls_reports_and_forwards_inbound(server: ServerProcess) -> None:
    """Private token registration makes a new account; SSE wakes the phone at once on a send;
    Processed -> Sent -> Delivered reach WatchMessages; an inbound SMS reaches ListInbound once."""
    admin = ("admin", server.admin_password)

    async def main() -> None:
        async with SmsgateApp(_mobile(server), private_token=_PRIVATE, behaviour=Behaviour(strip_plus=True, fail={"+15550008888": "no signal"})) as app:
            info = await app.register()
            assert info["login"] and info["password"] and len(info["password"]) == 14
            account = (str(app.login), str(app.password))
            app.start()
            await app.wait_until(lambda: app.connected, what="the SSE stream")
            await app.get_settings()
            hooks = await app.get_webhooks()
            assert {h["event"] for h in hooks} == {"sms:received", "sms:data-received"}
            device = await app.get_device()
            assert device["device"]["id"] == app.device_id and device["externalIp"] == "127.0.0.1"
            # Settings written through the third-party API reach the phone (SettingsUpdated).
            patched = await asyncio.to_thread(
                httpx.patch, f"{server.endpoints['smsgate']}/settings", auth=(str(app.login), str(app.password)),
                json={"ping": {"interval_seconds": 600}}, timeout=10)
            assert patched.status_code == 200, patched.text
            await app.wait_until(lambda: app.settings_fetches >= 2, what="SettingsUpdated")
            assert app.settings is not None and app.settings["ping"] == {"interval_seconds": 600}
            assert app.settings["gateway"]["notification_channel"] == "SSE_ONLY"

            with Client(server.grpc_target) as anonymous:
                token = await asyncio.to_thread(anonymous.issue_token, *account, scopes=["messages:read", "messages:list", "devices:list"])
            with Client(server.grpc_target, token.access_token) as client:
                [listed] = (await asyncio.to_thread(client.list_devices)).devices
                assert listed.id == app.device_id and listed.online  # the open stream counts

                # The wake-up: one MessageEnqueued per send, measured from the send's request.
                lags, ids = [], []
                for i in range(5):
                    before = len(app.events_of("MessageEnqueued"))
                    asked = time.monotonic()
                    sent = await asyncio.to_thread(
                        _send, server, account, {"phoneNumbers": [f"+1555000{i:04d}", "+15550009999"],
                                                 "textMessage": {"text": f"hello {i}"}})
                    await app.wait_until(lambda: len(app.events_of("MessageEnqueued")) > before, what="MessageEnqueued")
                    lags.append(app.events_of("MessageEnqueued")[before].at - asked)
                    ids.append(str(sent["id"]))
                    await app.wait_until(lambda: app.sent_sms[ids[-1]] == 1, what="sent")
                print(f"SSE wake after the send was asked for (its HTTP round trip included): median {statistics.median(lags) * 1000:.1f} ms")
                assert statistics.median(lags) < 0.1

                for message_id in ids:
                    await _until(lambda: _state(server, account, message_id)["state"] == "Delivered", "Delivered")
                got = await asyncio.to_thread(client.get_message, ids[0])
                assert [r.state for r in got.recipients] == [5, 5]  # DELIVERED, both (numbers reported without +)
                assert sorted(r.phone_number for r in got.recipients) == ["+15550000000", "+15550009999"]

                # One recipient of two fails: per recipient, by the number the phone reported.
                mixed = await asyncio.to_thread(
                    _send, server, account, {"phoneNumbers": ["+15550007777", "+15550008888"], "textMessage": {"text": "x"}})
                await _until(lambda: _state(server, account, str(mixed["id"]))["recipients"][1]["state"] == "Failed", "Failed")
                await _until(lambda: _state(server, account, str(mixed["id"]))["recipients"][0]["state"] == "Delivered", "Delivered")
                assert "no signal" in _state(server, account, str(mixed["id"]))["recipients"][1]["error"]

                # Sealed by SMSGate's client (text and numbers): opaque to smsgw, handed as is.
                sealed_number = smsgate_encrypt("secret", "+15550004321", iterations=1000)
                sealed = await asyncio.to_thread(
                    _send, server, account, {"phoneNumbers": [sealed_number], "isEncrypted": True,
                                             "textMessage": {"text": smsgate_encrypt("secret", "sealed", iterations=1000)}})
                await _until(lambda: _state(server, account, str(sealed["id"]))["state"] == "Delivered", "Delivered")
                [item] = [i for i in app.received if i["id"] == sealed["id"]]
                assert item["isEncrypted"] is True and item["phoneNumbers"] == [sealed_number]
                assert item["textMessage"]["text"].startswith("$aes-256-cbc/pbkdf2-sha1$")

                # Inbound: the app's webhook to smsgw's endpoint, signed with the key it imported.
                [attempt] = await app.receive_sms("+15557654321", "incoming text")
                assert attempt.status == 200, attempt
                again = await app._deliver(attempt.url, json.loads(attempt.body))  # the app's retry: same id
                assert again.status == 200
                inbound = (await asyncio.to_thread(client.list_inbound)).messages
                assert [(m.sender, m.text_message.text) for m in inbound] == [("+15557654321", "incoming text")]

                # An inbox refresh asks the phone to re-read its inbox (MessagesExportRequested).
                refresh = await asyncio.to_thread(
                    httpx.post, f"{server.endpoints['smsgate']}/inbox/refresh", auth=account, timeout=10,
                    json={"since": "2026-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z", "deviceId": app.device_id})
                assert refresh.status_code == 202 and refresh.json() == {}
                await app.wait_until(lambda: bool(app.export_requests), what="MessagesExportRequested")
                assert app.export_requests[0]["messageTypes"] == "SMS" and app.export_requests[0]["triggerWebhooks"] == "true"
            assert all(count == 1 for count in app.sent_sms.values()), app.sent_sms
            assert app.problems == [], app.problems
            scraped = (await asyncio.to_thread(httpx.get, server.endpoints["metrics"], timeout=10)).text
            assert "smsgw_smsgate_sessions 1.0" in scraped and "smsgw_smsgate_event_streams 1.0" in scraped
            pulled = re.search(r"^smsgw_smsgate_pulled_messages_total (\S+)", scraped, re.M)
            assert pulled is not None and float(pulled.group(1)) >= 6
            assert 'smsgw_smsgate_reports_total{state="Delivered"}' in scraped

    asyncio.run(main())


def test_cancel_a_lost_stream_and_presence(server: ServerProcess) -> None:
    """A message the phone holds unreported is cancelled: the next pull says Cancelling and the
    phone drops it. A dropped stream is recovered by the pull on reconnect; nothing is sent
    twice. With no stream and no request for `phone_linger`, the phone goes offline."""
    admin = ("admin", server.admin_password)

    async def main() -> None:
        async with SmsgateApp(_mobile(server), basic=admin, behaviour=Behaviour(report=False)) as app:
            await app.register()
            assert app.password is None  # an existing account: no password handed out
            app.start()
            await app.wait_until(lambda: app.connected, what="the SSE stream")
            held = await asyncio.to_thread(_send, server, admin, {"phoneNumbers": ["+15550001111"], "message": "legacy"})
            await app.wait_until(lambda: str(held["id"]) in app.messages, what="pulled")
            cancelled = httpx.delete(f"{server.endpoints['smsgate']}/messages/{held['id']}", auth=admin, timeout=10)
            assert cancelled.status_code == 200 and cancelled.json()["state"] == "Cancelled"
            await app.wait_until(lambda: str(held["id"]) in app.cancelled_locally, what="cancelled on the phone")

            app.behaviour = Behaviour()
            app.drop_stream(reconnect_after=0.5)
            await asyncio.sleep(0.05)
            missed = await asyncio.to_thread(_send, server, admin, {"phoneNumbers": ["+15550002222"], "textMessage": {"text": "x"}})
            await app.wait_until(lambda: app.sent_sms[str(missed["id"])] == 1, what="re-pulled after reconnect")
            await _until(lambda: _state(server, admin, str(missed["id"]))["state"] == "Delivered", "Delivered")
            for _ in range(3):  # pulls again hand over nothing new
                await app.pull()
            assert app.sent_sms[str(missed["id"])] == 1 and app.sent_sms[str(held["id"])] == 0
            assert app.problems == [], app.problems
            device_id = app.device_id
            await app.stop()
        with Client(server.grpc_target, server.token) as client:
            deadline = time.monotonic() + _WAIT
            while [d.online for d in client.list_devices().devices if d.id == device_id] != [False]:
                assert time.monotonic() < deadline, "the phone stayed online"
                await asyncio.sleep(0.1)

    asyncio.run(main())


def test_code_registration_password_change_and_re_registration(server: ServerProcess) -> None:
    """A second device by one-time code; the password changed from the app; a deleted device's
    token answers 401 and the app registers anew (a new account, as the real app does)."""

    async def main() -> None:
        async with SmsgateApp(_mobile(server), private_token=_PRIVATE) as first:
            await first.register()
            code = await first.get_login_code()
            await first.change_password(str(first.password), "a-new-password-14")
            async with SmsgateApp(_mobile(server), code=str(code["code"]), private_token=_PRIVATE) as second:
                info = await second.register()
                assert info["login"] == first.login and "password" not in info
                with Client(server.grpc_target) as anonymous:
                    pair = await asyncio.to_thread(anonymous.issue_token, str(first.login), "a-new-password-14", scopes=["devices:list", "devices:delete"])
                with Client(server.grpc_target, pair.access_token) as client:
                    devices = {d.id for d in (await asyncio.to_thread(client.list_devices)).devices}
                    assert devices == {first.device_id, second.device_id}
                    await asyncio.to_thread(client.delete_device, str(second.device_id))
                spent = httpx.post(f"{_mobile(server)}/device", headers={"authorization": f"Code {code['code']}"},
                                   json={"name": "again"}, timeout=10)
                assert spent.status_code == 401 and "message" in spent.json()
                old, login = second.device_id, second.login
                await second.register()  # PATCH /device -> 401 -> a new account with the private token
                assert second.reregistered_anonymously and second.device_id != old and second.login != login
                assert second.password and first.problems == second.problems == []

    asyncio.run(main())


def test_bad_input_is_refused_and_stores_nothing(server: ServerProcess) -> None:
    base = _mobile(server)
    admin = ("admin", server.admin_password)
    reg = httpx.post(f"{base}/device", auth=admin, json={"name": "bad input"}, timeout=10)
    assert reg.status_code == 201
    device_id, token = reg.json()["id"], reg.json()["token"]
    bearer = {"authorization": f"Bearer {token}"}

    def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{base}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]

    for body, field in (
        (b"{nope", "body"),
        ({"id": "x", "state": "Sent"}, "array"),
        ([{"id": 5, "state": "Sent"}], "[0].id"),
        ([{"id": "x", "state": "Lost"}], "[0].state"),
        ([{"id": "x", "state": "Sent", "recipients": [{"phoneNumber": 1, "state": "Sent"}]}], "phoneNumber"),
        ([{"id": "x", "state": "Sent", "states": {"Sent": "yesterday"}}], "states.Sent"),
    ):
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = call("PATCH", "/message", headers=bearer, **kw)
        assert answer.status_code == 400 and field in answer.json()["message"], (body, answer.text)
    assert call("PATCH", "/message", headers=bearer, content=b"[" + b" " * (2 << 20) + b"]").status_code == 400
    assert call("GET", "/message?order=random", headers=bearer).status_code == 400
    assert call("GET", "/message", headers={"authorization": "Bearer nope"}).status_code == 401
    assert call("GET", "/message").status_code == 401
    assert call("POST", "/device", json={"name": "x"}).status_code == 401  # private mode: no sign-up
    assert call("POST", "/device", headers={"authorization": "Bearer wrong"}, json={}).status_code == 401
    wrong_sims = call("POST", "/device", auth=admin, json={"simCards": [{"simNumber": "one"}]})
    assert wrong_sims.status_code == 400 and "simCards[0].simNumber" in wrong_sims.json()["message"]
    assert call("PATCH", "/device", headers=bearer, json={"id": "someone-else"}).status_code == 403
    short = call("PATCH", "/user/password", headers=bearer, json={"currentPassword": "x", "newPassword": "short"})
    assert short.status_code == 400 and "newPassword" in short.json()["message"]

    # Another owner's message: reports on it change nothing (unknown ids are ignored: 204).
    other = _send(server, admin, {"phoneNumbers": ["+15550003333"], "textMessage": {"text": "not yours"},
                                  "deviceId": device_id})
    theirs = httpx.post(f"{base}/device", headers={"authorization": f"Bearer {_PRIVATE}"}, json={}, timeout=10).json()
    stolen = call("PATCH", "/message", headers={"authorization": f"Bearer {theirs['token']}"},
                  json=[{"id": other["id"], "state": "Delivered"}])
    assert stolen.status_code == 204
    assert _state(server, admin, str(other["id"]))["state"] == "Pending"

    # Inbound: a bad signature, a stale timestamp, an unknown device: refused, nothing stored.
    envelope = json.dumps({"id": "a" * 21, "webhookId": "smsgw-sms-received", "event": "sms:received",
                           "deviceId": device_id, "payload": {"messageId": "m1", "message": "forged",
                                                              "sender": "+15550004444"}}).encode()
    now = str(int(time.time()))
    key = httpx.get(f"{base}/settings", headers=bearer, timeout=10).json()["webhooks"]["signing_key"]
    for headers, path in (
        ({"x-timestamp": now, "x-signature": sign_webhook("wrong-key", envelope, now)}, f"/inbound/{device_id}"),
        ({"x-timestamp": "1000", "x-signature": sign_webhook(key, envelope, "1000")}, f"/inbound/{device_id}"),
        ({"x-timestamp": now, "x-signature": sign_webhook(key, envelope, now)}, "/inbound/no-such-device"),
    ):
        assert call("POST", path, headers=headers, content=envelope).status_code == 401
    bad_payload = json.dumps({"event": "sms:received", "payload": {"messageId": "m2", "sender": 5}}).encode()
    refused = call("POST", f"/inbound/{device_id}", content=bad_payload,
                   headers={"x-timestamp": now, "x-signature": sign_webhook(key, bad_payload, now)})
    assert refused.status_code == 400 and "payload.sender" in refused.json()["message"]
    with Client(server.grpc_target, server.token) as client:
        assert [m for m in client.list_inbound().messages if m.device_id == device_id] == []


def test_the_scheduler_paces_and_orders_what_the_app_pulls(server: ServerProcess) -> None:
    """The phone's pacing (one SMS a second here) and priority hold on this API too: the higher
    priority message comes first, the next one only when pacing lets it go, on an SSE wake-up
    at that time (the app never polls)."""
    admin = ("admin", server.admin_password)

    async def main() -> None:
        async with SmsgateApp(_mobile(server), basic=admin) as app:
            await app.register()
            with Client(server.grpc_target, server.token) as client:
                settings = await asyncio.to_thread(client.get_device_settings, str(app.device_id))
                settings.default_pacing.min_interval_ms = 1000
                await asyncio.to_thread(client.update_device_settings, settings)
            low = await asyncio.to_thread(_send, server, admin, {"phoneNumbers": ["+15550005555"], "textMessage": {"text": "low"},
                                                                 "deviceId": app.device_id})
            high = await asyncio.to_thread(_send, server, admin, {"phoneNumbers": ["+15550006666"], "textMessage": {"text": "high"},
                                                                  "deviceId": app.device_id, "priority": 50})
            app.start()
            await app.wait_until(lambda: app.sent_sms[str(low["id"])] == 1, timeout=_WAIT, what="both sent")
            handed = [ids for ids in (p.ids for p in app.pulls) if ids]
            assert handed[0] == [high["id"]] and [low["id"]] in handed[1:], handed
            assert len(app.events_of("MessageEnqueued")) >= 1  # the paced one came on a wake-up
            assert app.problems == [], app.problems

    asyncio.run(main())


def test_the_app_over_https(tmp_path: Path) -> None:
    """The app's release build refuses cleartext: with gRPC's certificate the front serves
    HTTPS, and the app, trusting the CA (a user-installed CA on the phone), registers, streams,
    and sends a message over it."""
    from tests.helpers.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    env = {
        "SMSGW_COMPAT__SMSGATE__LISTEN": "127.0.0.1:0",
        "SMSGW_GRPC__TLS_CERT_FILE": str(pki.server_cert), "SMSGW_GRPC__TLS_KEY_FILE": str(pki.server_key),
    }
    with ServerProcess(tmp_path / "data", env=env) as server:
        base = server.endpoints["smsgate"]
        assert base.startswith("https://")
        admin = ("admin", server.admin_password)
        trust = ssl.create_default_context(cafile=str(pki.ca_cert))

        async def main() -> None:
            async with SmsgateApp(base.replace("/3rdparty/v1", "/api/mobile/v1"), basic=admin, verify=trust) as app:
                await app.register()
                app.start()
                await app.wait_until(lambda: app.connected, what="the SSE stream over TLS")
                sent = await asyncio.to_thread(lambda: httpx.post(
                    f"{base}/messages", auth=admin, verify=trust, timeout=10,
                    json={"phoneNumbers": ["+15550001234"], "textMessage": {"text": "over tls"}}).json())
                await app.wait_until(lambda: app.sent_sms[sent["id"]] == 1, what="sent over TLS")
                assert app.problems == [], app.problems

        asyncio.run(main())


def test_a_one_time_password_reaches_the_app_opened(server: ServerProcess) -> None:
    """An OTP's SMS is stored sealed (gateway.otp); the SMSGate app is handed the plain text,
    whose code approves the verification."""
    admin = ("admin", server.admin_password)

    async def main() -> None:
        async with SmsgateApp(_mobile(server), basic=admin) as app:
            await app.register()
            app.start()
            with Client(server.grpc_target, server.token) as client:
                started = await asyncio.to_thread(client.otp.start, "+15550107777", device_id=str(app.device_id))
                await app.wait_until(lambda: any(i["id"] == started.message_id for i in app.received), what="pulled")
                [item] = [i for i in app.received if i["id"] == started.message_id]
                code = re.search(r"\d{6}", item["textMessage"]["text"])
                assert code is not None and item["textMessage"]["text"] == f"Your code is {code.group(0)}"
                assert "isEncrypted" not in item
                checked = await asyncio.to_thread(client.otp.check, started.id, code.group(0))
                assert checked.result == 1  # APPROVED
            assert app.problems == [], app.problems

    asyncio.run(main())
