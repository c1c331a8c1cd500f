"""`smsgw devices pair` shows and QR-encodes the phone URL the server names (CreatePairingCode's
device_url): its bridge.public_url, else the address its bridge really listens on."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import qrcode
from smsgw_client import Client

from tests.helpers.server import SMSGW, ServerProcess

PUBLIC = "wss://sms.example.com/device/v1"


def _pair(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SMSGW_TOKEN", "SMSGW_CREDENTIALS")}
    pair = subprocess.run(
        [SMSGW, "devices", "pair", "--server", server.grpc_target, "--token-file", str(server.token_file())],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert pair.returncode == 0, pair.stderr
    return pair


def _qr(url: str, code: str) -> str:
    """The QR code `devices pair` draws for this URL and code."""
    qr = qrcode.QRCode(border=1)
    qr.add_data(f"smsgw://pair?url={url}&code={code}")
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def _code(stdout: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("pairing code: "))


def test_pair_shows_the_address_the_bridge_listens_on(server: ServerProcess) -> None:
    assert not server.device_url.startswith("ws://127.0.0.1:8765/")  # port 0: not the default port
    pair = _pair(server)
    assert f"phone endpoint: {server.device_url}\n" in pair.stdout
    assert pair.stdout.startswith(_qr(server.device_url, _code(pair.stdout)))


def test_pair_shows_the_configured_public_url(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", env={"SMSGW_BRIDGE__PUBLIC_URL": PUBLIC}) as server:
        with Client(server.grpc_target, server.token) as client:
            assert client.create_pairing_code().device_url == PUBLIC
        pair = _pair(server)
    assert f"phone endpoint: {PUBLIC}\n" in pair.stdout
    assert pair.stdout.startswith(_qr(PUBLIC, _code(pair.stdout)))


def test_a_public_url_that_is_no_websocket_url_stops_serve(tmp_path: Path) -> None:
    env = {**os.environ, "SMSGW_BRIDGE__PUBLIC_URL": "https://sms.example.com/device/v1"}
    serve = subprocess.run(
        [SMSGW, "serve", "--data-dir", str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0",
         "--device-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert serve.returncode == 2
    assert "bridge.public_url" in serve.stderr and "ws:// or wss://" in serve.stderr
