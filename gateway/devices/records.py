"""Domain records for devices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

__all__ = ["SimRecord", "DeviceRecord", "DeviceIdentity", "sims_to_json", "sims_from_json"]


@dataclass(frozen=True, slots=True)
class SimRecord:
    slot: int
    operator_name: str = ""
    country_iso: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    owner_id: str
    name: str
    online: bool
    last_seen: datetime | None
    sims: tuple[SimRecord, ...]
    app_version: str
    created_at: datetime
    pending: int
    # False until the phone opened a session with its device token: paired, but the Welcome
    # (and the token in it) may never have reached it.
    connected_with_token: bool
    # FCM wake-ups (gateway/push): FCM is on and the phone's token is usable; the last push;
    # FCM refused its token.
    wakeable: bool = False
    last_woken_at: datetime | None = None
    push_token_invalid: bool = False


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a bridge session speaks for, once its credential checked out."""

    device_id: str
    owner_id: str


def sims_to_json(sims: tuple[SimRecord, ...]) -> str:
    return json.dumps([[s.slot, s.operator_name, s.country_iso] for s in sims])


def sims_from_json(raw: str) -> tuple[SimRecord, ...]:
    return tuple(SimRecord(int(a), str(b), str(c)) for a, b, c in json.loads(raw or "[]"))
