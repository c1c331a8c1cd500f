"""Start `smsgw serve` exactly as a user does (the installed console script), on port 0,
and read the bound addresses from DIR/endpoints.json. Only the process started here is
ever signalled, by its pid."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.postgres import backend_env

__all__ = [
    "ServerProcess", "SMSGW", "LENIENT_LIMITS", "PRIVATE_TOKEN", "private_webhook_env", "serve_on", "upgraded_database",
    "admin_token",
]

SMSGW = str(Path(sys.executable).parent / "smsgw")
_START_TIMEOUT = 30.0
# The default rate limits (20 requests/s per token) and send pacing (24 parts a minute per
# SIM) would throttle the bursts the other tests send; the tests of the limits and of the
# scheduler themselves pass their own values.
LENIENT_LIMITS = {
    "SMSGW_LIMITS__RATE_PER_TOKEN": "100000",
    "SMSGW_LIMITS__BURST_PER_TOKEN": "100000",
    "SMSGW_LIMITS__DAILY_SEGMENTS": "0",
    "SMSGW_SCHEDULER__SIM_PARTS_PER_MINUTE": "0",
    "SMSGW_SCHEDULER__SIM_MIN_INTERVAL": "0",
    "SMSGW_SCHEDULER__PHONE_PARTS_PER_MINUTE": "0",
}


PRIVATE_TOKEN = secrets.token_urlsafe(32)


def private_webhook_env(**extra: str) -> dict[str, str]:
    """A private-mode server that may deliver webhooks to plain http on 127.0.0.1 (the test
    receivers), fast: short retry delays and a 1 s attempt timeout."""
    return {
        "SMSGW_GATEWAY__MODE": "private",
        "SMSGW_GATEWAY__PRIVATE_TOKEN": PRIVATE_TOKEN,
        "SMSGW_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
        "SMSGW_WEBHOOKS__ALLOW_HTTP": "true",
        "SMSGW_WEBHOOKS__RETRY_DELAYS": "0.4,0.4,0.4,0.4,0.4",
        "SMSGW_WEBHOOKS__TIMEOUT": "1",
        **extra,
    }


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        listen: tuple[str, str, str] = ("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"),
        role: str = "serve",
    ) -> None:
        """`listen`: the gRPC, phone and metrics listen addresses. `role`: `serve`, or one of
        the separate processes (`gateway`, `bridge`, `worker`), given only its own listeners."""
        self.role = role
        self.args = args
        self.data_dir = data_dir
        self.env = {**os.environ, **LENIENT_LIMITS, **(env or {})}
        self._token: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, str] = {}
        self.log_path = data_dir.parent / ("server.log" if role == "serve" else f"{role}-{data_dir.name}.log")
        self._ports: tuple[str, str, str] = listen

    def __enter__(self) -> ServerProcess:
        """Started on entry, stopped (SIGTERM, then SIGKILL) on exit."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_target(self) -> str:
        return self.endpoints["grpc"]

    @property
    def device_url(self) -> str:
        return self.endpoints["device"]

    @property
    def admin_password(self) -> str:
        return (self.data_dir / "admin.password").read_text().strip()

    @property
    def token(self) -> str:
        """An access token of the admin account (every scope), signed in once per server."""
        if self._token is None:
            from smsgw_client import Client

            with Client(self.grpc_target) as client:
                self._token = client.issue_token("admin", self.admin_password, access_ttl=3600).access_token
        return self._token

    def token_file(self) -> Path:
        """The admin access token in a file, for `smsgw ... --token-file`."""
        path = self.data_dir.parent / "admin.access-token"
        path.write_text(self.token + "\n")
        return path

    def start(self, *, same_ports: bool = False) -> None:
        """Start and wait until endpoints.json names this process's listeners."""
        endpoints_file = self.data_dir / "endpoints.json"
        endpoints_file.unlink(missing_ok=True)
        if same_ports and self.endpoints:
            self._ports = (
                self.endpoints["grpc"],
                self.endpoints["device"].partition("://")[2].removesuffix("/device/v1"),  # ws:// or wss://
                self.endpoints["metrics"].removeprefix("http://").removesuffix("/metrics"),
            )
        grpc_listen, device_listen, metrics_listen = self._ports
        listens = {"--grpc-listen": grpc_listen, "--device-listen": device_listen, "--metrics-listen": metrics_listen}
        mine = {"serve": listens, "gateway": ("--grpc-listen", "--metrics-listen"),
                "bridge": ("--device-listen", "--metrics-listen"), "worker": ("--metrics-listen",)}[self.role]
        flags = [part for flag in mine for part in (flag, listens[flag])]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [SMSGW, *self.args, self.role, "--data-dir", str(self.data_dir), *flags],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smsgw {self.role} exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                self.endpoints = json.loads(endpoints_file.read_text())
                return
            except (OSError, ValueError):
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"smsgw {self.role} did not start in {_START_TIMEOUT}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup runs (crash test)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a graceful exit; SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@contextmanager
def serve_on(backend: str, data_dir: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """`smsgw serve` on `backend` ("sqlite", or "postgresql": a throwaway database), for the
    suites that run on both (tests.helpers.postgres.BACKENDS)."""
    with backend_env(backend) as database, ServerProcess(data_dir, env={**database, **(env or {})}) as proc:
        yield proc


def upgraded_database(tmp_path: Path, env: dict[str, str], gateways: tuple[Path, ...] = ()) -> str:
    """`smsgw db upgrade` on the database `env` names (SMSGW_DATABASE__URL), then each
    gateway's data directory with the JWT secret it made; returns the admin password."""
    setup = tmp_path / "setup"
    upgrade = subprocess.run([SMSGW, "db", "upgrade", "--data-dir", str(setup)], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    for directory in gateways:
        directory.mkdir(mode=0o700)
        shutil.copy(setup / "jwt.secret", directory / "jwt.secret")
    return (setup / "admin.password").read_text().strip()


def admin_token(gateway: ServerProcess, password: str) -> str:
    """An access token of the admin account, signed in through `gateway`."""
    from smsgw_client import Client

    with Client(gateway.grpc_target) as anonymous:
        return str(anonymous.issue_token("admin", password, access_ttl=3600).access_token)
