"""One table of a bench run: each figure beside the bare library's and the target."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "rows", "render"]


@dataclass(frozen=True)
class Row:
    measure: str
    ours: float | None
    unit: str
    bare: float | None = None  # the bare library's figure from the same run
    target: str = ""  # e.g. "<= 2", ">= 1/3 bare"
    met: bool | None = None


def _get(results: dict[str, Any], *path: str) -> float | None:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _at_least(value: float | None, limit: float | None) -> bool | None:
    return None if value is None or limit is None else value >= limit


def _bare_cpu_ms_per_call(raw: dict[str, Any]) -> float | None:
    """The bare grpc.aio echo server's CPU per unary call, in ms."""
    return _bare_cpu_ms(raw, "grpc_unary", "calls_per_s")


def _bare_cpu_ms(raw: dict[str, Any], name: str, rate_key: str) -> float | None:
    """A bare server's CPU per operation, in ms (its CPU share over its rate)."""
    rate, cpu = _get(raw, name, rate_key), _get(raw, name, "server_cpu_percent")
    return None if not rate or cpu is None else 10 * cpu / rate


# What one message costs at least in the bare libraries: its SendMessage, the five events
# (PENDING, DISPATCHED, ACCEPTED, SENT, DELIVERED) one watcher is sent on its one stream, and
# two WebSocket round trips (the Deliver, three receipts and their Acks are five frames or more).
_FLOOR_EVENTS = 5
_FLOOR_ROUND_TRIPS = 2


def _floor_ms_per_message(raw: dict[str, Any]) -> float | None:
    parts = (
        _bare_cpu_ms_per_call(raw),
        _bare_cpu_ms(raw, "grpc_stream_one", "messages_per_s"),
        _bare_cpu_ms(raw, "ws_echo", "messages_per_s"),
    )
    if any(p is None for p in parts):
        return None
    unary, event, round_trip = parts
    assert unary is not None and event is not None and round_trip is not None
    return unary + _FLOOR_EVENTS * event + _FLOOR_ROUND_TRIPS * round_trip


