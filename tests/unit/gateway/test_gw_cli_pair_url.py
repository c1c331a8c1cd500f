"""`smsgw devices pair`: the phone URL from the server's answer, a wildcard listen address
replaced by the host the command reached the server at; IPv6 hosts in brackets."""

from __future__ import annotations

import argparse

import pytest

from gateway.app import join_hostport, split_hostport
from gateway.cli_client import _phone_url


def _args(server: str, tls: bool = False) -> argparse.Namespace:
    return argparse.Namespace(server=server, tls=tls, ca_file=None, client_cert=None, client_key=None)


@pytest.mark.parametrize(
    ("served", "server", "expected"),
    [
        ("wss://sms.example.com/device/v1", "10.0.0.5:50051", "wss://sms.example.com/device/v1"),
        ("ws://10.0.0.5:9000/device/v1", "127.0.0.1:50051", "ws://10.0.0.5:9000/device/v1"),
        ("ws://0.0.0.0:9000/device/v1", "gw.example:50051", "ws://gw.example:9000/device/v1"),
        ("wss://[::]:9000/device/v1", "[fd00::5]:50051", "wss://[fd00::5]:9000/device/v1"),
        ("ws://[::]:9000/device/v1", "gw.example:50051", "ws://gw.example:9000/device/v1"),
        ("ws://[::1]:9000/device/v1", "gw.example:50051", "ws://[::1]:9000/device/v1"),
        # An older server's unbracketed IPv6 listen address names no usable host.
        ("ws://:::9000/device/v1", "gw.example:50051", "ws://gw.example:9000/device/v1"),
        ("ws://::1:9000/device/v1", "[::1]:50051", "ws://[::1]:9000/device/v1"),
    ],
)
def test_the_server_named_url_is_used_and_wildcards_take_the_server_host(served: str, server: str, expected: str) -> None:
    assert _phone_url(served, _args(server)) == expected


def test_an_older_server_naming_none_gets_the_old_guess() -> None:
    assert _phone_url("", _args("gw.example:50051", tls=True)) == "wss://gw.example:8765/device/v1"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [("127.0.0.1", 8765, "127.0.0.1:8765"), ("::", 8765, "[::]:8765"), ("::1", 0, "[::1]:0"), ("gw.example", 1, "gw.example:1")],
)
def test_join_hostport_brackets_ipv6_hosts(host: str, port: int, expected: str) -> None:
    assert join_hostport(host, port) == expected
    assert split_hostport(expected) == (host, port)
