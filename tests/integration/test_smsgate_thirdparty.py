"""SMSGate's third-party API (issue 19, first part), driven by SMSGate's official Python client
(`android-sms-gateway`, pinned) against a real `smsgw serve` with reference phones: send (text,
data, several recipients, priority, ttl), states from Pending to Delivered, list with paging
and X-Total-Count, cancel, devices, health; Basic and Bearer auth; and bad input answered with
SMSGate's status codes and `{"message"}` bodies, nothing stored."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from android_sms_gateway import APIClient, DataMessage, Message, MessagesQueryFilter, QueryPagination, TextMessage
from android_sms_gateway.enums import ProcessState
from smsgw_client import Client

from tests.helpers.phones import start_phones
from tests.helpers.server import ServerProcess

_WAIT = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", env={"SMSGW_COMPAT__SMSGATE__LISTEN": "127.0.0.1:0"}) as proc:
        yield proc


def _client(server: ServerProcess, *, token: str | None = None) -> APIClient:
    base = server.endpoints["smsgate"]
    if token is not None:
        return APIClient(None, token, base_url=base)
    return APIClient("admin", server.admin_password, base_url=base)


def _until_state(api: APIClient, message_id: str, state: ProcessState) -> object:
    deadline = time.monotonic() + _WAIT
    while True:
        got = api.get_state(message_id)
        if got.state is state:
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_the_official_client_sends_and_follows_messages_to_delivered(server: ServerProcess) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1)
            await trio.to_thread.run_sync(_drive, server, phone.device_id)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _drive(server: ServerProcess, device_id: str) -> None:
    with _client(server) as api:
        health = api.health_check()
        assert health.status.value == "pass"
        assert {api.liveness_check().status.value, api.readiness_check().status.value,
                api.startup_check().status.value} == {"pass"}
        [dev] = api.list_devices()
        assert dev.id == device_id and dev.last_seen is not None

        sent = api.send(Message(phone_numbers=["+15550001234", "+15550001235"], text_message=TextMessage("hello"),
                                priority=100, ttl=3600, id="client-key-1"))
        assert sent.state is ProcessState.Pending and [r.phone_number for r in sent.recipients] == [
            "+15550001234", "+15550001235"]
        done = _until_state(api, sent.id, ProcessState.Delivered)
        assert all(r.state is ProcessState.Delivered for r in done.recipients)  # type: ignore[attr-defined]
        assert "Delivered" in done.states and "Pending" in done.states  # type: ignore[attr-defined]
        again = api.send(Message(phone_numbers=["+15550001234", "+15550001235"], text_message=TextMessage("hello"),
                                 priority=100, ttl=3600, id="client-key-1"))
        assert again.id == sent.id  # the same id: one message (idempotent, as SMSGate's id is)
        late = httpx.delete(f"{server.endpoints['smsgate']}/messages/{sent.id}", headers=api.headers, timeout=10)
        assert late.status_code == 409 and late.json() == {"message": "message is not pending"}

        data = api.send(Message(phone_numbers=["+15550001236"], data_message=DataMessage(
            base64.b64encode(b"\x01\x02").decode(), 1234), with_delivery_report=False))
        _until_state(api, data.id, ProcessState.Sent)

        listed = api.get_messages(pagination=QueryPagination(limit=1, offset=0))
        assert [m.id for m in listed] == [data.id]  # newest first
        older = api.get_messages(pagination=QueryPagination(limit=1, offset=1))
        assert [m.id for m in older] == [sent.id]
        delivered = api.get_messages(query=MessagesQueryFilter(state="Delivered"))
        assert [m.id for m in delivered] == [sent.id]
        raw = httpx.get(f"{server.endpoints['smsgate']}/messages?limit=1", headers=api.headers, timeout=10)
        assert raw.headers["X-Total-Count"] == "2" and len(raw.json()) == 1

        # validUntil as the client writes it: Python's isoformat() of a naive time (read as UTC).
        until = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(hours=2)
        bounded = api.send(Message(phone_numbers=["+15550001237"], text_message=TextMessage("bounded"), valid_until=until))
        with Client(server.grpc_target, server.token) as grpc_client:
            stored = grpc_client.get_message(bounded.id)
        assert stored.valid_until.ToDatetime() == until
        _until_state(api, bounded.id, ProcessState.Delivered)


def test_cancel_bearer_tokens_scopes_and_errors(server: ServerProcess) -> None:
    base = server.endpoints["smsgate"]
    with Client(server.grpc_target) as anonymous:
        reader = anonymous.issue_token("admin", server.admin_password, scopes=["messages:read"], access_ttl=600)
    with _client(server) as api:
        # No phone: the message waits Pending, and can be cancelled.
        pending = api.send(Message(phone_numbers=["+15550001234"], text_message=TextMessage("cancel me")))
        api.cancel_message(pending.id)
        assert api.get_state(pending.id).state is ProcessState.Cancelled
        headers = api.headers
    with _client(server, token=reader.access_token) as bearer:
        assert bearer.get_state(pending.id).id == pending.id  # messages:read is enough
        refused = httpx.post(f"{base}/messages", headers=bearer.headers, timeout=10,
                             json={"phoneNumbers": ["+15550001234"], "textMessage": {"text": "x"}})
        assert refused.status_code == 403 and refused.json() == {"message": "scope required: messages:send"}

    def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{base}{path}", headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]

    for body, field in (
        (b"{not json", "body"),
        ({"phoneNumbers": [], "textMessage": {"text": "x"}}, "phoneNumbers"),
        ({"phoneNumbers": ["+15550001234"]}, "textMessage"),
        ({"phoneNumbers": ["+15550001234"], "textMessage": {"text": 5}}, "textMessage.text"),
        ({"phoneNumbers": ["+15550001234"], "textMessage": {"text": "x"}, "priority": 500}, "priority"),
        ({"phoneNumbers": ["not a number"], "textMessage": {"text": "x"}}, "phoneNumbers[0]"),
        ({"phoneNumbers": ["+15550001234"], "textMessage": {"text": "x"}, "ttl": 60, "validUntil": "2030-01-01T00:00:00Z"}, "ttl"),
    ):
        sent = call("POST", "/messages", content=body) if isinstance(body, bytes) else call("POST", "/messages", json=body)
        assert sent.status_code == 400 and field in sent.json()["message"], (body, sent.text)
    assert call("GET", "/messages/no-such-id").status_code == 404
    assert call("DELETE", "/messages/no-such-id").status_code == 404
    repeated = call("DELETE", f"/messages/{pending.id}")  # smsgw's cancel is idempotent (docs/smsgate.md)
    assert repeated.status_code == 200 and repeated.json()["state"] == "Cancelled"
    assert call("GET", "/messages?limit=500").status_code == 400
    assert httpx.get(f"{base}/messages", timeout=10).status_code == 401
    wrong = httpx.get(f"{base}/messages", auth=("admin", "wrong"), timeout=10)
    assert wrong.status_code == 401 and "message" in wrong.json()
    assert call("POST", "/messages", content=b"x" * (2 << 20)).status_code == 400
    with Client(server.grpc_target, server.token) as client:
        assert [m.id for m in client.list_messages().messages] == [pending.id]  # nothing else stored


def test_tokens_through_the_official_client(server: ServerProcess) -> None:
    """POST /auth/token with Basic, then the token alone: its scopes, refresh (the pair
    rotates), revoke; the answer carries both spellings (the Python client reads camelCase)."""
    from android_sms_gateway import TokenRequest

    with _client(server) as api:
        issued = api.generate_token(TokenRequest(scopes=["messages:list", "devices:list"], ttl=600))
        assert issued.token_type == "Bearer" and issued.access_token and issued.refresh_token
    with _client(server, token=issued.access_token) as bearer:
        assert bearer.list_devices() == []
        assert bearer.get_messages() == []
        with pytest.raises(Exception) as refused:
            bearer.send(Message(phone_numbers=["+15550001234"], text_message=TextMessage("x")))
        assert getattr(refused.value, "status_code", None) == 403
        with pytest.raises(Exception) as escalate:  # tokens:manage is not among its scopes
            bearer.generate_token(TokenRequest(scopes=["messages:send"]))
        assert getattr(escalate.value, "status_code", None) == 403
        renewed = bearer.refresh_token(issued.refresh_token)
        assert renewed.access_token != issued.access_token
    with _client(server) as api:
        api.revoke_token(renewed.id)
    raw = httpx.get(f"{server.endpoints['smsgate']}/devices", timeout=10,
                    headers={"authorization": f"Bearer {renewed.access_token}"})
    assert raw.status_code == 401 and "message" in raw.json()
    snake = httpx.post(f"{server.endpoints['smsgate']}/auth/token", auth=("admin", server.admin_password), timeout=10,
                       json={"scopes": ["messages:read"]})
    assert snake.status_code == 201 and {"access_token", "token_type", "expires_at", "accessToken"} <= snake.json().keys()
    assert snake.json()["expires_at"].endswith("Z")


NODE = shutil.which("node")
if NODE is None and os.environ.get("REQUIRE_NODE_TESTS"):
    raise RuntimeError("REQUIRE_NODE_TESTS is set but `node` is not on the PATH")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_official_typescript_client(server: ServerProcess) -> None:
    """android-sms-gateway 3.0.0 from npm (clients/node's dev dependency): health, devices, a
    send with its legacy `message` body to Delivered through the singular `/message` paths, and
    an empty text refused (clients/node/harness/smsgate-ts.js)."""
    harness = Path(__file__).resolve().parents[2] / "clients" / "node" / "harness" / "smsgate-ts.js"

    def run() -> dict[str, object]:
        done = subprocess.run(
            [str(NODE), str(harness)], capture_output=True, text=True, timeout=60,
            input=json.dumps({"base": server.endpoints["smsgate"], "username": "admin",
                              "password": server.admin_password, "phone": "+15550001234"}),
        )
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            [phone] = await start_phones(nursery, server.grpc_target, server.token, server.device_url, 1)
            out = await trio.to_thread.run_sync(run)
            assert out["health"]["status"] == "pass"  # type: ignore[index]
            assert [d["id"] for d in out["devices"]] == [phone.device_id]  # type: ignore[union-attr]
            assert out["sent"]["state"] == "Pending" and out["state"]["state"] == "Delivered"  # type: ignore[index]
            assert out["state"]["recipients"] == [{"phoneNumber": "+15550001234", "state": "Delivered"}]  # type: ignore[index]
            assert "HTTP error 400" in str(out["refused"]) and "message" in str(out["refused"])
            nursery.cancel_scope.cancel()

    trio.run(main)
