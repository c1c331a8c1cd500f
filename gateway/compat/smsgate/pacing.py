"""SMSGate's send-rate settings as smsgw's device pacing (docs/smsgate.md, "Settings").

SMSGate's phone waits a random `send_interval_min`..`send_interval_max` seconds between
messages and sends at most `limit_value` messages per `limit_period`. smsgw paces per SIM with
sliding windows (gateway.messages.pacing), so the settings map onto every SIM's limits of
each of the account's phones, through the same DeviceService call as gRPC's
UpdateDeviceSettings (the bridge applies it live):

- `send_interval_min` -> `min_interval_ms` (s x 1000); `send_interval_max` has no counterpart
  (smsgw adds no random delay) and is only stored;
- `limit_period` + `limit_value`: PerMinute -> `parts_per_minute`, PerHour -> `parts_per_hour`,
  Per30Minutes -> `parts_per_hour` (the same figure per hour: never more than asked in any 30
  minutes), PerDay -> `parts_per_day`, each at most smsgw's own bounds; smsgw counts SMS parts,
  SMSGate messages, so a long text uses more of the figure here;
- whatever the settings leave unset (null, absent, `Disabled`) is the server's default
  (`scheduler.*`); SIM overrides set through gRPC get the same figures; the phone-wide cap
  (Android's 30 parts a minute) and `priority_bypass` stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.auth.records import Caller
from gateway.devices.service import DeviceService
from gateway.errors import NotFound
from gateway.messages.pacing import DevicePacing, SimLimits

__all__ = ["inputs", "apply", "apply_to_devices"]

_KEYS = ("send_interval_min", "limit_period", "limit_value")
_WINDOW = {"PerMinute": "parts_per_minute", "Per30Minutes": "parts_per_hour", "PerHour": "parts_per_hour",
           "PerDay": "parts_per_day"}
# smsgw's bounds (gateway.api.devices): a figure above them is no limit a phone could reach.
_MAX = {"parts_per_minute": 1000, "parts_per_hour": 60_000, "parts_per_day": 1_000_000, "min_interval_ms": 3_600_000}


def inputs(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """The settings that pacing depends on: when they did not change, pacing is not touched."""
    messages = settings.get("messages") or {}
    return tuple(messages.get(k) for k in _KEYS)


def apply(settings: Mapping[str, Any], current: DevicePacing, base: DevicePacing) -> DevicePacing:
    """`current` with the figures the settings give (or `base`'s where they give none)."""
    interval, period, value = inputs(settings)
    figures = {
        "min_interval_ms": base.default.min_interval_ms if interval is None else min(interval * 1000, _MAX["min_interval_ms"]),
        "parts_per_minute": base.default.parts_per_minute,
        "parts_per_hour": base.default.parts_per_hour,
        "parts_per_day": base.default.parts_per_day,
    }
    window = _WINDOW.get(period or "")
    if window is not None and isinstance(value, int):
        figures[window] = min(value, _MAX[window])

    def limits(x: SimLimits) -> SimLimits:
        return replace(x, **figures)

    return replace(current, default=limits(current.default), sims={k: limits(v) for k, v in current.sims.items()})


async def apply_to_devices(devices: DeviceService, caller: Caller, settings: Mapping[str, Any]) -> int:
    """Store the pacing on every phone of the caller's account; returns how many."""
    base = devices.messages.base_pacing
    phones = await devices.list(caller.owner_id)
    done = 0
    for phone in phones:
        try:
            current, _ = await devices.settings(caller.owner_id, phone.id)
            await devices.update_settings(caller, phone.id, apply(settings, current, base))
        except NotFound:  # deleted meanwhile
            continue
        done += 1
    return done
