"""`smsgw bench --quick`, the CI smoke run: it completes, prints the table and writes every
section of the JSON. Numbers are not checked (tests never assert on wall-clock figures);
the full run and its targets are docs/performance.md."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers.postgres import PG_ADMIN
from tests.helpers.server import SMSGW


def test_quick_bench_runs_every_scenario_and_prints_the_table(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    run = subprocess.run(
        # --quick with even smaller counts: the suite's time budget; the scenarios are the same.
        [SMSGW, "bench", "--quick", "--phones", "10", "--idle-phones", "40", "--bulk", "500",
         "--output", str(output), "--work-dir", str(tmp_path / "work"), "--postgres", PG_ADMIN, "--topology", "split"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = run.stdout
    for measure in (
        "SendMessage return -> phone Deliver p50", "DELIVERED on WatchMessages p99", "SendMessage -> ACCEPTED, sustained",
        "SendMessages bulk enqueue", "idle sessions: RSS per session", "idle sessions: CPU for keepalives",
        "reconnect storm", "bare grpc.aio unary echo", "bare websockets.trio echo",
        "server CPU per message", "fleet CPU per message", "server CPU per recipient", "server CPU per reconnect",
        "fleet CPU per reconnect", "bare grpc.aio unary echo: server CPU per call",
        "bare grpc.aio server-streaming (1 stream): server CPU per message", "floor per message: 1 unary call",
    ):
        assert measure in table, f"{measure!r} missing from the table:\n{table}"
    assert "[postgres] SendMessage -> ACCEPTED" in table
    # --topology split: gateway + bridge + worker on PostgreSQL, beside serve, and the cost of the split.
    for measure in ("[split] SendMessage -> ACCEPTED", "[split] SendMessage return -> phone Deliver p50",
                    "[split] extra CPU per message over serve on PostgreSQL"):
        assert measure in table, f"{measure!r} missing from the table:\n{table}"
    results = json.loads(output.read_text())
    sqlite = results["sqlite"]
    assert sqlite["latency"]["all_delivered"] and sqlite["latency"]["send_errors"] == 0
    assert sqlite["throughput"]["all_accepted"] and sqlite["throughput"]["messages"] > 0
    assert sqlite["bulk"]["item_errors"] == 0
    assert sqlite["idle"]["still_connected"] == sqlite["idle"]["phones"]
    assert sqlite["storm"]["all_accepted"] and sqlite["storm"]["accepted"] == sqlite["storm"]["phones"]
    assert results["postgres"]["throughput"]["all_accepted"]
    assert results["split"]["throughput"]["all_accepted"] and results["split"]["latency"]["all_delivered"]
    # The dozing phone: every message delivered after one push each (issue 17).
    assert "[dozing] SendMessage return -> DELIVERED, phone woken by FCM push p50" in table
    dozing = results["dozing"]
    assert dozing["delivered"] == dozing["messages"] == dozing["pushes"] == 3
    # CPU per operation, the server's and the fleet's apart (present; values are not checked).
    for scenario, unit in (("latency", "message"), ("throughput", "message"), ("storm", "reconnect")):
        assert {f"server_cpu_ms_per_{unit}", f"fleet_cpu_ms_per_{unit}"} <= set(sqlite[scenario]), scenario
    assert "server_cpu_us_per_recipient" in sqlite["bulk"]
    assert set(results["raw"]) == {"grpc_unary", "grpc_stream", "grpc_stream_one", "ws_echo", "ws_idle"}


def test_bench_refuses_bad_counts(tmp_path: Path) -> None:
    run = subprocess.run([SMSGW, "bench", "--quick", "--phones", "0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2 and "--phones must be positive" in run.stderr
