"""`smsgw devices list`, LAST SEEN of a device that never connected with its token: "pairing"
while it is online on its pairing session, "never with token" once that is gone (a lost
Welcome, docs/protocol.md "When the code is spent")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.v1 import devices_pb2

from gateway.cli_client import _devices_list


class _Client:
    def __init__(self, *devices: devices_pb2.Device) -> None:
        self.devices = devices

    def list_devices(self) -> devices_pb2.ListDevicesResponse:
        return devices_pb2.ListDevicesResponse(devices=self.devices)


def _device(name: str, *, online: bool, connected_with_token: bool) -> devices_pb2.Device:
    seen = Timestamp()
    seen.FromDatetime(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    return devices_pb2.Device(
        id=f"01{name.upper():0<24}", name=name, online=online, last_seen=seen, connected_with_token=connected_with_token
    )


def test_last_seen_tells_a_pairing_session_from_a_token_never_used(capsys: pytest.CaptureFixture[str]) -> None:
    client: Any = _Client(
        _device("pairing", online=True, connected_with_token=False),
        _device("orphan", online=False, connected_with_token=False),
        _device("paired", online=True, connected_with_token=True),
    )
    _devices_list(client)
    rows = {line.split()[1]: line.split(None, 3)[2:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["pairing"][0] == "online" and rows["pairing"][1].startswith("pairing ")
    assert rows["orphan"][0] == "offline" and rows["orphan"][1].startswith("never with token ")
    assert rows["paired"][0] == "online" and rows["paired"][1].startswith("2030-01-01 12:00:00 ")
