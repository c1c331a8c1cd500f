"""A reconnect storm: past bridge.max_opening sessions being opened, a phone is told 503 with
Retry-After at once (instead of timing out), and gets in once a slot is free."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from device_bridge.protocol import Encoding
from tests.helpers.raw_phone import RawPhone, open_raw, pair_raw
from tests.helpers.server import ServerProcess


@pytest.fixture
def one_slot_server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"SMSGW_BRIDGE__MAX_OPENING": "1", "SMSGW_BRIDGE__HELLO_TIMEOUT": "30"}
    with ServerProcess(tmp_path / "data", env=env) as server:
        yield server


def test_past_the_cap_a_phone_gets_503_then_gets_in(one_slot_server: ServerProcess) -> None:
    server = one_slot_server
    phone, creds = pair_raw(server.grpc_target, server.token, server.device_url)
    phone.ws.close()
    bearer = f"Bearer {creds.token}"
    stalled = open_raw(server.device_url, bearer)  # upgraded, never says Hello: holds the one slot
    with pytest.raises(InvalidStatus) as refused:
        open_raw(server.device_url, bearer)
    response = refused.value.response
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 5
    stalled.close()  # its slot comes back with it
    again = RawPhone(open_raw(server.device_url, bearer), Encoding.PROTO, 4)
    assert again.welcome.device_id == creds.device_id
    again.ws.close()
    with urllib.request.urlopen(server.endpoints["metrics"], timeout=10) as answer:
        assert 'smsgw_bridge_handshakes_total{outcome="busy"} 1.0' in answer.read().decode()
