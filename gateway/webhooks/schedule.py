"""What one attempt's outcome means (RELIABILITY 12), and when the next attempt comes.

2xx: delivered. 410: the receiver is gone, disable the webhook. 429/502/503/504: retry,
honouring Retry-After (capped). Other 5xx, timeouts and connection errors: retry. 3xx (no
redirect is followed) and other 4xx: final, never retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum

__all__ = ["Verdict", "Outcome", "judge", "retry_delay", "parse_retry_after"]

_HONOUR_RETRY_AFTER = frozenset({429, 502, 503, 504})


class Verdict(Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FINAL = "final"  # this delivery failed for good; the webhook stays as it is
    GONE = "gone"  # 410: disable the webhook


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    status_code: int = 0  # 0 = no HTTP answer
    error: str = ""
    retry_after: float | None = None  # seconds the receiver asked for


def judge(status_code: int, retry_after: str | None, now: datetime) -> Outcome:
    """Classify an HTTP answer."""
    if 200 <= status_code < 300:
        return Outcome(Verdict.SUCCEEDED, status_code)
    error = f"HTTP {status_code}"
    if status_code == 410:
        return Outcome(Verdict.GONE, status_code, error + ": the receiver says the endpoint is gone")
    if status_code in _HONOUR_RETRY_AFTER:
        return Outcome(Verdict.RETRY, status_code, error, parse_retry_after(retry_after, now))
    if status_code >= 500:
        return Outcome(Verdict.RETRY, status_code, error)
    if 300 <= status_code < 400:
        return Outcome(Verdict.FINAL, status_code, error + ": redirects are not followed")
    return Outcome(Verdict.FINAL, status_code, error + ": not retried")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is also true for '²'
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    attempt: int, delays: tuple[float, ...], jitter: float, rng: random.Random, *,
    retry_after: float | None = None, retry_after_cap: float = 3600.0,
) -> float | None:
    """Seconds until attempt `attempt + 1` after attempt `attempt` (1-based) failed, or None
    when the schedule is exhausted. A Retry-After the receiver sent can only push the next
    attempt later (up to `retry_after_cap`), never sooner: every attempt uses up a place in
    the schedule, so a receiver answering "Retry-After: 1" must not burn the 3 days in
    seconds."""
    if attempt > len(delays):
        return None
    delay = delays[attempt - 1] * (1 + rng.uniform(-jitter, jitter))
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_cap))
    return delay
