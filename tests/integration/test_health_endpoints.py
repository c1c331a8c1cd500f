"""The metrics port's paths (gateway/observability.py): /livez, /readyz (503 while draining,
or when a check fails), /metrics with the process collectors and build info, and 404 for
anything else."""

from __future__ import annotations

import base64
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.observability import Readiness, new_registry, serve_metrics
from tests.helpers.metrics import sample, scrape
from tests.helpers.raw_phone import pair_raw
from tests.helpers.server import ServerProcess


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serve_answers_livez_readyz_metrics_and_404_elsewhere(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        base = server.endpoints["metrics"].removesuffix("/metrics")
        assert _get(f"{base}/livez") == (200, "ok\n")
        assert _get(f"{base}/readyz") == (200, "ok\n")
        status, _ = _get(f"{base}/healthz")
        assert status == 404
        text = scrape(server.endpoints["metrics"])
        assert sample(text, "smsgw_build_info", version="0.1.0") == 1
        assert sample(text, "process_resident_memory_bytes") and sample(text, "python_gc_collections_total") is not None
        # Draining: after SIGTERM, while the bridge closes a phone's session, /readyz says 503.
        # The phone is a bare socket that never answers the close, so the bridge waits out its
        # shutdown grace (5 s) and the draining window is wide whatever the machine's load.
        phone, credentials = pair_raw(server.grpc_target, server.token, server.device_url)
        phone.ws.close()
        silent = _silent_session(server.device_url, credentials.token)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        seen: tuple[int, str] = (0, "")
        while time.monotonic() < deadline and seen[0] != 503:
            try:
                seen = _get(f"{base}/readyz")
            except OSError:
                break  # already gone
            time.sleep(0.02)
        assert seen == (503, "draining: shutting down\n"), seen
        silent.close()


def _silent_session(device_url: str, token: str) -> socket.socket:
    """A WebSocket session opened by hand (the upgrade only) that then reads nothing."""
    host, port = device_url.removeprefix("ws://").removesuffix("/device/v1").rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /device/v1 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: smsgw.device.v1+proto\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:  # bounded by the socket's timeout
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def test_readyz_names_each_failing_check() -> None:
    readiness = Readiness()
    readiness.add("storage", lambda: "")
    readiness.add("phones", lambda: "not listening yet")

    def broken() -> str:
        raise ConnectionError("refused")

    readiness.add("other", broken)
    server = serve_metrics("127.0.0.1", 0, new_registry(), readiness)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(f"{base}/readyz") == (503, "phones: not listening yet\nother: ConnectionError\n")
        assert _get(f"{base}/livez") == (200, "ok\n")
        assert sample(scrape(f"{base}/metrics"), "smsgw_build_info") == 1
    finally:
        server.shutdown()


def test_a_port_in_use_is_an_oserror() -> None:
    first = serve_metrics("127.0.0.1", 0, CollectorRegistry(), Readiness())
    try:
        with pytest.raises(OSError):
            serve_metrics("127.0.0.1", first.port, CollectorRegistry(), Readiness())
    finally:
        first.shutdown()
