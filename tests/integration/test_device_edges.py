"""The phone endpoint's edges over real sockets: credentials before the upgrade, subprotocol,
malformed / oversized / out-of-order frames — each a clear refusal, none changing stored data."""

from __future__ import annotations

import pytest
from smsgw_client import Client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from device_bridge.protocol import CloseCode, Encoding
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess


def _closed_with(ws: object, code: int) -> str:
    with pytest.raises(ConnectionClosed) as caught:
        for _ in range(10):
            ws.recv(10)  # type: ignore[attr-defined]
    assert caught.value.rcvd is not None, "the bridge sent no close frame"
    assert caught.value.rcvd.code == code, caught.value.rcvd
    return caught.value.rcvd.reason


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic dXNlcjpwYXNz", "Pairing ZZZZZZZZZZ", "Bearer "])
def test_bad_credentials_refused_before_upgrade(shared_server: ServerProcess, authorization: str | None) -> None:
    with pytest.raises(InvalidStatus) as caught:
        open_raw(shared_server.device_url, authorization)
    assert caught.value.response.status_code == 401


def test_wrong_path_is_404(shared_server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as caught:
        open_raw(shared_server.device_url.replace("/device/v1", "/other"), "Bearer x")
    assert caught.value.response.status_code == 404


def test_pairing_code_works_once(shared_server: ServerProcess) -> None:
    server = shared_server
    with Client(server.grpc_target, server.token) as client:
        code = client.create_pairing_code(device_name="once").code
    phone = RawPhone(open_raw(server.device_url, f"Pairing {code}"), Encoding.PROTO, 4)
    assert phone.welcome.credentials is not None  # type: ignore[union-attr]
    phone.ws.close()
    # The credentials it got work for later sessions ...
    creds = phone.welcome.credentials  # type: ignore[union-attr]
    again = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
    assert again.welcome.device_id == creds.device_id  # type: ignore[union-attr]
    # ... and the first of them spends the code for good (a lost Welcome: test_pairing_recovery.py).
    with pytest.raises(InvalidStatus) as caught:
        open_raw(server.device_url, f"Pairing {code}")
    assert caught.value.response.status_code == 401
    again.ws.close()


@pytest.mark.parametrize("offer", [["smsgw.device.v2+xml"], []])
def test_wrong_or_missing_subprotocol_refused_with_400_naming_ours(shared_server: ServerProcess, offer: list[str]) -> None:
    _, creds = pair_raw(shared_server.grpc_target, shared_server.token, shared_server.device_url)
    with pytest.raises(InvalidStatus) as caught:
        open_raw(shared_server.device_url, f"Bearer {creds.token}", subprotocols=offer)
    assert caught.value.response.status_code == 400
    assert b"smsgw.device.v1+proto" in caught.value.response.body


@pytest.mark.parametrize(
    ("encoding", "frame", "code"),
    [
        (Encoding.PROTO, b"\xff\xff\xff\xff", CloseCode.BAD_FRAME),
        (Encoding.PROTO, "text on a binary session", CloseCode.BAD_FRAME),
        (Encoding.JSON, "{not json", CloseCode.BAD_FRAME),
        (Encoding.JSON, '{"hello": {"window": 0}}', CloseCode.BAD_FRAME),
        (Encoding.JSON, '{"receipt": {"eventId": "1", "messageId": "x", "state": "ACCEPTED"}}', CloseCode.PROTOCOL_VIOLATION),
    ],
)
def test_bad_first_frame_closes_with_reason(
    shared_server: ServerProcess, encoding: Encoding, frame: bytes | str, code: int
) -> None:
    _, creds = pair_raw(shared_server.grpc_target, shared_server.token, shared_server.device_url)
    ws = open_raw(shared_server.device_url, f"Bearer {creds.token}", subprotocols=[encoding])
    assert ws.subprotocol == encoding
    ws.send(frame)
    assert _closed_with(ws, code)


def test_oversized_frame_closes_1009_and_stores_nothing(shared_server: ServerProcess) -> None:
    server = shared_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    with Client(server.grpc_target, server.token) as client:
        before = client.list_messages(page_size=500)
        phone.ws.send(b"\x12" + b"\x00" * (300 * 1024))
        _closed_with(phone.ws, 1009)
        assert client.list_messages(page_size=500) == before
        device = next(d for d in client.list_devices().devices if d.id == creds.device_id)
        assert device.id == creds.device_id


def test_second_session_replaces_first(shared_server: ServerProcess) -> None:
    server = shared_server
    first, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    second = RawPhone(open_raw(server.device_url, f"Bearer {creds.token}"), Encoding.PROTO, 4)
    reason = _closed_with(first.ws, CloseCode.REPLACED)
    assert "newer session" in reason
    with Client(server.grpc_target, server.token) as client:
        device = next(d for d in client.list_devices().devices if d.id == creds.device_id)
        assert device.online
    second.ws.close()
