"""The FCM HTTP v1 sender against the loopback stand-in (issue 17): the real JWT grant, the
real HTTP exchange and FCM's error bodies, with a recording `sleep` so no test waits out a
backoff."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.push.fcm import FcmConfigError, FcmSender, PushOutcome, WakeResult
from gateway.push.standin import FcmStandIn

TOKEN = "fcm-registration-token-of-phone-1"


class Sleeps:
    """A `sleep` that records the delays it was asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def standin() -> Iterator[FcmStandIn]:
    with FcmStandIn(project_id="smsgw-test") as s:
        yield s


@pytest.fixture
def key_file(standin: FcmStandIn, tmp_path: Path) -> Path:
    return standin.write_service_account(tmp_path / "fcm-service-account.json")


def wake(key_file: Path, standin: FcmStandIn, sleeps: Sleeps, *, times: int = 1, **options: Any) -> list[WakeResult]:
    """`times` wake-ups in turn through one sender."""

    async def run() -> list[WakeResult]:
        sender = FcmSender(key_file, base_url=standin.base_url, sleep=sleeps, **options)
        try:
            return [await sender.wake(TOKEN, "device-1") for _ in range(times)]
        finally:
            await sender.aclose()

    return asyncio.run(run())


def test_a_wake_is_sent_with_exactly_the_wake_shape(standin: FcmStandIn, key_file: Path) -> None:
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps, ttl_seconds=90)
    assert result == WakeResult(PushOutcome.SENT, "", 1)
    assert standin.token_requests == 1  # the stand-in verified the signed grant
    [push] = standin.received
    assert push.token == TOKEN
    nonce = push.message["data"]["nonce"]
    assert push.message == {
        "token": TOKEN,
        "data": {"type": "wake", "nonce": nonce},
        "android": {"priority": "high", "ttl": "90s", "collapse_key": "device-1"},
    }
    assert len(nonce) == 22 and nonce.replace("-", "").replace("_", "").isalnum()  # 16 random bytes, urlsafe
    assert sleeps.delays == []


def test_the_access_token_is_reused_across_wakes(standin: FcmStandIn, key_file: Path) -> None:
    results = wake(key_file, standin, Sleeps(), times=5)
    assert [r.outcome for r in results] == [PushOutcome.SENT] * 5
    assert standin.token_requests == 1
    assert len({p.message["data"]["nonce"] for p in standin.received}) == 5


def test_concurrent_wakes_share_one_grant(standin: FcmStandIn, key_file: Path) -> None:
    async def run() -> list[WakeResult]:
        sender = FcmSender(key_file, base_url=standin.base_url, sleep=Sleeps())
        try:
            return list(await asyncio.gather(*(sender.wake(f"{TOKEN}-{i}", f"device-{i}") for i in range(10))))
        finally:
            await sender.aclose()

    results = asyncio.run(run())
    assert {r.outcome for r in results} == {PushOutcome.SENT}
    assert standin.token_requests == 1
    assert len(standin.received) == 10


def test_429_honours_retry_after(standin: FcmStandIn, key_file: Path) -> None:
    standin.script((429, "2"))
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps)
    assert result == WakeResult(PushOutcome.SENT, "", 2)
    assert sleeps.delays == [2.0]
    assert len(standin.received) == 1


def test_retry_after_as_an_http_date(standin: FcmStandIn, key_file: Path) -> None:
    standin.script((503, formatdate(time.time() + 30, usegmt=True)))
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps)
    assert result.outcome is PushOutcome.SENT
    [delay] = sleeps.delays
    assert 25 <= delay <= 31


def test_5xx_is_retried_with_exponential_backoff_then_fails(standin: FcmStandIn, key_file: Path) -> None:
    standin.script(*[503] * 4)
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps, max_attempts=4)
    assert result == WakeResult(PushOutcome.FAILED, "HTTP 503 x4", 4)
    assert len(sleeps.delays) == 3  # none after the last attempt
    for i, delay in enumerate(sleeps.delays):
        assert 2**i <= delay <= 2**i * 1.25, sleeps.delays
    assert standin.received == []


def test_backoff_and_retry_after_are_capped(standin: FcmStandIn, key_file: Path) -> None:
    standin.script(500, (503, "3600"), 503)
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps, max_attempts=3, max_backoff=1.5)
    assert result == WakeResult(PushOutcome.FAILED, "HTTP 500 x1; HTTP 503 x2", 3)
    assert 1.0 <= sleeps.delays[0] <= 1.25
    assert sleeps.delays[1] == 1.5


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ("unregistered", "UNREGISTERED"),
        ("invalid_token", "INVALID_ARGUMENT message.token"),
        ("sender_id_mismatch", "SENDER_ID_MISMATCH"),
    ],
)
def test_a_dead_token_is_reported_without_retry(standin: FcmStandIn, key_file: Path, answer: str, detail: str) -> None:
    standin.script(answer)
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps)
    assert result == WakeResult(PushOutcome.INVALID_TOKEN, detail, 1)
    assert sleeps.delays == []
    assert standin.received == []  # a retry would have been accepted


