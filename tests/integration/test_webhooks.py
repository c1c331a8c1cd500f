"""Webhooks end to end: the real `smsgw serve`, the real client, a phone on a real WebSocket and a
real HTTP receiver on 127.0.0.1 that verifies every request with the `standardwebhooks` library.

The receiver is on loopback over plain http, so these servers run in private mode with the
SSRF guard lifted (RELIABILITY 14: only a private-mode server may); the public-mode tests
show the guard refusing the same targets."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from smsgw.v1 import webhooks_pb2
from smsgw_client import Client, InvalidArgument, NotFound

from device_bridge.protocol import AckReceived, InboundSms, ReceiptState
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.postgres import BACKENDS
from tests.helpers.server import LENIENT_LIMITS, PRIVATE_TOKEN, SMSGW, ServerProcess, private_webhook_env, serve_on
from tests.helpers.webhook_receiver import Receiver

@pytest.fixture(params=BACKENDS)
def private_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """This suite runs on SQLite and on PostgreSQL."""
    with serve_on(request.param, tmp_path / "data", private_webhook_env()) as proc:
        yield proc


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(default=204) as r:
        yield r


def _register(client: Client, receiver: Receiver, events: list[str]) -> webhooks_pb2.Webhook:
    created = client.webhooks.create(receiver.url, events)
    receiver.secret = created.secret
    return created.webhook


def _phone(server: ServerProcess) -> RawPhone:
    phone, _ = pair_raw(server.grpc_target, server.token, server.device_url, private_token=PRIVATE_TOKEN)
    return phone


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://10.0.0.5/hook", "https://192.168.1.10/hook",
     "https://169.254.169.254/latest/meta-data/", "https://[::1]/hook", "https://localhost/hook"],
)
def test_public_mode_refuses_ssrf_targets(shared_server: ServerProcess, url: str) -> None:
    with Client(shared_server.grpc_target, shared_server.token) as client:
        with pytest.raises(InvalidArgument) as caught:
            client.webhooks.create(url, ["sms:received"])
        assert [field for field, _ in caught.value.field_violations] == ["url"]
        assert client.webhooks.list().webhooks == []


def test_bad_requests_name_the_field(shared_server: ServerProcess) -> None:
    with Client(shared_server.grpc_target, shared_server.token) as client:
        for events, field in (([], "events"), (["sms:received", "sms:nope"], "events[1]")):
            with pytest.raises(InvalidArgument) as caught:
                client.webhooks.create("https://example.com/hook", events)
            assert [f for f, _ in caught.value.field_violations] == [field]
        with pytest.raises(InvalidArgument) as caught:
            client.webhooks.deliveries("")
        assert [f for f, _ in caught.value.field_violations] == ["webhook_id"]
        with pytest.raises(NotFound):
            client.webhooks.test("01J00000000000000000000000")


def test_public_mode_cannot_lift_the_guard(tmp_path: Path) -> None:
    env = {**os.environ, **LENIENT_LIMITS, "SMSGW_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true"}
    done = subprocess.run(
        [SMSGW, "serve", "--data-dir", str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0",
         "--device-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 2
    assert "webhooks.allow_private_targets" in done.stderr and "private" in done.stderr


def test_create_test_list_and_delete(private_server: ServerProcess, receiver: Receiver) -> None:
    with Client(private_server.grpc_target, private_server.token) as client:
        created = client.webhooks.create(receiver.url, ["sms:received", "sms:sent", "sms:received"])
        assert created.secret.startswith("whsec_")
        receiver.secret = created.secret
        webhook = created.webhook
        assert list(webhook.events) == ["sms:received", "sms:sent"] and webhook.state == webhooks_pb2.ACTIVE

        attempt = client.webhooks.test(webhook.id)
        assert attempt.status_code == 204 and attempt.error == "" and attempt.attempt == 1
        [ping] = receiver.received
        assert ping.verified and ping.id == attempt.delivery_id
        assert ping.event["event"] == "system:ping" and ping.event["id"] == ping.id
        assert ping.headers["content-type"] == "application/json"

        [listed] = client.webhooks.list().webhooks
        assert listed.id == webhook.id and listed.url == receiver.url
        assert "secret" not in str(listed), "the secret is shown only at creation"
        [delivery] = client.webhooks.deliveries(webhook.id).deliveries
        assert delivery.id == ping.id and delivery.state == webhooks_pb2.DELIVERY_SUCCEEDED
        assert [a.status_code for a in delivery.attempt_log] == [204]

        # A receiver that is down: the test reports it, and nothing is retried.
        receiver.script([503])
        failed = client.webhooks.test(webhook.id)
        assert failed.status_code == 503 and failed.error == "HTTP 503"

        rotated = client.webhooks.rotate_secret(webhook.id)
        assert rotated.secret != created.secret
        client.webhooks.test(webhook.id)
        last = receiver.received[-1]
        assert last.verified and len(last.headers["webhook-signature"].split()) == 2  # old and new sign
        receiver.secret = rotated.secret
        assert receiver._verify(last.body, last.headers)

        # Three pings so far, newest first, two to a page.
        first = client.webhooks.deliveries(webhook.id, page_size=2)
        second = client.webhooks.deliveries(webhook.id, page_size=2, page_token=first.next_page_token)
        ids = [d.id for d in (*first.deliveries, *second.deliveries)]
        assert len(ids) == 3 and ids == sorted(ids, reverse=True) and second.next_page_token == ""
        assert [d.id for d in client.webhooks.deliveries(webhook.id, state=webhooks_pb2.DELIVERY_FAILED).deliveries] == [
            failed.delivery_id
        ]
        for bad in ({"page_token": "bm9wZQ=="}, {"page_size": 501}, {"state": 9}):
            with pytest.raises(InvalidArgument) as caught:
                client.webhooks.deliveries(webhook.id, **bad)  # type: ignore[arg-type]
            assert [f for f, _ in caught.value.field_violations] == list(bad)

        # Another account sees none of it and reaches none of it.
        with Client(private_server.grpc_target, _second_account(private_server)) as other:
            assert other.webhooks.list().webhooks == []
            for call in (other.webhooks.test, other.webhooks.delete, other.webhooks.deliveries, other.webhooks.enable):
                with pytest.raises(NotFound):
                    call(webhook.id)
            with pytest.raises(NotFound):
                other.webhooks.replay(ping.id)

        client.webhooks.delete(webhook.id)
        assert client.webhooks.list().webhooks == []
        with pytest.raises(NotFound):
            client.webhooks.delete(webhook.id)


def test_message_and_device_events_arrive_signed_once_each(private_server: ServerProcess, receiver: Receiver) -> None:
    server = private_server
    with Client(server.grpc_target, server.token) as client:
        webhook = _register(client, receiver, ["sms:sent", "sms:delivered", "sms:failed", "device:online", "device:offline"])
        phone = _phone(server)
        receiver.wait_for(lambda got: any(r.event["event"] == "device:online" for r in got))
        sent = client.send_message(["+15550001111", "+15550002222"], "webhook me")
        deliver = phone.next_deliver().delivery
        phone.receipt(sent.id, ReceiptState.ACCEPTED, attempt=deliver.attempt)
        phone.receipt(sent.id, ReceiptState.SENT, 0, attempt=deliver.attempt)
        phone.receipt(sent.id, ReceiptState.DELIVERED, 0, attempt=deliver.attempt)
        phone.receipt(sent.id, ReceiptState.DELIVERED, 0, attempt=deliver.attempt)  # a repeat changes nothing
        phone.receipt(sent.id, ReceiptState.FAILED, 1, "carrier said no", attempt=deliver.attempt)
        got = receiver.wait_for(lambda got: len(got) >= 4)
        phone.ws.close()
        got = receiver.wait_for(lambda got: any(r.event["event"] == "device:offline" for r in got))
        assert all(r.verified for r in got)
        assert len({r.id for r in got}) == len(got), "each event once"
        by_event = {r.event["event"]: r.event for r in got}
        assert sorted(by_event) == ["device:offline", "device:online", "sms:delivered", "sms:failed", "sms:sent"]
        assert len([r for r in got if r.event["event"] == "sms:delivered"]) == 1
        device_id = phone.welcome.device_id
        assert all(e["device_id"] == device_id for e in by_event.values())
        sms = by_event["sms:sent"]
        assert sms["recipient_index"] == 0 and sms["phone_number"] == "+15550001111" and sms["state"] == "SENT"
        assert sms["message"]["id"] == sent.id and sms["message"]["text_message"]["text"] == "webhook me"
        assert by_event["sms:failed"]["recipient_index"] == 1 and "carrier said no" in by_event["sms:failed"]["error"]
        assert by_event["device:online"]["device"]["online"] is True
        assert _settled(client, webhook.id).pending_deliveries == 0


def test_an_inbound_sms_sent_twice_is_stored_and_delivered_once(private_server: ServerProcess, receiver: Receiver) -> None:
    """The phone's session drops before it reads the Ack (lost ack): it re-sends the SMS with
    the same phone-made id on its next session. One stored copy, one sms:received."""
    server = private_server
    with Client(server.grpc_target, server.token) as client:
        _register(client, receiver, ["sms:received", "sms:data-received"])
        phone = _phone(server)
        sms = InboundSms(event_id=1, id="phone-sms-1", sender="+15557654321", text="STOP", sim_number=1)
        phone.proto.send_inbound(sms)
        phone.flush()
        receiver.wait_for(lambda got: len(got) == 1)
        phone.ws.close()  # the Ack, if it came, is never read
        again = _reconnect(server, phone)
        again.proto.send_inbound(sms)  # the same SMS, as the phone still holds it
        again.proto.send_inbound(InboundSms(event_id=2, id="phone-sms-2", sender="12345", data=b"\x01\x02", port=8080))
        again.flush()
        assert isinstance(again.next_event(), AckReceived)
        got = receiver.wait_for(lambda got: len(got) == 2)
        assert [r.event["event"] for r in got] == ["sms:received", "sms:data-received"]
        assert all(r.verified for r in got)
        inbound = got[0].event["inbound"]
        assert inbound["sender"] == "+15557654321" and inbound["text_message"]["text"] == "STOP"
        assert got[1].event["inbound"]["data_message"] == {"data": "AQI=", "port": 8080}
        assert [m.sender for m in client.list_inbound().messages] == ["12345", "+15557654321"]
        again.ws.close()
        assert len(receiver.received) == 2


def test_retried_with_the_same_id_then_failing_then_enabled(private_server: ServerProcess, receiver: Receiver) -> None:
    server = private_server
    with Client(server.grpc_target, server.token) as client:
        webhook = _register(client, receiver, ["device:online"])
        receiver.default = 500
        phone = _phone(server)
        got = receiver.wait_for(lambda got: len(got) == 6)  # 1 + the 5 configured retries
        assert len({r.id for r in got}) == 1 and all(r.verified for r in got)
        listed = _settled(client, webhook.id, attempts=6)
        assert listed.state == webhooks_pb2.FAILING, (listed, client.webhooks.deliveries(webhook.id), len(receiver.received))
        assert "HTTP 500" in listed.disabled_reason
        [delivery] = client.webhooks.deliveries(webhook.id, state=webhooks_pb2.DELIVERY_FAILED).deliveries
        assert [a.status_code for a in delivery.attempt_log] == [500] * 6
        assert all(a.latency_ms >= 0 for a in delivery.attempt_log)

        # Fixed: replay it by hand; the same webhook-id arrives once more and succeeds.
        receiver.default = 204
        client.webhooks.replay(delivery.id)
        again = receiver.wait_for(lambda got: len(got) == 7)[-1]
        assert again.id == got[0].id and again.answered == 204
        _settled(client, webhook.id)
        [replayed] = client.webhooks.deliveries(webhook.id).deliveries
        assert replayed.state == webhooks_pb2.DELIVERY_SUCCEEDED and replayed.attempts == 7
        assert [a.attempt for a in replayed.attempt_log] == list(range(1, 8))
        phone.ws.close()


def test_restart_mid_retry_delivers_once_with_the_same_id(tmp_path: Path, receiver: Receiver) -> None:
    """RELIABILITY 3: stopped (SIGTERM, then SIGKILL) while a delivery waits for its retry,
    the server sends it after restart with the same webhook-id; the receiver, deduping by id,
    handles each event once."""
    server = ServerProcess(tmp_path / "data", env=private_webhook_env(SMSGW_WEBHOOKS__RETRY_DELAYS="3,3,3"))
    server.start()
    try:
        with Client(server.grpc_target, server.token) as client:
            _register(client, receiver, ["device:online"])
        receiver.script([500])
        phone = _phone(server)
        first = receiver.wait_for(lambda got: len(got) == 1)[0]
        phone.ws.close()
        server.stop()
        server.start(same_ports=True)
        got = receiver.wait_for(lambda got: len(got) == 2)
        assert got[1].id == first.id and got[1].answered == 204 and got[1].verified
        assert int(got[1].headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"]), "a new timestamp"

        # kill -9 while the receiver holds a request open: sent again, same id, after restart.
        receiver.hang_for = 3.0
        receiver.script(["hang"])
        again = _reconnect(server, phone)
        held = receiver.wait_for(lambda got: len(got) == 3)[2]
        assert held.event["event"] == "device:online"
        server.kill()
        server.start(same_ports=True)
        again.ws.close()
        got = receiver.wait_for(lambda got: any(r.id == held.id and r.answered == 204 for r in got[3:]), timeout=30)
        successes: dict[str, int] = {}
        for r in got:
            if r.answered in (204, "hang"):
                successes[r.id] = successes.get(r.id, 0) + 1
        assert successes[first.id] == 1
        # The held request may have been answered before the kill; a receiver deduping by id
        # (smsgw_client.WebhookReceiver) still handles the event once.
        assert successes[held.id] in (1, 2)
    finally:
        server.stop()


def _second_account(server: ServerProcess) -> str:
    """An access token of a new account `bob` (private mode: made with `smsgw users add`)."""
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [SMSGW, "users", "add", "bob", "--password-stdin", "--data-dir", str(server.data_dir)],
        input=password + "\n", capture_output=True, text=True, timeout=60, check=True, env=server.env,
    )
    with Client(server.grpc_target) as anonymous:
        return anonymous.issue_token("bob", password).access_token


def _settled(client: Client, webhook_id: str, attempts: int = 0) -> webhooks_pb2.Webhook:
    """The webhook once the server recorded the answers the receiver already gave: the
    receiver sees a request before the server records its answer, and a delivery whose last
    attempt is in flight no longer counts as pending, so wait until no delivery is pending
    and at least `attempts` attempts are recorded (bounded wait). The attempts are read before
    the webhook: an attempt and the webhook state it causes commit together, so the webhook
    read after them shows that state (read the other way round, the webhook could be from
    before the last attempt's commit and its attempts from after)."""
    for _ in range(200):
        recorded = sum(len(d.attempt_log) for d in client.webhooks.deliveries(webhook_id).deliveries) if attempts else 0
        [webhook] = [w for w in client.webhooks.list().webhooks if w.id == webhook_id]
        if webhook.pending_deliveries == 0 and recorded >= attempts:
            break
        time.sleep(0.05)
    return webhook


def _reconnect(server: ServerProcess, phone: RawPhone) -> RawPhone:
    """The same phone again, with the credentials from its pairing Welcome."""
    creds = phone.welcome.credentials
    assert creds is not None
    again = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), phone.proto.encoding, 4)
    again.welcome = phone.welcome
    return again


