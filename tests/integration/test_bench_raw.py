"""gateway.bench.raw on tiny loads: each measurement returns its keys with sane, positive
numbers and leaves no process behind. Never a wall-clock threshold: the machine is shared,
and these are measurements, not properties."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.bench import raw

ROOT = Path(__file__).resolve().parents[2]


def _raw_children() -> list[int]:
    """Live processes of this module that this test process started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"gateway.bench.raw" in cmdline:
            found.append(int(entry.name))
    return found


def _check(result: Any, keys: type, positive: tuple[str, ...]) -> None:
    assert set(result) == set(keys.__required_keys__)  # type: ignore[attr-defined]
    for key in positive:
        assert result[key] > 0, (key, result)
    for key, value in result.items():
        assert isinstance(value, int | float) and value >= 0, (key, result)
    assert _raw_children() == []


def test_grpc_unary_echo() -> None:
    result = raw.grpc_unary_echo(0.5, in_flight=4)
    _check(result, raw.GrpcUnaryEcho, ("calls_per_s", "p50_ms", "p99_ms", "p50_ms_one_in_flight"))
    assert result["p50_ms"] <= result["p99_ms"]


def test_grpc_stream_echo() -> None:
    result = raw.grpc_stream_echo(0.5, streams=4)
    _check(result, raw.GrpcStreamEcho, ("messages_per_s",))


def test_ws_echo() -> None:
    result = raw.ws_echo(0.5, connections=4)
    _check(result, raw.WsEcho, ("messages_per_s", "p50_ms", "p99_ms", "p50_ms_one_connection"))
    assert result["p50_ms"] <= result["p99_ms"]


@pytest.mark.parametrize("ping_interval", [20.0, None])
def test_ws_idle(ping_interval: float | None) -> None:
    result = raw.ws_idle(50, settle=0.5, idle_window=0.5, ping_interval=ping_interval)
    _check(result, raw.WsIdle, ("connections", "rss_kib_per_connection"))
    assert result["connections"] == 50


def test_ws_idle_refuses_more_connections_than_the_hard_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clear error up front, before any process starts, not a crash halfway through."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    with pytest.raises(RuntimeError, match="RLIMIT_NOFILE"):
        raw.ws_idle(2000)
    assert _raw_children() == []


def test_a_server_ends_when_its_caller_goes() -> None:
    """A caller killed before its `finally` leaves no server: the child exits on stdin EOF."""
    with raw._Child("ws-server", "--connections", "1", max_seconds=60) as server:
        assert server.ready_port() > 0
        assert server.proc.stdin is not None
        server.proc.stdin.close()
        assert server.proc.wait(10) == 0


def test_the_cli_prints_every_figure_as_json() -> None:
    command = [sys.executable, "-m", "gateway.bench.raw", "all", "--duration", "0.3", "--in-flight", "2",
               "--streams", "2", "--connections", "2", "--idle-connections", "50", "--idle-window", "0.3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout)
    assert set(figures) == {"grpc_unary_echo", "grpc_stream_echo", "ws_echo", "ws_idle"}
    assert figures["grpc_unary_echo"]["calls_per_s"] > 0
    assert figures["ws_idle"]["connections"] == 50


def test_percentiles_are_nearest_rank() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert raw._percentile_ms(samples, 0.50) == 50.0
    assert raw._percentile_ms(samples, 0.99) == 99.0
    assert raw._percentile_ms([0.002], 0.99) == 2.0
    assert raw._percentile_ms([], 0.5) == 0.0


def test_cpu_seconds_reads_this_process() -> None:
    before = raw._cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn a little CPU, bounded by the deadline
        pass
    assert raw._cpu_seconds(os.getpid()) >= before
    assert raw._rss_kib(os.getpid()) > 0
