"""The Grafana dashboard (issue 18), generated from this file with grafana-foundation-sdk:
`scripts/gen-dashboard` writes `deploy/grafana/smsgw.json` (and `--check` fails when the
committed JSON differs). The panels are data (`ROWS`) so that the real-Prometheus test
(`tests/integration/test_prometheus.py`) runs every query of every panel, and
`docs/operations.md` lists them (a test checks that it names every panel and query).

Every query selects `role=~"$role"` and `instance=~"$instance"`: Prometheus adds `instance`
to every series, and the scrape config in docs/operations.md adds `role` (serve, gateway,
bridge, worker) to each target.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["PanelSpec", "ROWS", "SEL", "build", "expressions", "UID"]

UID = "smsgw-overview"
SEL = 'role=~"$role",instance=~"$instance"'
RATE = "$__rate_interval"


def _rate(metric: str, labels: str = "", by: str = "") -> str:
    selector = f"{{{SEL}{',' + labels if labels else ''}}}"
    grouped = f"sum by ({by}) " if by else "sum "
    return f"{grouped}(rate({metric}{selector}[{RATE}]))"


def _quantile(q: float, metric: str, labels: str = "", by: str = "") -> str:
    selector = f"{{{SEL}{',' + labels if labels else ''}}}"
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{selector}[{RATE}])))"


def _gauge(metric: str, labels: str = "", agg: str = "sum", by: str = "") -> str:
    selector = f"{{{SEL}{',' + labels if labels else ''}}}"
    grouped = f"{agg} by ({by}) " if by else f"{agg} "
    return f"{grouped}({metric}{selector})"


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat, heatmap
    width: int = 8


_FINALS = 'state=~"DELIVERED|FAILED|EXPIRED|CANCELLED"'
_DELIVERED = 'state="DELIVERED"'
_APPROVED = 'result="approved"'

ROWS: list[tuple[str, list[PanelSpec]]] = [
    ("Overview", [
        PanelSpec("Phones online", "Open phone sessions on the bridges.",
                  ((_gauge("smsgw_bridge_sessions"), "online"),), kind="stat", width=4),
        PanelSpec("Send rate", "Messages accepted by SendMessage and SendMessages, per second.",
                  ((_rate("smsgw_gateway_messages_accepted_total"), "messages/s"),), unit="reqps", kind="stat", width=4),
        PanelSpec("Delivered ratio", "Recipients that reached DELIVERED among those that reached a final state.",
                  ((f'{_rate("smsgw_message_transitions_total", _DELIVERED)}'
                    f' / {_rate("smsgw_message_transitions_total", _FINALS)}', "delivered"),),
                  unit="percentunit", kind="stat", width=4),
        PanelSpec("Pending", "PENDING messages whose time has come, and how long the oldest has waited.",
                  ((_gauge("smsgw_messages_pending", agg="max"), "pending"),
                   (_gauge("smsgw_messages_oldest_pending_age_seconds", agg="max"), "oldest (s)")), kind="stat", width=4),
        PanelSpec("API to phone p50 / p99", "From a message's creation to its Deliver (the DISPATCHED commit).",
                  ((_quantile(0.5, "smsgw_message_latency_seconds", 'stage="dispatched"'), "p50"),
                   (_quantile(0.99, "smsgw_message_latency_seconds", 'stage="dispatched"'), "p99")), unit="s", width=8),
    ]),
    ("Phones", [
        PanelSpec("Sessions by instance", "Open sessions per bridge process.",
                  ((_gauge("smsgw_bridge_sessions", by="instance"), "{{instance}}"),)),
        PanelSpec("Handshakes by outcome", "Session opens: ok, bad credentials, busy (503), bad subprotocol.",
                  ((_rate("smsgw_bridge_handshakes_total", by="outcome"), "{{outcome}}"),), unit="ops"),
        PanelSpec("Session ends by side and code", "Who ended each session (bridge, phone, network) and the close code.",
                  ((_rate("smsgw_bridge_sessions_closed_total", by="side, code"), "{{side}} {{code}}"),), unit="ops"),
        PanelSpec("Upgrades refused by status", "WebSocket upgrades answered with an HTTP error.",
                  ((_rate("smsgw_bridge_upgrades_refused_total", by="status"), "{{status}}"),), unit="ops"),
        PanelSpec("Flow-control windows", "Delivers in flight (not yet accepted) against the open windows' size.",
                  ((_gauge("smsgw_bridge_window_in_flight"), "in flight"), (_gauge("smsgw_bridge_window_size"), "window"))),
        PanelSpec("Parts handed out per SIM", "SMS parts in Delivers, by the SIM slot asked for.",
                  ((_rate("smsgw_bridge_parts_dispatched_total", by="sim"), "SIM {{sim}}"),), unit="ops"),
    ]),
    ("Messages", [
        PanelSpec("State changes", "Recipients reaching each state, per second.",
                  ((_rate("smsgw_message_transitions_total", by="state"), "{{state}}"),), unit="ops", width=12),
        PanelSpec("Failures by class", "FAILED recipients by failure class (other: failed by the server).",
                  ((_rate("smsgw_message_transitions_total", 'state="FAILED"', by="failure_class"), "{{failure_class}}"),),
                  unit="ops", width=12),
        PanelSpec("Latency by stage p50", "From creation to dispatched, accepted, sent, delivered.",
                  ((_quantile(0.5, "smsgw_message_latency_seconds", by="stage"), "{{stage}}"),), unit="s"),
        PanelSpec("Latency by stage p99", "From creation to dispatched, accepted, sent, delivered.",
                  ((_quantile(0.99, "smsgw_message_latency_seconds", by="stage"), "{{stage}}"),), unit="s"),
        PanelSpec("Creation to DELIVERED", "Distribution over time (heatmap of the latency histogram).",
                  ((f'sum by (le) (increase(smsgw_message_latency_seconds_bucket{{{SEL},stage="delivered"}}[{RATE}]))',
                    "{{le}}"),), unit="s", kind="heatmap"),
    ]),
    ("API", [
        PanelSpec("RPCs by method and code", "gRPC calls completed, per second.",
                  ((_rate("grpc_server_handled_total", by="grpc_method, grpc_code"), "{{grpc_method}} {{grpc_code}}"),),
                  unit="reqps", width=12),
        PanelSpec("Unary RPC p99 by method", "Handling time of unary calls.",
                  ((_quantile(0.99, "grpc_server_handling_seconds", 'grpc_type="unary"', by="grpc_method"),
                    "{{grpc_method}}"),), unit="s", width=12),
        PanelSpec("Watch streams open", "WatchMessages and WatchInbound streams open.",
                  ((_gauge("smsgw_gateway_watch_streams", by="grpc_method"), "{{grpc_method}}"),)),
        PanelSpec("Stream messages sent", "Events sent on server streams, per second.",
                  ((_rate("grpc_server_msg_sent_total", 'grpc_type="server_stream"', by="grpc_method"),
                    "{{grpc_method}}"),), unit="ops"),
    ]),
    ("Webhooks", [
        PanelSpec("Attempts by verdict", "Webhook HTTP attempts: succeeded, retry, final, gone (410).",
                  ((_rate("smsgw_webhook_attempts_total", by="verdict"), "{{verdict}}"),), unit="ops"),
        PanelSpec("Attempt latency p99", "Connect to answer.",
                  ((_quantile(0.99, "smsgw_webhook_latency_seconds"), "p99"),), unit="s"),
        PanelSpec("Outbox backlog", "Deliveries not yet delivered or given up, and the oldest one's age.",
                  ((_gauge("smsgw_webhook_outbox_pending", agg="max"), "pending"),
                   (_gauge("smsgw_webhook_outbox_oldest_age_seconds", agg="max"), "oldest (s)"))),
    ]),
    ("Auth, limits and wake-ups", [
        PanelSpec("Auth failures by reason", "Failed sign-ins and refused tokens.",
                  ((_rate("smsgw_gateway_auth_failures_total", by="reason"), "{{reason}}"),), unit="ops"),
        PanelSpec("Calls refused by a limit", "Rate limits and the daily cap, by limit.",
                  ((_rate("smsgw_gateway_limited_total", by="limit"), "{{limit}}"),), unit="ops"),
        PanelSpec("Wake-up pushes by outcome", "FCM pushes to phones whose session is gone (docs/push.md).",
                  ((_rate("smsgw_fcm_wakes_total", by="outcome"), "{{outcome}}"),), unit="ops"),
    ]),
    ("One-time passwords", [
        PanelSpec("OTP verifications", "Verifications started and resent, and codes checked by result (docs/otp.md).",
                  ((_rate("smsgw_otp_started_total"), "started"), (_rate("smsgw_otp_resends_total"), "resent"),
                   (_rate("smsgw_otp_checks_total", by="result"), "checked {{result}}")), unit="ops"),
        PanelSpec("OTP conversion", "Approved checks per verification started: a fall is SMS pumping or a delivery problem.",
                  ((f'{_rate("smsgw_otp_checks_total", _APPROVED)} / clamp_min({_rate("smsgw_otp_started_total")}, 1e-9)',
                    "approved / started"),), unit="percentunit"),
        PanelSpec("OTP sends refused by reason", "Limits, the destination allowlist and the SMS-pumping guard.",
                  ((_rate("smsgw_otp_blocked_total", by="reason"), "{{reason}}"),), unit="ops"),
    ]),
    ("Storage and process", [
        PanelSpec("Commit time p99", "A write transaction's COMMIT (the fsync on SQLite).",
                  ((_quantile(0.99, "smsgw_storage_commit_seconds"), "p99"),), unit="s"),
        PanelSpec("Group-commit batch size", "Write jobs per transaction, on average.",
                  ((f'{_rate("smsgw_storage_commit_batch_size_sum")} / {_rate("smsgw_storage_commit_batch_size_count")}',
                    "jobs per commit"),)),
        PanelSpec("CPU", "CPU seconds per second, per process.",
                  ((_rate("process_cpu_seconds_total", by="instance"), "{{instance}}"),), unit="percentunit"),
        PanelSpec("Memory", "Resident memory per process.",
                  ((_gauge("process_resident_memory_bytes", by="instance"), "{{instance}}"),), unit="bytes"),
        PanelSpec("Open file descriptors", "Sockets and files per process.",
                  ((_gauge("process_open_fds", by="instance"), "{{instance}}"),)),
        PanelSpec("Garbage collections", "Python GC collections per second, by generation.",
                  ((_rate("python_gc_collections_total", by="generation"), "gen {{generation}}"),), unit="ops"),
    ]),
]


def expressions() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    for _, panels in ROWS:
        for panel in panels:
            for expr, _legend in panel.queries:
                yield panel.title, expr


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (grafana-foundation-sdk validates the shape)."""
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

    source = DataSourceRef(type_val="prometheus", uid="${datasource}")
    builder = (
        db.Dashboard("smsgw")
        .uid(UID)
        .tags(["smsgw", "sms"])
        .description("smsgw: phones, messages, API, webhooks, storage (docs/operations.md)")
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("role").label("Role").datasource(source)
            .query("label_values(smsgw_build_info, role)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True).multi(True).all_value(".*")
        )
        .with_variable(
            db.QueryVariable("instance").label("Instance").datasource(source)
            .query('label_values(smsgw_build_info{role=~"$role"}, instance)').refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True).multi(True).all_value(".*")
        )
    )
    kinds: dict[str, Any] = {"timeseries": timeseries.Panel, "stat": stat.Panel, "heatmap": heatmap.Panel}
    for title, panels in ROWS:
        builder = builder.with_row(db.Row(title))
        for spec in panels:
            panel = kinds[spec.kind]().title(spec.title).description(spec.description).datasource(source)
            panel = panel.height(6).span(spec.width).unit(spec.unit)
            for ref, (expr, legend) in zip("ABCDEFGH", spec.queries, strict=False):
                query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
                if spec.kind == "heatmap":
                    query = query.format("heatmap")
                panel = panel.with_target(query)
            builder = builder.with_panel(panel)
    model: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return model

