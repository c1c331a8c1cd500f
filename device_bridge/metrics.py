"""Bridge metrics, created once; no device ids or numbers as labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BridgeMetrics"]


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
        self.closes = Counter("smsgw_bridge_closes_total", "Sessions closed, by close code", ["code"], registry=registry)
        self.wake_to_reconnect = Histogram(
            "smsgw_bridge_wake_to_reconnect_seconds",
            "From a wake-up push sent to an offline phone to its next session open",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )
