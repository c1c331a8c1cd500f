"""Bridge metrics, created once; no device ids or numbers as labels."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BridgeMetrics", "WindowCollector", "CLOSE_CODES", "sim_label"]

# Close codes named as themselves in the label; any other (a phone may send 3000-4999) is "other".
CLOSE_CODES = frozenset({1000, 1001, 1002, 1006, 1007, 1008, 1009, 1011, 1012, *range(4000, 4007)})


def sim_label(sim: int) -> str:
    return "default" if sim == 0 else str(sim) if 0 < sim <= 8 else "other"


class _Windowed(Protocol):
    @property
    def window_in_use(self) -> tuple[int, int]:
        """(Delivers in flight, the window)."""


class WindowCollector(Collector):
    """The open sessions' flow-control windows, summed at scrape time (nothing per Deliver)."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[_Windowed] = weakref.WeakSet()

    def track(self, session: _Windowed) -> None:
        self._sessions.add(session)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = size = 0
        for session in list(self._sessions):
            in_flight, window = session.window_in_use
            used += in_flight
            size += window
        yield GaugeMetricFamily("smsgw_bridge_window_in_flight", "Delivers in flight to phones (not yet accepted)", value=used)
        yield GaugeMetricFamily("smsgw_bridge_window_size", "The open sessions' flow-control windows, summed", value=size)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("smsgw_bridge_sessions", "Open phone sessions", registry=registry)
        self.handshakes = Counter(
            "smsgw_bridge_handshakes_total", "Session handshakes by outcome", ["outcome"], registry=registry
        )
        self.delivers = Counter("smsgw_bridge_delivers_total", "Deliver frames sent to phones", registry=registry)
        self.receipts = Counter(
            "smsgw_bridge_receipts_total", "Receipts received from phones", ["state"], registry=registry
        )
        self.inbound = Counter(
            "smsgw_bridge_inbound_total",
            "Inbound SMS received from phones: stored, or repeated (a re-send already stored)",
            ["outcome"],
            registry=registry,
        )
        self.drops = Counter("smsgw_bridge_drops_total", "Drop frames sent to phones", registry=registry)
        self.rejects = Counter(
            "smsgw_bridge_rejects_total", "Device events refused for good (Reject frames), by reason", ["reason"],
            registry=registry,
        )
        self.closed = Counter(
            "smsgw_bridge_sessions_closed_total",
            "Sessions ended, by who ended them (bridge, phone, network: no close frame) and close code "
            "(known codes; other)",
            ["side", "code"],
            registry=registry,
        )
        self.upgrades_refused = Counter(
            "smsgw_bridge_upgrades_refused_total",
            "WebSocket upgrades answered with an HTTP error instead of a session, by status",
            ["status"],
            registry=registry,
        )
        self.parts = Counter(
            "smsgw_bridge_parts_dispatched_total",
            "SMS parts handed to phones in Delivers, by the SIM slot asked for (default: the phone's choice)",
            ["sim"],
            registry=registry,
        )
        self.window = WindowCollector()
        registry.register(self.window)
        self.wake_to_reconnect = Histogram(
            "smsgw_bridge_wake_to_reconnect_seconds",
            "From a wake-up push sent to an offline phone to its next session open",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )
