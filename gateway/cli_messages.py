"""`smsgw show | cancel | reschedule` and `smsgw devices settings`: one message's whereabouts,
and a phone's pacing. Numbers are printed redacted, bodies never."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from smsgw.v1 import common_pb2, devices_pb2, messages_pb2
from smsgw_client import Client

from gateway.redact import redact_number

__all__ = ["parse_time", "show", "cancel", "reschedule", "device_settings"]

EXIT_OK = 0


def parse_time(value: str) -> datetime:
    """ISO 8601 for argparse; a time without an offset is UTC."""
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r} (e.g. 2026-12-24T09:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _when(ts: object) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S") if ts.ByteSize() else "-"  # type: ignore[attr-defined]


def print_message(m: messages_pb2.Message) -> None:
    state = common_pb2.State.Name(m.state)
    print(f"{m.id} {state}  parts={m.parts} {m.encoding}  priority={m.priority}  attempts={m.attempts}")
    if m.HasField("schedule_at"):
        print(f"  scheduled for {_when(m.schedule_at)} UTC")
    if m.HasField("valid_until"):
        print(f"  valid until   {_when(m.valid_until)} UTC")
    if m.last_error:
        print(f"  last error    {m.last_error}")
    for i, r in enumerate(m.recipients):
        line = (
            f"  #{i} {redact_number(r.phone_number)} {common_pb2.State.Name(r.state)}"
            f"  attempt {r.attempt}  sim {r.sim_number or '-'}"
            f"  parts sent {r.parts_sent}/{r.parts_total} delivered {r.parts_delivered}/{r.parts_total}"
        )
        if r.HasField("next_attempt_at"):
            line += f"  next attempt {_when(r.next_attempt_at)} UTC"
        if r.error or r.last_error:
            line += f"  ({r.error or r.last_error})"
        print(line)


def show(client: Client, args: argparse.Namespace) -> int:
    print_message(client.get_message(args.message_id))
    return EXIT_OK


def cancel(client: Client, args: argparse.Namespace) -> int:
    print_message(client.cancel_message(args.message_id))
    return EXIT_OK


def reschedule(client: Client, args: argparse.Namespace) -> int:
    print_message(client.reschedule_message(args.message_id, None if args.now else args.at))
    return EXIT_OK


# The SimPacing fields `smsgw devices settings` sets (its flags have the same names).
_LIMIT_FIELDS = ("parts_per_minute", "min_interval_ms", "parts_per_hour", "parts_per_day", "recipients_per_month")


def device_settings(client: Client, args: argparse.Namespace) -> int:
    """Show a phone's pacing; with options, change it (read, change, write back)."""
    current = client.get_device_settings(args.device_id)
    changes = {name: getattr(args, name) for name in _LIMIT_FIELDS if getattr(args, name) is not None}
    changing = changes or args.phone_parts_per_minute is not None or args.priority_bypass is not None
    if args.reset:
        current = client.update_device_settings(devices_pb2.DeviceSettings(device_id=args.device_id), reset=True)
    elif changing:
        target = current.default_pacing
        if args.sim:
            found = [s for s in current.sims if s.slot == args.sim]
            if found:
                target = found[0]
            else:
                target = current.sims.add()
                target.CopyFrom(current.default_pacing)
                target.slot = args.sim
        for name, value in changes.items():
            setattr(target, name, value)
        if args.phone_parts_per_minute is not None:
            current.phone_parts_per_minute = args.phone_parts_per_minute
        if args.priority_bypass is not None:
            current.priority_bypass = args.priority_bypass
        current = client.update_device_settings(current)
    _print_settings(current)
    return EXIT_OK


def _print_settings(s: devices_pb2.DeviceSettings) -> None:
    print(f"{s.device_id}  {'custom' if s.customized else 'server defaults'}")
    print(f"  phone: {s.phone_parts_per_minute or 'no limit'} parts/min over all SIMs; "
          f"priority >= 100 {'bypasses' if s.priority_bypass else 'does not bypass'} SIM limits")
    for label, p in [("every SIM", s.default_pacing), *((f"SIM {x.slot}", x) for x in s.sims)]:
        print(
            f"  {label}: {p.parts_per_minute or '-'} parts/min, >= {p.min_interval_ms / 1000:g} s apart, "
            f"{p.parts_per_hour or '-'}/h, {p.parts_per_day or '-'}/day, {p.recipients_per_month or '-'} numbers/month"
        )
