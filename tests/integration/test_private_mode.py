"""Private mode over real sockets: a pairing code alone does not register a phone; the server's
private token (header X-Smsgw-Private-Token) must come with it. Reconnects need only the
device token. Accounts cannot be created through the API."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from smsgw.v1 import common_pb2
from smsgw_client import Client, FailedPrecondition
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from device_bridge.protocol import AckReceived, Encoding, ReceiptState, WelcomeReceived
from device_bridge.server import PRIVATE_TOKEN_HEADER
from tests.helpers.raw_phone import RawPhone, open_raw
from tests.helpers.server import LENIENT_LIMITS, SMSGW, ServerProcess

PRIVATE_TOKEN = secrets.token_urlsafe(32)  # 43 characters


def _private_env(token: str) -> dict[str, str]:
    return {"SMSGW_GATEWAY__MODE": "private", "SMSGW_GATEWAY__PRIVATE_TOKEN": token}


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("private") / "data", env=_private_env(PRIVATE_TOKEN)) as proc:
        yield proc


def _open(url: str, headers: dict[str, str]) -> ClientConnection:
    return connect(
        url, subprotocols=[Encoding.PROTO], additional_headers=headers,  # type: ignore[list-item]
        compression=None, open_timeout=10, close_timeout=10, legacy=True,
    )


def _refused(url: str, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as caught:
        _open(url, headers)
    return caught.value.response.status_code


def test_pairing_needs_the_private_token_and_reconnects_do_not(private_server: ServerProcess) -> None:
    server = private_server
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="private").code
        pairing = {"Authorization": f"Pairing {code}"}
        assert _refused(server.device_url, pairing) == 401
        assert _refused(server.device_url, {**pairing, PRIVATE_TOKEN_HEADER: "wrong-" + PRIVATE_TOKEN}) == 401
        assert _refused(server.device_url, {**pairing, PRIVATE_TOKEN_HEADER: PRIVATE_TOKEN[:-1]}) == 401
        assert _refused(server.device_url, {**pairing, PRIVATE_TOKEN_HEADER: ""}) == 401
        assert client.list_devices().devices == []

        # The refusals did not spend the code: with the right token it pairs.
        phone = RawPhone(_open(server.device_url, {**pairing, PRIVATE_TOKEN_HEADER: PRIVATE_TOKEN}), Encoding.PROTO, 4)
        assert isinstance(phone.welcome, WelcomeReceived)
        creds = phone.welcome.credentials
        assert creds is not None and creds.device_id == phone.welcome.device_id
        phone.ws.close()
        # Say the Welcome was lost: a retry of the code needs the private token too ...
        assert _refused(server.device_url, pairing) == 401
        retry = RawPhone(_open(server.device_url, {**pairing, PRIVATE_TOKEN_HEADER: PRIVATE_TOKEN}), Encoding.PROTO, 4)
        assert isinstance(retry.welcome, WelcomeReceived) and retry.welcome.credentials is not None
        assert retry.welcome.credentials.device_id == creds.device_id  # ... and re-issues the token
        creds = retry.welcome.credentials
        retry.ws.close()

        # Reconnect with the device token alone, and work.
        again = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
        assert isinstance(again.welcome, WelcomeReceived) and again.welcome.device_id == creds.device_id
        assert again.welcome.credentials is None
        # Spent now, even with the private token.
        assert _refused(server.device_url, {**pairing, PRIVATE_TOKEN_HEADER: PRIVATE_TOKEN}) == 401
        mid = client.send_message(["+15551239999"], "private mode works").id
        deliver = again.next_deliver()
        assert deliver.delivery.message_id == mid and deliver.delivery.text == "private mode works"
        again.receipt(mid, ReceiptState.ACCEPTED)
        assert isinstance(again.next_event(), AckReceived)
        assert client.get_message(mid).state == common_pb2.ACCEPTED
        assert [(d.id, d.online) for d in client.list_devices().devices] == [(creds.device_id, True)]
        again.ws.close()


def test_serve_says_it_is_in_private_mode(private_server: ServerProcess) -> None:
    assert "private mode: accounts from `smsgw users`" in private_server.log_text()


def test_private_token_does_not_replace_the_code(private_server: ServerProcess) -> None:
    server = private_server
    headers = {PRIVATE_TOKEN_HEADER: PRIVATE_TOKEN}
    assert _refused(server.device_url, headers) == 401
    assert _refused(server.device_url, {**headers, "Authorization": "Pairing ZZZZZZZZZZ"}) == 401
    assert _refused(server.device_url, {**headers, "Authorization": f"Bearer {PRIVATE_TOKEN}"}) == 401


def test_create_account_refused_in_private_mode(private_server: ServerProcess) -> None:
    with Client(private_server.grpc_target) as client, pytest.raises(FailedPrecondition):
        client.create_account("newcomer", "a long enough password")


def test_public_mode_code_alone_pairs(server: ServerProcess) -> None:
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="public").code
    phone = RawPhone(open_raw(server.device_url, f"Pairing {code}"), Encoding.PROTO, 4)
    assert isinstance(phone.welcome, WelcomeReceived) and phone.welcome.credentials is not None
    phone.ws.close()


@pytest.mark.parametrize("token", ["", "x" * 31])
def test_private_mode_with_short_token_refuses_to_start(tmp_path: Path, token: str) -> None:
    env = {**os.environ, **LENIENT_LIMITS, **_private_env(token)}
    done = subprocess.run(
        [SMSGW, "serve", "--data-dir", str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0",
         "--device-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "gateway.private_token" in done.stdout + done.stderr
    assert not (tmp_path / "data" / "endpoints.json").exists()
