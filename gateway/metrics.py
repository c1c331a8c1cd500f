"""Gateway metrics (prometheus-client), created once; labels only from small fixed sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics", "RpcMetrics", "AUTH_FAILURE_REASONS"]

AUTH_FAILURE_REASONS = ("password", "refresh", "access_token", "undecodable")


def _counter_over(registry: CollectorRegistry, name: str, documentation: str, label: str, values: Sequence[str]) -> Counter:
    """A counter with one label whose every value is exported from the start (at 0), so a
    rate over it has data before the first event."""
    counter = Counter(name, documentation, [label], registry=registry)
    for value in values:
        counter.labels(value)
    return counter


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages_accepted = Counter(
            "smsgw_gateway_messages_accepted_total", "Messages stored by SendMessage and SendMessages", registry=registry
        )
        self.recipients_accepted = Counter(
            "smsgw_gateway_recipients_accepted_total", "Recipients stored by SendMessage and SendMessages", registry=registry
        )
        self.idempotent_replays = Counter(
            "smsgw_gateway_idempotent_replays_total",
            "Sends (SendMessage calls, SendMessages items) answered with an existing message (same idempotency key)",
            registry=registry,
        )
        self.auth_failures = _counter_over(
            registry, "smsgw_gateway_auth_failures_total",
            "Failed authentications by what failed: password (or malformed sign-in), refresh token, "
            "access_token (bearer), undecodable (a request that does not parse)",
            "reason", AUTH_FAILURE_REASONS,
        )
        self.tokens_issued = _counter_over(
            registry, "smsgw_gateway_tokens_issued_total", "Token pairs issued, by sign-in or refresh",
            "kind", ("issue", "refresh"),
        )
        self.refresh_reuse = Counter(
            "smsgw_gateway_refresh_reuse_total",
            "Spent refresh tokens presented again (their token family was revoked)",
            registry=registry,
        )
        self.limited = _counter_over(
            registry, "smsgw_gateway_limited_total",
            "Calls refused by a limit: token (per-token rate), source (sign-in rate or lockout), owner (daily cap), "
            "server (too many big calls queued)",
            "limit", ("token", "source", "owner", "server"),
        )
        self.webhook_attempts = _counter_over(
            registry, "smsgw_webhook_attempts_total",
            "Webhook HTTP attempts by verdict: succeeded, retry, final (not retried), gone (410)",
            "verdict", ("succeeded", "retry", "final", "gone"),
        )
        self.webhook_latency = Histogram(
            "smsgw_webhook_latency_seconds",
            "Webhook attempt time, connect to answer",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
        )
        self.webhook_state_changes = _counter_over(
            registry, "smsgw_webhook_state_changes_total",
            "Webhooks that became active, failing (a delivery gave up) or disabled",
            "state", ("active", "failing", "disabled"),
        )
        self.fcm_wakes = _counter_over(
            registry, "smsgw_fcm_wakes_total",
            "Wake-up pushes to offline phones by outcome: sent, failed (after retries), invalid_token, "
            "unauthorized (FCM refused our credentials: alert)",
            "outcome", ("sent", "failed", "invalid_token", "unauthorized"),
        )
        self.fcm_invalid_tokens = Counter(
            "smsgw_fcm_invalid_tokens_total",
            "Phones' push tokens FCM refused (UNREGISTERED, not a valid token): no pushes until a new one",
            registry=registry,
        )
        self.reaped_sessions = Counter(
            "smsgw_worker_reaped_sessions_total",
            "Phone sessions of dead bridges (no heartbeat, lock free) the worker closed",
            registry=registry,
        )
        # gRPC server metrics under the ecosystem's names and labels (go-grpc-prometheus,
        # py-grpc-prometheus): dashboards and alerts written for them work unchanged.
        rpc = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter("grpc_server_started_total", "RPCs started on the server", rpc, registry=registry)
        self.grpc_handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, whatever their status", [*rpc, "grpc_code"],
            registry=registry,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds", "Time from an RPC's start to its end (a stream: its whole life)", rpc,
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300, 3600),
        )
        self.grpc_received = Counter(
            "grpc_server_msg_received_total", "Request messages received", rpc, registry=registry
        )
        self.grpc_sent = Counter("grpc_server_msg_sent_total", "Response messages sent", rpc, registry=registry)
        self.watch_streams = Gauge(
            "smsgw_gateway_watch_streams", "Open WatchMessages and WatchInbound streams", ["grpc_method"], registry=registry
        )
        # One-time passwords (gateway/otp): never a code, only counts. Conversion in Grafana:
        # rate(smsgw_otp_checks_total{result="approved"}) / rate(smsgw_otp_started_total).
        self.otp_started = Counter("smsgw_otp_started_total", "Verifications started (a code made and sent)", registry=registry)
        self.otp_resends = Counter(
            "smsgw_otp_resends_total", "Codes sent again for a pending verification (StartVerification again)",
            registry=registry,
        )
        self.otp_checks = _counter_over(
            registry, "smsgw_otp_checks_total", "Codes checked, by result", "result",
            ("approved", "denied", "expired", "max_attempts", "canceled"),
        )
        self.otp_expired = Counter(
            "smsgw_otp_expired_total", "Verifications that ran out of time unapproved", registry=registry
        )
        self.otp_blocked = _counter_over(
            registry, "smsgw_otp_blocked_total", "Sends refused, by reason", "reason",
            ("cooldown", "number", "prefix", "owner", "pumping", "country", "premium"),
        )
        # Phones on SMSGate's mobile API (gateway/compat/smsgate/mobile_phones.py).
        self.smsgate_sessions = Gauge(
            "smsgw_smsgate_sessions", "SMSGate-app phones with a session on this gateway (online)", registry=registry
        )
        self.smsgate_streams = Gauge("smsgw_smsgate_event_streams", "Open SSE streams of SMSGate-app phones", registry=registry)
        self.smsgate_pulled = Counter(
            "smsgw_smsgate_pulled_messages_total", "Messages handed to SMSGate-app phones by their pulls (first time)",
            registry=registry,
        )
        self.smsgate_reports = _counter_over(
            registry, "smsgw_smsgate_reports_total", "State reports from SMSGate-app phones (PATCH /message items)",
            "state", ("Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelling", "Cancelled"),
        )


class RpcMetrics:
    """One method's gRPC server series, its label children looked up once (a call then costs
    a few increments, not a label lookup each)."""

    def __init__(self, metrics: GatewayMetrics, method: str, grpc_type: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self._labels = (grpc_type, service, name)
        self._handled = metrics.grpc_handled
        self._codes: dict[str, Any] = {}
        self.started = metrics.grpc_started.labels(*self._labels)
        self.seconds = metrics.grpc_seconds.labels(*self._labels)
        self.received = metrics.grpc_received.labels(*self._labels)
        self.sent = metrics.grpc_sent.labels(*self._labels)
        self.streams = metrics.watch_streams.labels(name) if grpc_type == "server_stream" else None

    def handled(self, code: str) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(*self._labels, code)
        child.inc()
