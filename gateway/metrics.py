"""Gateway metrics (prometheus-client), created once; labels only from small fixed sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["GatewayMetrics"]


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
        self.auth_failures = Counter(
            "smsgw_gateway_auth_failures_total",
            "Failed authentications (bad password, bad/revoked/reused token)",
            registry=registry,
        )
        self.tokens_issued = Counter(
            "smsgw_gateway_tokens_issued_total", "Token pairs issued, by sign-in or refresh", ["kind"], registry=registry
        )
        self.refresh_reuse = Counter(
            "smsgw_gateway_refresh_reuse_total",
            "Spent refresh tokens presented again (their token family was revoked)",
            registry=registry,
        )
        self.limited = Counter(
            "smsgw_gateway_limited_total",
            "Calls refused by a limit: token (per-token rate), source (sign-in rate or lockout), owner (daily cap), "
            "server (too many big calls queued)",
            ["limit"],
            registry=registry,
        )
        for kind in ("issue", "refresh"):
            self.tokens_issued.labels(kind)
        for limit in ("token", "source", "owner", "server"):
            self.limited.labels(limit)
        self.webhook_attempts = Counter(
            "smsgw_webhook_attempts_total",
            "Webhook HTTP attempts by verdict: succeeded, retry, final (not retried), gone (410)",
            ["verdict"],
            registry=registry,
        )
        for verdict in ("succeeded", "retry", "final", "gone"):
            self.webhook_attempts.labels(verdict)
        self.webhook_latency = Histogram(
            "smsgw_webhook_latency_seconds",
            "Webhook attempt time, connect to answer",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
        )
        self.webhook_state_changes = Counter(
            "smsgw_webhook_state_changes_total",
            "Webhooks that became active, failing (a delivery gave up) or disabled",
            ["state"],
            registry=registry,
        )
        for state in ("active", "failing", "disabled"):
            self.webhook_state_changes.labels(state)
        self.fcm_wakes = Counter(
            "smsgw_fcm_wakes_total",
            "Wake-up pushes to offline phones by outcome: sent, failed (after retries), invalid_token, "
            "unauthorized (FCM refused our credentials: alert)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("sent", "failed", "invalid_token", "unauthorized"):
            self.fcm_wakes.labels(outcome)
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
        self.rpc_seconds = Histogram(
            "smsgw_gateway_rpc_seconds",
            "Unary RPC handling time",
            ["rpc", "code"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
