"""The bench's floor per message: what the bare libraries cost for the parts every message
has (a unary call, five watcher events on one stream, two WebSocket round trips)."""

from __future__ import annotations

import pytest

from gateway.bench.report import rows


def _raw(unary_cpu: float, stream_cpu: float, ws_cpu: float) -> dict[str, object]:
    # CPU percent and rates chosen so the CPU per operation is 10 * cpu / rate ms.
    return {
        "grpc_unary": {"calls_per_s": 4000.0, "server_cpu_percent": unary_cpu},
        "grpc_stream": {"messages_per_s": 40000.0, "server_cpu_percent": 90.0},
        "grpc_stream_one": {"messages_per_s": 10000.0, "server_cpu_percent": stream_cpu},
        "ws_echo": {"messages_per_s": 20000.0, "server_cpu_percent": ws_cpu},
    }


def _floor(raw: dict[str, object]) -> float | None:
    found = [r.ours for r in rows({"raw": raw}) if r.measure.startswith("floor per message")]
    return found[0] if found else None


def test_the_floor_adds_a_call_five_events_and_two_round_trips() -> None:
    # 0.25 ms a call, 0.08 ms an event, 0.05 ms a round trip: 0.25 + 0.40 + 0.10.
    assert _floor(_raw(100.0, 80.0, 100.0)) == pytest.approx(0.75)


def test_no_floor_without_every_part() -> None:
    raw = _raw(100.0, 80.0, 100.0)
    del raw["grpc_stream_one"]
    assert _floor(raw) is None
