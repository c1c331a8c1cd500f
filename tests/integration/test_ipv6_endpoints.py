"""A server listening on IPv6 loopback names its endpoints with the host in brackets (endpoints.json,
CreatePairingCode's device_url): unbracketed, `ws://::1:PORT/device/v1` is no URL a phone can use."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from smsgw_client import Client
from tests.helpers.server import ServerProcess


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


@pytest.fixture
def ipv6_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("ipv6") / "data"
    with ServerProcess(data, listen=("[::1]:0", "[::1]:0", "[::1]:0")) as proc:
        yield proc


def test_ipv6_listen_addresses_are_bracketed_in_endpoints_and_device_url(ipv6_server: ServerProcess) -> None:
    endpoints = ipv6_server.endpoints
    assert endpoints["grpc"].startswith("[::1]:"), endpoints
    assert endpoints["metrics"].startswith("http://[::1]:"), endpoints
    device = urlsplit(endpoints["device"])
    assert (device.scheme, device.hostname, device.path) == ("ws", "::1", "/device/v1"), endpoints
    assert device.port and device.port > 0
    with Client(ipv6_server.grpc_target, ipv6_server.token) as client:
        assert client.create_pairing_code(device_name="v6").device_url == endpoints["device"]
    with socket.create_connection(("::1", device.port), timeout=5):
        pass  # the named port is the bridge's
