"""The operator's commands, run as processes: simulate + send/devices/watch against `smsgw serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import SMSGW, ServerProcess

TIMEOUT = 60


def _client_args(server: ServerProcess) -> list[str]:
    return ["--server", server.grpc_target, "--token-file", str(server.token_file())]


def _smsgw(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMSGW, *args], capture_output=True, text=True, timeout=timeout)


class _Simulator:
    def __init__(self, server: ServerProcess, state_file: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [SMSGW, "simulate", *_client_args(server), "--devices", "3", "--state-file", str(state_file),
             "--device-url", server.device_url, "--reconnect-scale", "0.02", "--duration", "120", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_online(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "3 simulated phones online" in line:
                return
        raise AssertionError("simulator never came online:\n" + "".join(seen))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture
def simulator(server: ServerProcess, tmp_path: Path) -> Iterator[_Simulator]:
    sim = _Simulator(server, tmp_path / "phones.json")
    try:
        sim.wait_online()
        yield sim
    finally:
        sim.stop()


def test_send_waits_for_delivered_and_exits_0(server: ServerProcess, simulator: _Simulator) -> None:
    done = _smsgw("send", *_client_args(server), "--to", "+15551234567", "--text", "hi from the cli")
    assert done.returncode == 0, done.stderr
    states = [line.split()[-1] for line in done.stdout.splitlines()]
    assert states[0] == "PENDING" and states[-1] == "DELIVERED"
    assert "ACCEPTED" in states and "SENT" in states
    assert "+15551234567" not in done.stdout  # shown masked


def test_send_without_delivery_report_exits_0_at_sent(server: ServerProcess, simulator: _Simulator) -> None:
    done = _smsgw("send", *_client_args(server), "--to", "+15551234567", "--text", "hi", "--no-delivery-report")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith(" SENT")


def test_send_exits_1_when_the_phone_fails_it(server: ServerProcess, tmp_path: Path) -> None:
    sim = _Simulator(server, tmp_path / "failing.json", "--failure-rate", "1")
    try:
        sim.wait_online()
        done = _smsgw("send", *_client_args(server), "--to", "+15551234567", "--text", "doomed")
    finally:
        sim.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith(" FAILED")


def test_usage_and_connection_errors_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    bad = _smsgw("send", *_client_args(server), "--to", "12345", "--text", "x")
    assert bad.returncode == 2
    assert "INVALID_ARGUMENT" in bad.stderr and "phone_numbers[0]" in bad.stderr
    token = tmp_path / "t"
    token.write_text("nope\n")
    unauth = _smsgw("devices", "list", "--server", server.grpc_target, "--token-file", str(token))
    assert unauth.returncode == 2 and "UNAUTHENTICATED" in unauth.stderr
    missing = _smsgw("devices", "list", "--server", server.grpc_target, "--token-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "cannot read token file" in missing.stderr
    nobody = _smsgw("devices", "list", "--server", "127.0.0.1:1", "--token-file", str(token), timeout=90)
    assert nobody.returncode == 2 and "UNAVAILABLE" in nobody.stderr
    no_wait = _smsgw("send", *_client_args(server), "--to", "+15551234567", "--text", "queued", "--no-wait")
    assert no_wait.returncode == 0 and no_wait.stdout.split()[-1] == "PENDING"


def test_devices_list_pair_and_simulator_rerun_keeps_phones(server: ServerProcess, tmp_path: Path) -> None:
    state = tmp_path / "phones.json"
    first = _Simulator(server, state)
    first.wait_online()
    listed = _smsgw("devices", "list", *_client_args(server))
    assert listed.returncode == 0
    assert listed.stdout.count(" online ") == 3
    assert first.stop() == 0
    saved = json.loads(state.read_text())
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    second = _Simulator(server, state)
    second.wait_online()
    relisted = _smsgw("devices", "list", *_client_args(server))
    second.stop()
    assert relisted.stdout.count(" online ") == 3
    assert len(relisted.stdout.strip().splitlines()) == 4  # header + the same 3 phones, none added
    assert json.loads(state.read_text()) == saved
    pair = _smsgw("devices", "pair", *_client_args(server), "--name", "shop phone")
    assert pair.returncode == 0
    assert "pairing code:" in pair.stdout and "█" in pair.stdout  # the QR code


def test_watch_prints_json_lines(server: ServerProcess, simulator: _Simulator) -> None:
    assert _smsgw("send", *_client_args(server), "--to", "+15551234567", "--text", "watched").returncode == 0
    watch = subprocess.Popen([SMSGW, "watch", *_client_args(server), "--after", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        events = [json.loads(watch.stdout.readline()) for _ in range(5)]
    finally:
        os.kill(watch.pid, signal.SIGTERM)
        watch.wait(10)
        assert watch.stdout is not None
        watch.stdout.close()
    assert [e["state"] for e in events] == ["PENDING", "DISPATCHED", "ACCEPTED", "SENT", "DELIVERED"]
    assert events[0]["phone_number"] != "+15551234567"