def _cpu_rows(tag: str, what: str, r: dict[str, Any], unit: str, bare: float | None) -> list[Row]:
    """Server CPU per `unit` against the issue-15 target (<= 1 ms), and the fleet's beside it:
    the fleet must cost less than the server, or the server's figure is capped by its phones."""
    server = _get(r, f"server_cpu_ms_per_{unit}")
    fleet = _get(r, f"fleet_cpu_ms_per_{unit}")
    out = []
    if server is not None:
        out.append(Row(f"{tag}server CPU per {unit} ({what})", server, "ms", bare, "<= 1.0", _at_most(server, 1.0)))
    if fleet is not None:
        met = None if server is None else fleet < server
        out.append(Row(f"{tag}fleet CPU per {unit} ({what})", fleet, "ms", None, "< server", met))
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    raw = results.get("raw", {})
    unary = _get(raw, "grpc_unary", "calls_per_s")
    bare_cpu = _bare_cpu_ms_per_call(raw)
    out: list[Row] = []
    for db in ("sqlite", "postgres", "split"):
        r = results.get(db)
        if not isinstance(r, dict):
            continue
        tag = f"[{db}] "
        for scenario in ("latency", "throughput", "bulk", "idle", "storm"):
            failed = r.get(scenario)
            if isinstance(failed, dict) and "error" in failed:
                out.append(Row(f"{tag}{scenario}: did not finish ({str(failed['error'])[:70]})", None, "", met=False))
        lat = r.get("latency")
        if isinstance(lat, dict) and "error" not in lat:
            ws_p50 = _get(raw, "ws_echo", "p50_ms_one_connection")
            p50 = _get(lat, "deliver_after_return", "p50_ms")
            p99 = _get(lat, "deliver_after_return", "p99_ms")
            shape = f"{lat['offered_per_s']:.0f} msg/s over {lat['phones']} phones"
            out.append(Row(f"{tag}SendMessage return -> phone Deliver p50 ({shape})", p50, "ms", ws_p50, "<= 2", _at_most(p50, 2)))
            out.append(Row(f"{tag}SendMessage return -> phone Deliver p95", _get(lat, "deliver_after_return", "p95_ms"), "ms"))
            out.append(Row(f"{tag}SendMessage return -> phone Deliver p99", p99, "ms", None, "<= 20", _at_most(p99, 20)))
            out.append(Row(f"{tag}SendMessage call -> phone Deliver p50", _get(lat, "deliver_after_call", "p50_ms"), "ms"))
            for p in ("p50", "p95", "p99"):
                out.append(Row(f"{tag}SendMessage return -> DELIVERED on WatchMessages {p}",
                               _get(lat, "delivered_after_return", f"{p}_ms"), "ms"))
            out += _cpu_rows(tag, f"latency run, to DELIVERED, {lat['offered_per_s']:.0f} msg/s", lat, "message", bare_cpu)
        thr = r.get("throughput")
        if isinstance(thr, dict) and "error" not in thr:
            rate = _get(thr, "accepted_per_s")
            third = unary / 3 if unary else None
            out.append(Row(f"{tag}SendMessage -> ACCEPTED, sustained ({thr['phones']} phones, {thr['in_flight']} in flight)",
                           rate, "msg/s", unary, ">= 1/3 bare", _at_least(rate, third)))
            out += _cpu_rows(tag, f"throughput run, to DELIVERED, {thr['in_flight']} in flight", thr, "message", bare_cpu)
        blk = r.get("bulk")
        if isinstance(blk, dict) and "error" not in blk:
            rate = _get(blk, "recipients_per_s")
            out.append(Row(f"{tag}SendMessages bulk enqueue ({blk['calls']} calls)", rate, "recipients/s", None, ">= 10000",
                           _at_least(rate, 10_000)))
            per = _get(blk, "server_cpu_us_per_recipient")
            if per is not None:
                out.append(Row(f"{tag}server CPU per recipient (bulk enqueue)", per, "us", None, "<= 60", _at_most(per, 60)))
        idle = r.get("idle")
        if isinstance(idle, dict) and "error" not in idle:
            per = _get(idle, "rss_kib_per_session")
            cpu = _get(idle, "idle_cpu_percent")
            n = idle["phones"] if idle.get("asked", idle["phones"]) == idle["phones"] else f"{idle['phones']} of {idle['asked']}"
            out.append(Row(f"{tag}idle sessions: RSS per session ({n} phones)", per, "KiB",
                           _get(raw, "ws_idle", "rss_kib_per_connection"), "<= 40", _at_most(per, 40)))
            out.append(Row(f"{tag}idle sessions: CPU for keepalives ({n} phones)", cpu, "% of a core",
                           _get(raw, "ws_idle", "cpu_percent_idle"), "<= 25", _at_most(cpu, 25)))
            out += _cpu_rows(tag, f"{idle.get('opened', 0)} idle phones connecting", idle, "open",
                             _get(raw, "ws_idle", "server_cpu_ms_per_open"))
        storm = r.get("storm")
        if isinstance(storm, dict) and "error" not in storm:
            drained = _get(storm, "drained_s")
            ok = _at_most(drained, 30) if storm.get("all_accepted") else False
            out.append(Row(f"{tag}reconnect storm: {storm['phones']} phones back and 1 message each ACCEPTED", drained, "s",
                           None, "<= 30", ok))
            out += _cpu_rows(tag, "storm: session open + its 1 message", storm, "reconnect", None)
    sqlite_cpu = _get(results, "sqlite", "throughput", "server_cpu_ms_per_message")
    postgres_cpu = _get(results, "postgres", "throughput", "server_cpu_ms_per_message")
    if sqlite_cpu and postgres_cpu is not None:
        ratio = postgres_cpu / sqlite_cpu
        out.append(Row("[postgres] server CPU per message / SQLite's (throughput runs)", ratio, "x", None, "<= 1.5",
                       _at_most(ratio, 1.5)))
    split_cpu = _get(results, "split", "throughput", "server_cpu_ms_per_message")
    if postgres_cpu and split_cpu is not None:
        out.append(Row("[split] CPU per message of gateway + bridge + worker / serve on PostgreSQL's", split_cpu / postgres_cpu,
                       "x"))
        out.append(Row("[split] extra CPU per message over serve on PostgreSQL", split_cpu - postgres_cpu, "ms"))
    if unary is not None:
        out.append(Row("bare grpc.aio unary echo (64 in flight)", unary, "calls/s"))
    if bare_cpu is not None:
        out.append(Row("bare grpc.aio unary echo: server CPU per call", bare_cpu, "ms"))
    for name, key, unit in (("bare grpc.aio server-streaming (100 streams)", ("grpc_stream", "messages_per_s"), "msg/s"),
                            ("bare grpc.aio server-streaming (1 stream)", ("grpc_stream_one", "messages_per_s"), "msg/s"),
                            ("bare websockets.trio echo (100 connections)", ("ws_echo", "messages_per_s"), "msg/s")):
        value = _get(raw, *key)
        if value is not None:
            out.append(Row(name, value, unit))
    for name, value in (
        ("bare grpc.aio server-streaming (1 stream): server CPU per message", _bare_cpu_ms(raw, "grpc_stream_one", "messages_per_s")),
        ("bare websockets.trio echo: server CPU per round trip", _bare_cpu_ms(raw, "ws_echo", "messages_per_s")),
        (f"floor per message: 1 unary call + {_FLOOR_EVENTS} events on 1 stream + {_FLOOR_ROUND_TRIPS} ws round trips",
         _floor_ms_per_message(raw)),
    ):
        if value is not None:
            out.append(Row(name, value, "ms"))
    doze = results.get("dozing")
    if isinstance(doze, dict) and "error" in doze:
        out.append(Row(f"[dozing] did not finish ({str(doze['error'])[:70]})", None, "", met=False))
    elif isinstance(doze, dict):
        # Beside "[sqlite] SendMessage return -> DELIVERED on WatchMessages": the connected phone's.
        for p in ("p50", "p95"):
            out.append(Row(f"[dozing] SendMessage return -> DELIVERED, phone woken by FCM push {p} "
                           f"({doze['delivered']}/{doze['messages']} messages, {doze['pushes']} pushes)",
                           _get(doze, "delivered_after_return", f"{p}_ms"), "ms"))
    return out


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "never"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def render(table: list[Row], *, quick: bool = False) -> str:
    header = ("measure", "smsgw", "unit", "bare", "ratio", "target", "")
    lines = []
    for row in table:
        ratio = "-"
        if row.ours is not None and row.bare and not math.isinf(row.ours):
            ratio = f"{row.ours / row.bare:.2f}"
        verdict = "" if row.met is None else ("ok" if row.met else "MISS")
        lines.append((row.measure, _number(row.ours), row.unit, _number(row.bare), ratio, row.target, verdict))
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 2, 5, 6) else '>'}{w}}}" for i, w in enumerate(widths))
    text = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    text += [fmt.format(*line) for line in lines]
    if quick:
        text.append("(--quick: small counts for a smoke run; the targets are for the full run)")
    return "\n".join(text)
