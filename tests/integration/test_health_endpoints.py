"""The metrics port's paths (gateway/observability.py): /livez, /readyz (503 while draining,
or when a check fails), /metrics with the process collectors and build info, and 404 for
anything else."""

from __future__ import annotations

import os
import signal
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
        phone, _ = pair_raw(server.grpc_target, server.token, server.device_url)
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
        phone.ws.close()


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
