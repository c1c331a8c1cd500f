"""The operator's path through issue 3, as processes: sign in with the CLI over TLS, pair
simulated phones over WSS and send; the credentials file refreshes itself; the operator's audit
log; metrics; and an upgrade from a data directory of the admin.token era."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from smsgw_client import Client, tls_credentials
from sqlalchemy import text

from gateway.storage.engine import Database, _alembic_config
from tests.helpers.metrics import sample
from tests.helpers.certs import make_pki
from tests.helpers.server import SMSGW, ServerProcess

TIMEOUT = 60


def _smsgw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMSGW, *args], capture_output=True, text=True, timeout=TIMEOUT, input=stdin)


def test_login_simulate_and_send_over_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ServerProcess(
        tmp_path / "data",
        env={
            f"SMSGW_{part}__TLS_{kind}_FILE": str(path)
            for part in ("GRPC", "BRIDGE")
            for kind, path in (("CERT", pki.server_cert), ("KEY", pki.server_key))
        },
    )
    server.start()
    creds = tmp_path / "credentials.json"
    tls = ["--server", server.grpc_target, "--ca-file", str(pki.ca_cert), "--credentials", str(creds)]
    sim = None
    try:
        login = _smsgw("login", *tls, "--password-file", str(server.data_dir / "admin.password"))
        assert login.returncode == 0, login.stderr
        assert (creds.stat().st_mode & 0o777) == 0o600
        sim = subprocess.Popen(
            [SMSGW, "simulate", *tls, "--devices", "1", "--state-file", str(tmp_path / "sim.json"),
             "--device-url", server.device_url, "--reconnect-scale", "0.02", "--duration", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert sim.stdout is not None
        lines = []
        for line in sim.stdout:  # bounded by --duration
            lines.append(line)
            if "online" in line:
                break
        assert lines and "online" in lines[-1], "".join(lines)
        sent = _smsgw("send", *tls, "--to", "+15551234567", "--text", "over tls", "--wait-timeout", "30")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sent.stdout.strip().endswith("DELIVERED")
    finally:
        if sim is not None:
            if sim.poll() is None:
                sim.terminate()
                sim.wait(10)
            assert sim.stdout is not None
            sim.stdout.close()
        server.stop()
    assert "over tls" not in server.log_text()


def test_credentials_refresh_themselves_and_logout_revokes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    creds = tmp_path / "credentials.json"
    common = ["--server", server.grpc_target, "--credentials", str(creds)]
    try:
        # An access token shorter than the CLI's 60 s margin: every command refreshes first.
        login = _smsgw("login", *common, "--password-stdin", "--access-ttl", "30", "--refresh-ttl", "3600",
                       stdin=server.admin_password + "\n")
        assert login.returncode == 0, login.stderr
        first = json.loads(creds.read_text())
        # Without --server the commands go to the server the sign-in belongs to.
        listed = _smsgw("devices", "list", "--credentials", str(creds))
        assert listed.returncode == 0, listed.stderr
        second = json.loads(creds.read_text())
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        out = _smsgw("logout", *common)
        assert out.returncode == 0, out.stderr
        assert not creds.exists()
        with Client(server.grpc_target, second["access_token"]) as client, pytest.raises(Exception) as caught:
            client.list_devices()
        assert "UNAUTHENTICATED" in str(caught.value)
        again = _smsgw("devices", "list", *common)
        assert again.returncode == 2 and "smsgw login" in again.stderr
    finally:
        server.stop()
    for secret in (first["access_token"], first["refresh_token"], second["refresh_token"], server.admin_password):
        assert secret not in server.log_text()


def test_operator_audit_log_and_metrics(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        with Client(server.grpc_target) as client, pytest.raises(Exception):
            client.issue_token("nobody", "wrong password!")
        with Client(server.grpc_target, "not.a.token") as client, pytest.raises(Exception):
            client.list_devices()
        server.token  # noqa: B018 — a successful sign-in
        with urllib.request.urlopen(server.endpoints["metrics"], timeout=10) as response:
            metrics = response.read().decode()
    finally:
        server.stop()
    assert sample(metrics, "smsgw_gateway_auth_failures_total") == 2
    assert sample(metrics, "smsgw_gateway_auth_failures_total", reason="password") == 1
    assert sample(metrics, "smsgw_gateway_auth_failures_total", reason="access_token") == 1
    assert 'smsgw_gateway_tokens_issued_total{kind="issue"} 1.0' in metrics
    audit = _smsgw("users", "audit", "--data-dir", str(server.data_dir), "--action", "auth.failure")
    assert audit.returncode == 0, audit.stderr
    rows = audit.stdout.strip().splitlines()
    assert len(rows) == 2 and all("auth.failure" in r for r in rows)
    assert any("wrong username or password" in r for r in rows)
    assert "wrong password!" not in audit.stdout and "not.a.token" not in audit.stdout


def test_users_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, env={"SMSGW_JOBS__EXPIRY_INTERVAL": "0.2"})
    server.start()
    try:
        added = _smsgw("users", "add", "clinic", "--data-dir", str(data), "--scope", "messages:send",
                       "--password-stdin", stdin="a long clinic password\n")
        assert added.returncode == 0, added.stderr
        bad = _smsgw("users", "add", "x", "--data-dir", str(data), "--password-stdin", stdin="short\n")
        assert bad.returncode == 2 and "username" in bad.stderr and "password" in bad.stderr
        made_up = _smsgw("users", "add", "shop", "--data-dir", str(data))
        assert made_up.returncode == 0 and "password: " in made_up.stdout
        listed = _smsgw("users", "list", "--data-dir", str(data))
        assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["admin", "clinic", "shop"]
        with Client(server.grpc_target) as client:
            pair = client.issue_token("clinic", "a long clinic password")
            assert list(pair.scopes) == ["messages:send"]
            client.set_token(pair.access_token)
            with pytest.raises(Exception) as denied:
                client.list_devices()
            assert "PERMISSION_DENIED" in str(denied.value) and "devices:list" in str(denied.value)
    finally:
        server.stop()


def test_upgrade_from_the_admin_token_era(tmp_path: Path) -> None:
    """A data directory made before accounts: the owner keeps its messages and gets a password."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = Database(f"sqlite:///{data / 'smsgw.db'}")
    now = datetime.now(UTC).isoformat(" ")
    with db.engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0001")
        connection.execute(text("INSERT INTO owner (id, name, created_at) VALUES ('01OLDOWNER', 'admin', :t)"), {"t": now})
        connection.execute(
            text("INSERT INTO api_token (token_hash, owner_id, created_at) VALUES ('x', '01OLDOWNER', :t)"), {"t": now}
        )
    db.close()
    (data / "admin.token").write_text("smsgw_old\n")
    server = ServerProcess(data)
    server.start()
    try:
        assert "created account admin" in server.log_text()
        with Client(server.grpc_target, server.token) as client:
            message = client.send_message(["+15551234567"], "kept")
            assert client.get_message(message.id).id == message.id
        with Client(server.grpc_target, "smsgw_old") as client, pytest.raises(Exception) as caught:
            client.list_devices()
        assert "UNAUTHENTICATED" in str(caught.value)
    finally:
        server.stop()
    check = Database(f"sqlite:///{data / 'smsgw.db'}")
    with check.engine.connect() as connection:
        owners = connection.execute(text("SELECT id, username FROM owner")).all()
    check.close()
    assert owners == [("01OLDOWNER", "admin")]
    assert os.stat(data / "admin.password").st_mode & 0o777 == 0o600
