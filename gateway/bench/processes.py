"""The processes a bench run starts: `smsgw serve` as a user starts it, and the phone fleet.

Each is ended by its own pid (SIGTERM, then SIGKILL after a timeout), never by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ServerRun", "SplitRun", "FleetProc", "BENCH_SETTINGS", "cpu_seconds"]

_START_TIMEOUT = 60.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# The bench measures the pipeline, so the per-token rate limit, the daily cap and the send
# pacing (which hold a phone to Android's 30 parts a minute) are lifted; everything else,
# synchronous=FULL included, is the default a user gets.
BENCH_SETTINGS = {
    "SMSGW_LIMITS__RATE_PER_TOKEN": "1000000",
    "SMSGW_LIMITS__BURST_PER_TOKEN": "1000000",
    "SMSGW_LIMITS__DAILY_SEGMENTS": "0",
    "SMSGW_SCHEDULER__SIM_PARTS_PER_MINUTE": "0",
    "SMSGW_SCHEDULER__SIM_MIN_INTERVAL": "0",
    "SMSGW_SCHEDULER__PHONE_PARTS_PER_MINUTE": "0",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` (every thread) so far, from /proc/PID/stat (fields 14
    and 15; the name before them may hold spaces). Clock ticks: 10 ms on most kernels."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _smsgw() -> list[str]:
    beside = Path(sys.executable).parent / "smsgw"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("smsgw")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


def _end(proc: subprocess.Popen[bytes] | asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM the process we started, SIGKILL it if it has not gone after `timeout`."""
    if proc.returncode is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    try:
        os.waitpid(proc.pid, 0)
    except ChildProcessError:
        pass


# The listen flags each command takes (serve: all three).
_LISTENS = {
    "serve": ("--grpc-listen", "--device-listen", "--metrics-listen"),
    "gateway": ("--grpc-listen", "--metrics-listen"),
    "bridge": ("--device-listen", "--metrics-listen"),
    "worker": ("--metrics-listen",),
}


class ServerRun:
    """One `smsgw serve` (or one `role` of it: gateway, bridge, worker) in its own data
    directory; restartable on the same ports."""

    def __init__(self, work: Path, name: str, env: dict[str, str], role: str = "serve") -> None:
        self.role = role
        self.data_dir = work / name
        self.log_path = work / f"{name}.log"
        self.env = {**os.environ, **BENCH_SETTINGS, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, Any] = {}

    @property
    def grpc(self) -> str:
        return str(self.endpoints["grpc"])

    @property
    def device_url(self) -> str:
        return str(self.endpoints["device"])

    @property
    def admin_password(self) -> str:
        return (self.data_dir / "admin.password").read_text().strip()

    def start(self) -> float:
        """Start (on the previous ports after a stop) and wait until it listens; returns
        time.monotonic() at that moment."""
        listen = {flag: "127.0.0.1:0" for flag in _LISTENS[self.role]}
        if self.endpoints:  # the same ports again
            known = {
                "--grpc-listen": self.endpoints.get("grpc"),
                "--device-listen": str(self.endpoints.get("device", "")).removeprefix("ws://").removesuffix("/device/v1"),
                "--metrics-listen": str(self.endpoints["metrics"]).removeprefix("http://").removesuffix("/metrics"),
            }
            listen = {flag: str(known[flag]) for flag in listen}
        endpoints_file = self.data_dir / "endpoints.json"
        endpoints_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*_smsgw(), self.role, "--data-dir", str(self.data_dir), *(p for f in listen.items() for p in f)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smsgw {self.role} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.endpoints = json.loads(endpoints_file.read_text())
                return time.monotonic()
            except (OSError, ValueError):
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"smsgw {self.role} did not start in {_START_TIMEOUT:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            _end(self.proc, timeout)

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (every thread) so far."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)


class SplitRun:
    """`smsgw gateway`, `smsgw bridge` and `smsgw worker` (one each) on one PostgreSQL database,
    after `smsgw db upgrade`: what the bench's load scenarios need of a ServerRun (the API's
    and the phones' addresses, the admin password, the CPU of all three processes together)."""

    def __init__(self, work: Path, name: str, env: dict[str, str]) -> None:
        self.setup = work / f"{name}-setup"
        self.env = {**os.environ, **BENCH_SETTINGS, **env}
        self.parts = {role: ServerRun(work, f"{name}-{role}", env, role) for role in ("worker", "bridge", "gateway")}

    @property
    def grpc(self) -> str:
        return self.parts["gateway"].grpc

    @property
    def device_url(self) -> str:
        return self.parts["bridge"].device_url

    @property
    def admin_password(self) -> str:
        return (self.setup / "admin.password").read_text().strip()

    def start(self) -> float:
        upgrade = subprocess.run([*_smsgw(), "db", "upgrade", "--data-dir", str(self.setup)], env=self.env,
                                 capture_output=True, text=True, timeout=_START_TIMEOUT)
        if upgrade.returncode != 0:
            raise RuntimeError(f"smsgw db upgrade failed: {upgrade.stderr.strip()}")
        gateway_dir = self.parts["gateway"].data_dir
        gateway_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy(self.setup / "jwt.secret", gateway_dir / "jwt.secret")
        started = 0.0
        for part in self.parts.values():
            started = part.start()
        return started

    def stop(self, timeout: float = 30.0) -> None:
        for part in reversed(list(self.parts.values())):
            part.stop(timeout)

    def cpu_seconds(self) -> float:
        return sum(part.cpu_seconds() for part in self.parts.values())


class FleetProc:
    """The simulated phones (gateway.bench.fleet) in their own process, driven over pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, device_url: str, max_phones: int, log_path: Path) -> FleetProc:
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.bench.fleet", device_url, str(max_phones),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                limit=64 * 1024 * 1024,  # a `delivers` reply names every message
            )
        return cls(proc)

    async def call(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the phone fleet exited ({self.proc.returncode}); see its log")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fleet {op}: {reply['error']}")
        return reply

    def cpu_seconds(self) -> float:
        """User + system CPU of the fleet process so far: beside the server's, what the
        simulated phones cost (on the same cores, so it is CPU the server did not get)."""
        return cpu_seconds(self.proc.pid)

    async def wait_connected(self, count: int, timeout: float) -> float:
        """Until `count` phones hold an open session; returns time.monotonic() then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = await self.call("status")
            if status["connected"] >= count:
                return time.monotonic()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"only {status['connected']} of {count} phones connected in {timeout:.0f} s: {status}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.call("quit", timeout=1)
            except (RuntimeError, TimeoutError, OSError, ValueError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                _end(self.proc, 5)
