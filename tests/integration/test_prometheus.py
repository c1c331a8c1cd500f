"""The dashboard and the alert rules against a real Prometheus (issue 18).

`smsgw serve`, `smsgw simulate` phones (some of whose sends fail), a webhook receiver and a
short load; a real Prometheus scrapes the server every second. Then every query of every
dashboard panel (gateway/ops/dashboard.py) must return data through Prometheus's HTTP API
(a series with a number, not NaN), and the counters must say exactly what the run did.

Needs Debian's `prometheus` package (`scripts/install-prometheus`; CI installs it and sets
REQUIRE_PROMETHEUS_TESTS=1, so there it fails instead of skipping).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from smsgw.v1 import common_pb2
from smsgw_client import Client

from gateway.ops.dashboard import expressions
from tests.helpers.raw_phone import open_raw
from tests.helpers.server import PRIVATE_TOKEN, SMSGW, ServerProcess, private_webhook_env
from tests.helpers.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and not os.environ.get("REQUIRE_PROMETHEUS_TESTS"):
    pytest.skip("prometheus is not installed (scripts/install-prometheus installs Debian's package)",
                allow_module_level=True)

_MESSAGES = 40
_WAIT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[object]:
    """Start a Prometheus scraping `target` (HOST:PORT of a /metrics) every second; its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        assert PROMETHEUS is not None, "prometheus is not installed"
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy" / "prometheus" / "smsgw-alerts.yml")],
            "scrape_configs": [{"job_name": "smsgw", "static_configs": [{"targets": [target], "labels": {"role": "serve"}}]}],
        }))
        with open(tmp_path / "prometheus.log", "wb") as log:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            ))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + _WAIT
        while True:  # ready, and the target scraped twice (the first scrape comes a few seconds in)
            try:
                if _numbers(_query(base, "count_over_time(up[1m]) >= 2")):
                    return base
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            assert procs[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def _watch(server: ServerProcess, seen: list[object]) -> None:
    """A WatchMessages stream for the run (the watch-stream panels need one); it ends with its deadline."""
    try:
        with Client(server.grpc_target, server.token) as client:
            for event in client.watch_messages(after_event_id=0, timeout=20):
                seen.append(event.message_id)
    except Exception:  # noqa: BLE001 — the deadline, or the server stopping
        pass


def _query(base: str, expr: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        doc = json.loads(response.read())
    assert doc["status"] == "success", (expr, doc)
    return list(doc["data"]["result"])


def _numbers(result: list[dict[str, object]]) -> list[float]:
    return [float(r["value"][1]) for r in result if not math.isnan(float(r["value"][1]))]  # type: ignore[index]


def _concrete(expr: str) -> str:
    """A panel's query as Grafana sends it with every role and instance and a 30 s rate window."""
    return expr.replace("$role", ".*").replace("$instance", ".*").replace("$__rate_interval", "30s")


def test_every_panel_query_returns_data_and_the_counters_match_the_run(
    tmp_path: Path, prometheus_for: object
) -> None:
    with Receiver(default=204) as receiver, ServerProcess(tmp_path / "data", env=private_webhook_env()) as server:
        metrics = server.endpoints["metrics"]
        base = prometheus_for(metrics.removeprefix("http://").removesuffix("/metrics"))  # type: ignore[operator]
        sim = subprocess.Popen(
            [SMSGW, "simulate", "--server", server.grpc_target, "--token-file", str(server.token_file()),
             "--devices", "3", "--state-file", str(tmp_path / "phones.json"), "--device-url", server.device_url,
             "--reconnect-scale", "0.02", "--duration", "120", "--send-delay", "0.01", "--delivery-delay", "0.01",
             "--failure-rate", "0.3", "--failure-class", "invalid_number", "--android-limit", "0",
             "--private-token-env", "TEST_PRIVATE_TOKEN"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TEST_PRIVATE_TOKEN": PRIVATE_TOKEN},
        )
        try:
            with Client(server.grpc_target, server.token) as client:
                receiver.secret = client.webhooks.create(receiver.url, ["sms:delivered", "sms:failed"]).secret
                deadline = time.monotonic() + _WAIT
                while sum(d.online for d in client.list_devices().devices) < 3:
                    assert time.monotonic() < deadline, "the simulated phones did not connect"
                    time.sleep(0.1)
                watched: list[object] = []
                watcher = threading.Thread(target=_watch, args=(server, watched), daemon=True)
                watcher.start()
                time.sleep(0.5)  # the watch stream is open
                ids = [client.send_message([f"+1555000{i:04d}"], f"load {i}").id for i in range(_MESSAGES)]
                with pytest.raises(Exception):
                    open_raw(server.device_url, "Bearer not-a-device-token")  # an upgrade refused
                with pytest.raises(Exception), Client(server.grpc_target) as anonymous:
                    anonymous.issue_token("admin", "not the password")  # an auth failure
                deadline = time.monotonic() + _WAIT
                while True:
                    states = [client.get_message(i).state for i in ids]
                    if all(s in (common_pb2.DELIVERED, common_pb2.FAILED) for s in states):
                        break
                    assert time.monotonic() < deadline, states
                    time.sleep(0.2)
        finally:
            sim.terminate()  # the phones close their sessions (session ends are counted)
            sim.wait(30)
        time.sleep(4)  # a few scrapes after the last change

        empty = [(title, _query(base, _concrete(expr))) for title, expr in expressions()
                 if not _numbers(_query(base, _concrete(expr)))]
        assert not empty, f"{len(empty)} panel queries return no data: {empty}"

        delivered, failed = states.count(common_pb2.DELIVERED), states.count(common_pb2.FAILED)
        assert delivered and failed  # the run exercised both
        exact = {
            "sum(smsgw_gateway_messages_accepted_total)": _MESSAGES,
            'sum(smsgw_message_transitions_total{state="DELIVERED"})': delivered,
            'sum(smsgw_message_transitions_total{state="FAILED",failure_class="invalid_number"})': failed,
            'sum(grpc_server_handled_total{grpc_method="SendMessage",grpc_code="OK"})': _MESSAGES,
            'sum(smsgw_message_latency_seconds_count{stage="delivered"})': delivered,
            'sum(smsgw_gateway_auth_failures_total{reason="password"})': 1,
            'sum(smsgw_bridge_upgrades_refused_total{status="401"})': 1,
        }
        got = {expr: _numbers(_query(base, expr)) for expr in exact}
        assert got == {expr: [float(n)] for expr, n in exact.items()}
        # The rules loaded and evaluated (none fires on a healthy run).
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as response:
            rules = json.loads(response.read())["data"]["groups"][0]["rules"]
        assert len(rules) >= 9 and all(r["health"] == "ok" for r in rules), rules
        assert not [r["name"] for r in rules if r["state"] == "firing"]
