"""Issue 14 item 7: the data directory, the database (with its -wal/-shm), the sign-in and the
simulated phones' credentials are owner-only whichever command creates them, under the usual
umask 022; `smsgw serve` tightens a data directory left open and says so in its log."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import SMSGW, ServerProcess

TIMEOUT = 60
PERMISSIVE_UMASK = 0o022


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _smsgw(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SMSGW_TOKEN", "SMSGW_CREDENTIALS")}
    return subprocess.run([SMSGW, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          umask=PERMISSIVE_UMASK)


def test_users_add_creates_an_owner_only_data_dir_and_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "smsgw-data"
    # --password-stdin: the command waits for the password with the database open (after the
    # migration), which is when SQLite's -wal and -shm files exist.
    proc = subprocess.Popen(
        [SMSGW, "users", "add", "alice", "--password-stdin", "--data-dir", str(data_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, umask=PERMISSIVE_UMASK,
    )
    try:
        db = data_dir / "smsgw.db"
        wal, shm = db.with_name("smsgw.db-wal"), db.with_name("smsgw.db-shm")
        deadline = time.monotonic() + TIMEOUT
        while not (wal.exists() and shm.exists()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert wal.exists() and shm.exists(), "the command never had the database open"
        modes = {p.name: oct(_mode(p)) for p in (data_dir, db, wal, shm)}
        assert modes == {"smsgw-data": "0o700", "smsgw.db": "0o600", "smsgw.db-wal": "0o600", "smsgw.db-shm": "0o600"}
        out, err = proc.communicate("a long enough password 1\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "created account alice" in out
    assert _mode(tmp_path / "fresh") == 0o755  # a parent it made is an ordinary directory


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`smsgw serve` on a data directory an older version left readable by all (755, a 644
    database and password file)."""
    data_dir = tmp_path_factory.mktemp("open") / "smsgw-data"
    data_dir.mkdir()
    (data_dir / "smsgw.db").touch()  # an empty file is an empty SQLite database
    (data_dir / "jwt.secret").write_text("an old secret of at least thirty-two characters\n")
    for path, mode in ((data_dir, 0o755), (data_dir / "smsgw.db", 0o644), (data_dir / "jwt.secret", 0o644)):
        os.chmod(path, mode)
    with ServerProcess(data_dir) as server:
        yield server


def test_serve_tightens_an_open_data_dir_and_logs_it(open_server: ServerProcess) -> None:
    d = open_server.data_dir
    db = d / "smsgw.db"
    files = [db, db.with_name("smsgw.db-wal"), db.with_name("smsgw.db-shm"), d / "jwt.secret",
             d / "admin.password", d / "endpoints.json", d / "smsgw.lock"]
    assert _mode(d) == 0o700
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: "0o600" for p in files}
    log = open_server.log_text()
    assert f"made {d} owner-only: mode 0755 -> 0700" in log
    assert f"made {db} owner-only: mode 0644 -> 0600" in log
    assert f"made {d / 'jwt.secret'} owner-only: mode 0644 -> 0600" in log
    assert "an old secret" not in log


def test_login_and_simulate_create_owner_only_files(open_server: ServerProcess, tmp_path: Path) -> None:
    credentials = tmp_path / "signin" / "credentials.json"
    login = _smsgw("login", "--server", open_server.grpc_target, "--credentials", str(credentials),
                   "--password-file", str(open_server.data_dir / "admin.password"))
    assert login.returncode == 0, login.stderr
    state = tmp_path / "phones" / "simulator.json"
    simulate = _smsgw("simulate", "--server", open_server.grpc_target, "--credentials", str(credentials),
                      "--devices", "1", "--state-file", str(state), "--device-url", open_server.device_url,
                      "--duration", "0.5")
    assert simulate.returncode == 0, simulate.stderr
    modes = {p.name: oct(_mode(p)) for p in (credentials.parent, credentials, state.parent, state)}
    assert modes == {"signin": "0o700", "credentials.json": "0o600", "phones": "0o700", "simulator.json": "0o600"}
