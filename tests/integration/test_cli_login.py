"""`smsgw login --print` for scripts, and `smsgw logout` when the server cannot take the stored
access token (revoked) or cannot be reached: the real command against the real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from smsgw_client import Client, Unauthenticated

from tests.helpers.auth import jwt_parts
from tests.helpers.server import SMSGW, ServerProcess


def _smsgw(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SMSGW_TOKEN", "SMSGW_CREDENTIALS")}
    return subprocess.run([SMSGW, *args], capture_output=True, text=True, timeout=60, env=env)


def _login(server: ServerProcess, credentials: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    login = _smsgw("login", "--server", server.grpc_target, "--credentials", str(credentials),
                   "--password-file", str(server.data_dir / "admin.password"), *extra)
    assert login.returncode == 0, login.stderr
    return login


def test_login_print_puts_the_token_alone_on_stdout(server: ServerProcess, tmp_path: Path) -> None:
    login = _login(server, tmp_path / "credentials.json", "--print")
    token = login.stdout.removesuffix("\n")
    assert "\n" not in token and " " not in token  # what SMSGW_TOKEN=$(smsgw login --print) gets
    with Client(server.grpc_target, token) as client:
        client.list_devices()
    assert "signed in as admin" in login.stderr and token not in login.stderr


def test_logout_after_the_access_token_was_revoked_uses_the_refresh_token(server: ServerProcess, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    _login(server, credentials)
    stored = json.loads(credentials.read_text())
    with Client(server.grpc_target, server.token) as admin:
        admin.revoke_token(jwt_parts(stored["access_token"])[1]["jti"])  # the access token alone
    logout = _smsgw("logout", "--server", server.grpc_target, "--credentials", str(credentials))
    assert logout.returncode == 0, logout.stderr
    assert not credentials.exists()
    assert "revoked on the server" in logout.stderr
    with Client(server.grpc_target) as client, pytest.raises(Unauthenticated):
        client.refresh_token(stored["refresh_token"])  # the whole sign-in is gone


def test_logout_deletes_the_file_even_when_the_server_is_gone(server: ServerProcess, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    _login(server, credentials)
    server.stop()
    logout = _smsgw("logout", "--server", server.grpc_target, "--credentials", str(credentials))
    assert logout.returncode == 1, logout.stderr
    assert not credentials.exists()
    assert "did not revoke" in logout.stderr and "UNAVAILABLE" in logout.stderr
    assert "Traceback" not in logout.stderr
