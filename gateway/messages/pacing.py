"""Send pacing per SIM and per phone: when may this SIM send these parts to this number?

The limits are sliding windows over what the bridge dispatched (the `dispatch_log`), not
token buckets: a bucket of rate R and depth B lets B + R parts through in one minute, and
the limit a phone must stay under (Android: 30 parts in any 60 s per app) is itself a
sliding window. A window never lets more than its figure through in any interval of its
length, so "24 parts per minute" holds for every minute, and the bridge can say exactly
when the next slot frees (`ready_at`).

Pure logic over an in-memory history: the repository loads the history of one phone,
asks `ready_at` for each candidate and records what it dispatched (`record`).
"""

from __future__ import annotations

import json
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

__all__ = ["ANDROID_PARTS_PER_MINUTE", "PHONE_WINDOW", "SimLimits", "DevicePacing", "Sent", "PacingHistory", "month_start", "history_span", "BYPASS_PRIORITY"]

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
# Windows are closed, [now - span, now], as Android's SmsUsageMonitor counts (it keeps a send
# exactly one period old): a send leaves the window this long after `at + span`.
_TICK = timedelta(milliseconds=1)
# The phone-wide cap guards Android's 30 parts per 60 s, counted on the phone when it sends,
# while we count when we dispatch: network jitter between two Delivers could fit more than our
# figure into the phone's 60 s. Counting the phone-wide window over 62 s absorbs up to 2 s of it.
PHONE_WINDOW = MINUTE + timedelta(seconds=2)
#: Android's SmsUsageMonitor default: parts per 60 s per app. A phone-wide cap may not exceed it
#: (0 = no phone-wide cap, for a sender that is not an Android phone).
ANDROID_PARTS_PER_MINUTE = 30
#: Messages at or above this priority skip the SIM limits where the phone's settings allow it.
BYPASS_PRIORITY = 100


@dataclass(frozen=True, slots=True)
class SimLimits:
    """Limits of one SIM; 0 = no such limit."""

    parts_per_minute: int = 24
    min_interval_ms: int = 2500
    parts_per_hour: int = 0
    parts_per_day: int = 0
    recipients_per_month: int = 0


@dataclass(frozen=True, slots=True)
class DevicePacing:
    """What the bridge applies to one phone: a default for its SIMs, overrides by slot,
    the phone-wide cap (Android's per-app limit) and whether priority >= 100 may bypass
    the SIM limits."""

    default: SimLimits = SimLimits()
    sims: dict[int, SimLimits] = field(default_factory=dict)
    phone_parts_per_minute: int = 27
    priority_bypass: bool = False

    def for_sim(self, slot: int) -> SimLimits:
        return self.sims.get(slot, self.default)

    @property
    def unpaced(self) -> bool:
        """No limit at all: dispatch skips loading the history."""
        limits = [self.default, *self.sims.values()]
        return self.phone_parts_per_minute == 0 and all(x == SimLimits(0, 0, 0, 0, 0) for x in limits)

    def to_json(self) -> str:
        """The per-device overrides as stored in `device.settings_json`."""
        return json.dumps(
            {
                "default": asdict(self.default),
                "sims": {str(k): asdict(v) for k, v in sorted(self.sims.items())},
                "phone_parts_per_minute": self.phone_parts_per_minute,
                "priority_bypass": self.priority_bypass,
            }
        )

    @classmethod
    def from_json(cls, raw: str, base: DevicePacing) -> DevicePacing:
        """Stored overrides on top of `base` (the config defaults); "{}" or "" = `base`."""
        data = json.loads(raw or "{}")
        if not data:
            return base
        return replace(
            base,
            default=SimLimits(**data["default"]),
            sims={int(k): SimLimits(**v) for k, v in data.get("sims", {}).items()},
            phone_parts_per_minute=int(data["phone_parts_per_minute"]),
            priority_bypass=bool(data["priority_bypass"]),
        )


@dataclass(frozen=True, slots=True)
class Sent:
    """One dispatch: `parts` parts to `number` from SIM `sim` at `at`."""

    at: datetime
    sim: int
    parts: int
    number: str = ""


def month_start(t: datetime) -> datetime:
    return datetime(t.year, t.month, 1, tzinfo=UTC)