def test_a_400_about_the_message_fails_without_retry(standin: FcmStandIn, key_file: Path) -> None:
    standin.script(400)
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps)
    assert result == WakeResult(PushOutcome.FAILED, "HTTP 400 INVALID_ARGUMENT", 1)
    assert sleeps.delays == []
    assert standin.received == []


def test_the_standin_refuses_anything_but_the_wake_shape(
    standin: FcmStandIn, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes the first test's SENT mean "nothing private was sent"."""
    original = FcmSender._message

    def leaky(self: FcmSender, push_token: str, collapse_key: str) -> dict[str, Any]:
        doc = original(self, push_token, collapse_key)
        doc["message"]["data"]["body"] = "Your code is 424242"
        return doc

    monkeypatch.setattr(FcmSender, "_message", leaky)
    [result] = wake(key_file, standin, Sleeps())
    assert result == WakeResult(PushOutcome.FAILED, "HTTP 400 INVALID_ARGUMENT", 1)
    assert standin.received == []


def test_an_expired_access_token_is_refreshed_once(standin: FcmStandIn, key_file: Path) -> None:
    standin.script("expire_token")
    sleeps = Sleeps()
    [result] = wake(key_file, standin, sleeps)
    assert result == WakeResult(PushOutcome.SENT, "", 2)
    assert standin.token_requests == 2
    assert sleeps.delays == []  # a refresh, not a backoff
    assert len(standin.received) == 1


def test_401_after_a_refresh_is_unauthorized(standin: FcmStandIn, key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    standin.script("expire_token", "expire_token")
    with caplog.at_level(logging.INFO, logger="gateway.push"):
        [result] = wake(key_file, standin, Sleeps())
    assert result.outcome is PushOutcome.UNAUTHORIZED
    assert standin.token_requests == 2
    assert standin.received == []
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "unauthorized" in warning.getMessage()
    assert TOKEN not in caplog.text and "standin." not in caplog.text  # neither push nor access token


def test_a_wrong_key_fails_the_grant(standin: FcmStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FcmStandIn(project_id="smsgw-test") as other:
        info = standin.service_account() | {"private_key": other.service_account()["private_key"]}
    key_file = tmp_path / "wrong-key.json"
    key_file.write_text(json.dumps(info))
    sleeps = Sleeps()
    with caplog.at_level(logging.INFO, logger="gateway.push"):
        [result] = wake(key_file, standin, sleeps, max_attempts=3)
    assert result.outcome is PushOutcome.FAILED
    assert result.attempts == 3
    assert result.detail == "token endpoint: invalid_grant: Invalid JWT Signature. x3"
    assert len(sleeps.delays) == 2
    assert standin.token_requests == 0 and standin.received == []
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert "PRIVATE KEY" not in caplog.text and TOKEN not in caplog.text


def test_an_unreachable_token_endpoint_fails(tmp_path: Path) -> None:
    with FcmStandIn() as gone:
        key_file = gone.write_service_account(tmp_path / "key.json")
        base_url = gone.base_url
    sleeps = Sleeps()

    async def run() -> WakeResult:
        sender = FcmSender(key_file, base_url=base_url, sleep=sleeps, max_attempts=2, timeout=2.0)
        try:
            return await sender.wake(TOKEN, "device-1")
        finally:
            await sender.aclose()

    result = asyncio.run(run())
    assert result.outcome is PushOutcome.FAILED and result.attempts == 2
    assert result.detail.startswith("token endpoint: ConnectError"), result.detail


def _missing(path: Path, standin: FcmStandIn) -> None:
    pass


def _pem_alone(path: Path, standin: FcmStandIn) -> None:
    path.write_text(standin.service_account()["private_key"])


def _no_private_key(path: Path, standin: FcmStandIn) -> None:
    info = standin.service_account()
    del info["private_key"]
    path.write_text(json.dumps(info))


def _broken_key(path: Path, standin: FcmStandIn) -> None:
    pem = standin.service_account()["private_key"]
    info = standin.service_account() | {"private_key": pem[:200] + pem[240:]}
    path.write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_missing, "no such file"),
        (_pem_alone, "not JSON"),
        (_no_private_key, "lacks private_key"),
        (_broken_key, "private_key is not"),
    ],
)
def test_a_bad_key_file_is_refused_at_once(standin: FcmStandIn, tmp_path: Path, make: Any, says: str) -> None:
    path = tmp_path / "fcm-key.json"
    make(path, standin)
    with pytest.raises(FcmConfigError) as info:
        FcmSender(path, base_url=standin.base_url)
    message = str(info.value)
    assert str(path) in message and says in message
    assert "\n" not in message
    assert "BEGIN PRIVATE KEY" not in message and "MII" not in message
    # No chained exception (a traceback would print it): only our own words.
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def _grant(standin: FcmStandIn, client: httpx.Client, **claims: Any) -> httpx.Response:
    """A JWT-bearer grant signed by hand with the account's key (PyJWT, not google-auth)."""
    info = standin.service_account()
    now = int(time.time())
    payload = {
        "iss": info["client_email"], "aud": info["token_uri"], "iat": now, "exp": now + 3600,
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
    } | claims
    assertion = jwt.encode(payload, info["private_key"], algorithm="RS256", headers={"kid": info["private_key_id"]})
    grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    return client.post(standin.token_uri, data={"grant_type": grant_type, "assertion": assertion})