def test_the_listen_command_verifies_and_prints_events(private_server: ServerProcess) -> None:
    """`smsgw webhooks listen`, the local receiver for trying webhooks out: 204 and the event
    for a signed request, 400 for anything else."""
    import json
    import socket

    import httpx

    with socket.socket() as probe:  # a free port to name in the webhook before the listener starts
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(private_server.grpc_target, private_server.token) as client:
        created = client.webhooks.create(f"http://127.0.0.1:{port}/", ["system:ping"])
        env = {**os.environ, "HOOK_SECRET": created.secret}
        listener = subprocess.Popen(
            [SMSGW, "webhooks", "listen", "--listen", f"127.0.0.1:{port}", "--secret-env", "HOOK_SECRET", "--duration", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            assert listener.stderr is not None
            banner = listener.stderr.readline()
            if "listening on" not in banner:  # say why (the probed port was taken meanwhile, say)
                listener.terminate()
                raise AssertionError(banner + listener.communicate(timeout=10)[1])
            attempt = client.webhooks.test(created.webhook.id)
            assert attempt.status_code == 204
            assert httpx.post(f"http://127.0.0.1:{port}/", content=b"{}", headers={"webhook-id": "x"}).status_code == 400
            assert listener.stdout is not None
            event = json.loads(listener.stdout.readline())
            assert event["event"] == "system:ping" and event["id"] == attempt.delivery_id
        finally:
            listener.terminate()
            listener.communicate(timeout=10)  # also closes the pipes
