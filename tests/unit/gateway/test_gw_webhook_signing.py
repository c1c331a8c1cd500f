"""Our webhook signatures are Standard Webhooks signatures (RELIABILITY 11): the reference
`standardwebhooks` library verifies them and rejects a tampered body, a wrong secret, a stale
timestamp and missing headers; the receiver helper in clients/python (RELIABILITY 15) agrees
with it on every case, and dedupes by webhook-id."""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st
from smsgw_client.webhook_receiver import WebhookReceiver, WebhookVerificationError

from gateway.webhooks.signing import SECRET_PREFIX, new_secret, signed_headers

BODY = b'{"event":"sms:received","id":"msg_01","inbound":{"text_message":{"text":"hi \xc3\xa9"}}}'


def _headers(secrets: tuple[str, ...], body: bytes = BODY, msg_id: str = "msg_01", at: int | None = None) -> dict[str, str]:
    return signed_headers(secrets, msg_id, int(time.time()) if at is None else at, body)


def test_secret_is_whsec_and_32_random_bytes() -> None:
    one, two = new_secret(), new_secret()
    assert one.startswith(SECRET_PREFIX) and one != two
    assert len(base64.b64decode(one.removeprefix(SECRET_PREFIX))) == 32


def test_the_reference_library_verifies_our_signature() -> None:
    secret = new_secret()
    assert standardwebhooks.Webhook(secret).verify(BODY, _headers((secret,))) is not None
    assert WebhookReceiver(secret).verify(BODY, _headers((secret,)))["event"] == "sms:received"


@pytest.mark.parametrize(
    "case",
    ["tampered body", "wrong secret", "stale timestamp", "future timestamp", "no id", "no timestamp", "no signature"],
)
def test_both_verifiers_reject(case: str) -> None:
    secret = new_secret()
    headers = _headers((secret,))
    body, verify_with = BODY, secret
    if case == "tampered body":
        body = BODY.replace(b"hi", b"ho")
    elif case == "wrong secret":
        verify_with = new_secret()
    elif case == "stale timestamp":
        headers = _headers((secret,), at=int(time.time()) - 301)
    elif case == "future timestamp":
        headers = _headers((secret,), at=int(time.time()) + 301)
    else:
        del headers[{"no id": "webhook-id", "no timestamp": "webhook-timestamp", "no signature": "webhook-signature"}[case]]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(verify_with).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        WebhookReceiver(verify_with).verify(body, headers)


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = _headers((new, old))
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
        WebhookReceiver(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        WebhookReceiver(new_secret()).verify(BODY, headers)


def test_receiver_accepts_within_the_300_s_tolerance_and_dedupes_by_id() -> None:
    secret = new_secret()
    now = 1_900_000_000.0
    receiver = WebhookReceiver(secret, clock=lambda: now)
    assert receiver.receive(BODY, _headers((secret,), at=int(now) - 299)) is not None
    # The same event again (a retry: same id, new timestamp and signature) is a repeat.
    assert receiver.receive(BODY, _headers((secret,), at=int(now))) is None
    assert receiver.receive(BODY, _headers((secret,), msg_id="msg_02", at=int(now) + 299)) is not None


def test_receiver_dedupe_can_be_persistent() -> None:
    secret, stored = new_secret(), set[str]()

    def is_new(msg_id: str) -> bool:
        if msg_id in stored:
            return False
        stored.add(msg_id)
        return True

    first, second = (WebhookReceiver(secret, is_new=is_new) for _ in range(2))  # two processes, one database
    assert first.receive(BODY, _headers((secret,))) is not None
    assert second.receive(BODY, _headers((secret,))) is None


def test_receiver_refuses_bad_secrets_and_odd_signatures() -> None:
    with pytest.raises(ValueError):
        WebhookReceiver("whsec_not base64!")
    with pytest.raises(ValueError):
        WebhookReceiver([])
    secret = new_secret()
    headers = _headers((secret,))
    for signature in ("v2," + headers["webhook-signature"][3:], "v1,@@@", "garbage", ""):
        with pytest.raises(WebhookVerificationError):
            WebhookReceiver(secret).verify(BODY, {**headers, "webhook-signature": signature})


@given(st.binary(max_size=200), st.text(max_size=40), st.text(max_size=12), st.text(max_size=80))
def test_receiver_never_crashes_on_junk(body: bytes, msg_id: str, stamp: str, signature: str) -> None:
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
    with pytest.raises(WebhookVerificationError):
        WebhookReceiver(new_secret()).verify(body, headers)


def test_a_forgotten_id_is_received_again() -> None:
    secret = new_secret()
    receiver = WebhookReceiver(secret)
    assert receiver.receive(BODY, _headers((secret,))) is not None
    receiver.forget("msg_01")  # handling failed; the retry must get through
    assert receiver.receive(BODY, _headers((secret,))) is not None
    assert receiver.receive(BODY, _headers((secret,))) is None