def test_the_standin_checks_grants_and_expires_tokens(standin: FcmStandIn) -> None:
    send_url = f"{standin.base_url}/v1/projects/{standin.project_id}/messages:send"
    wake_doc = {"message": {"token": TOKEN, "data": {"type": "wake", "nonce": "n"},
                            "android": {"priority": "high", "ttl": "60s", "collapse_key": "device-1"}}}
    with httpx.Client(trust_env=False, timeout=5) as client:
        for bad in ({"aud": "https://oauth2.googleapis.com/token"}, {"scope": "email"}, {"exp": int(time.time()) + 7200}):
            refused = _grant(standin, client, **bad)
            assert refused.status_code == 400 and refused.json()["error"] in ("invalid_grant", "invalid_scope"), bad
        assert standin.token_requests == 0
        granted = _grant(standin, client)
        assert granted.status_code == 200 and granted.json()["expires_in"] == standin.token_ttl
        auth = {"authorization": f"Bearer {granted.json()['access_token']}"}
        assert client.post(send_url, json=wake_doc).status_code == 401
        other_project = f"{standin.base_url}/v1/projects/someone-else/messages:send"
        assert client.post(other_project, json=wake_doc, headers=auth).status_code == 404
        assert client.post(send_url, json=wake_doc, headers=auth).status_code == 200
        message = wake_doc["message"]
        for leaky in (
            message | {"notification": {"title": "Your code is 424242"}},
            message | {"data": {"type": "wake", "nonce": "n", "to": "+15551234567"}},
            message | {"android": {"priority": "normal", "ttl": "60s", "collapse_key": "device-1"}},
            message | {"android": {"priority": "high", "ttl": "1m", "collapse_key": "device-1"}},
        ):
            answer = client.post(send_url, json={"message": leaky}, headers=auth)
            assert answer.status_code == 400 and answer.json()["error"]["status"] == "INVALID_ARGUMENT"
            assert "message.token" not in answer.text
        standin.script("expire_token")
        for _ in range(2):  # the scripted 401, then a token that stays dead
            expired = client.post(send_url, json=wake_doc, headers=auth)
            assert expired.status_code == 401 and expired.json()["error"]["status"] == "UNAUTHENTICATED"
    assert standin.token_requests == 1 and len(standin.received) == 1


class _Phone:
    """A dozing simulated phone: a loopback HTTP server that records POST /wake."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.woken = threading.Event()
        phone = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path == "/wake/phone-1":
                    phone.bodies.append(json.loads(body))
                    phone.woken.set()
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_loopback_tokens_are_forwarded_to_the_phone(standin: FcmStandIn, key_file: Path) -> None:
    phone = _Phone()
    hooked: list[tuple[str, dict[str, Any]]] = []
    standin.forward_to("loopback:", lambda token, data: hooked.append((token, data)))
    token = f"loopback:{phone.port}:phone-1"
    try:

        async def run() -> WakeResult:
            sender = FcmSender(key_file, base_url=standin.base_url, sleep=Sleeps())
            try:
                return await sender.wake(token, "device-1")
            finally:
                await sender.aclose()

        assert asyncio.run(run()).outcome is PushOutcome.SENT
        assert phone.woken.wait(5)
    finally:
        phone.close()
    [push] = standin.received
    assert phone.bodies == [{"type": "wake", "nonce": push.message["data"]["nonce"]}]
    assert hooked == [(token, {"type": "wake", "nonce": push.message["data"]["nonce"]})]