def _next_month(t: datetime) -> datetime:
    return datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)


class PacingHistory:
    """One phone's recent dispatches, in time order, and the distinct numbers per SIM this month."""

    def __init__(self, sent: Iterable[Sent] = (), month_numbers: dict[int, set[str]] | None = None) -> None:
        self._sent = sorted(sent, key=lambda s: s.at)
        self._month = month_numbers if month_numbers is not None else {}

    def record(self, sent: Sent) -> None:
        """Add a dispatch, in time order: a claim at create and a round may commit their
        claims in the other order than their clocks read (each reads `now` before its job
        runs), and the windows and the minimum interval need the latest send last."""
        if self._sent and sent.at < self._sent[-1].at:
            insort(self._sent, sent, key=lambda s: s.at)
        else:
            self._sent.append(sent)
        if sent.number:
            self._month.setdefault(sent.sim, set()).add(sent.number)

    def forget_before(self, t: datetime) -> None:
        """Drop the dispatches before `t` (older than every window: they no longer count)."""
        start = bisect_left([s.at for s in self._sent], t)
        if start:
            del self._sent[:start]

    def start_month(self) -> None:
        """A new calendar month: no number counts against the distinct-recipients cap yet."""
        self._month = {}

    def last_at(self, sim: int) -> datetime:
        """When SIM `sim` last sent (the epoch if never): the rotation's tie-break."""
        return max((s.at for s in self._sent if s.sim == sim), default=datetime.min.replace(tzinfo=UTC))

    def ready_at(self, pacing: DevicePacing, sim: int, parts: int, number: str, now: datetime, *, bypass: bool) -> datetime:
        """The earliest time (>= now) SIM `sim` may send `parts` parts to `number`.

        A send larger than a window's whole figure may go when that window is empty, so an
        oversized message waits but never starves.
        """
        limits = pacing.for_sim(sim)
        mine = [s for s in self._sent if s.sim == sim]
        ready = self._window(self._sent, pacing.phone_parts_per_minute, PHONE_WINDOW, parts, now)
        if bypass:
            return ready
        if limits.min_interval_ms and mine:
            ready = max(ready, mine[-1].at + timedelta(milliseconds=limits.min_interval_ms))
        for limit, span in ((limits.parts_per_minute, MINUTE), (limits.parts_per_hour, HOUR), (limits.parts_per_day, DAY)):
            ready = max(ready, self._window(mine, limit, span, parts, now))
        if self.month_full(pacing, sim, number):
            ready = max(ready, _next_month(now))
        return ready

    def month_full(self, pacing: DevicePacing, sim: int, number: str) -> bool:
        """Whether `number` would be one distinct recipient too many for SIM `sim` this month."""
        cap = pacing.for_sim(sim).recipients_per_month
        if not cap or not number:
            return False
        numbers = self._month.get(sim, set())
        return number not in numbers and len(numbers) >= cap

    @staticmethod
    def _window(sent: list[Sent], limit: int, span: timedelta, parts: int, now: datetime) -> datetime:
        """When `parts` more fit under `limit` parts in any closed `span`: drop the oldest sends
        inside the window until they do; the last one dropped leaves it just after `at + span`."""
        if not limit:
            return now
        start = bisect_left([s.at for s in sent], now - span)
        inside = sent[start:]
        used = sum(s.parts for s in inside)
        if used + parts <= limit or not inside:
            return now
        need = used + parts - limit
        for s in inside:
            need -= s.parts
            if need <= 0:
                return max(now, s.at + span + _TICK)
        return max(now, inside[-1].at + span + _TICK)  # oversized (parts > limit): wait for an empty window


def history_span(pacing: DevicePacing) -> timedelta:
    """How far back a phone's history must reach for these limits (a minimum interval
    longer than a minute included: it needs the SIM's last send)."""
    spans = [PHONE_WINDOW]
    for limits in (pacing.default, *pacing.sims.values()):
        spans.append(timedelta(milliseconds=limits.min_interval_ms))
        if limits.parts_per_hour:
            spans.append(HOUR)
        if limits.parts_per_day:
            spans.append(DAY)
    return max(spans)
