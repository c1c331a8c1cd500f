"""Rate limits kept in memory (RELIABILITY 26): a token bucket per key, and a failed-
authentication counter per source address with a temporary lockout.

The clock is injected (`time.monotonic` by default) so tests refill buckets and end
lockouts without sleeping. Tables are bounded: the least recently seen keys are forgotten
first, which can only make a limit more lenient, never lock someone out wrongly.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenBucket", "RateLimiter", "FailureTracker", "Clock"]

Clock = Callable[[], float]
_MAX_KEYS = 100_000


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token. Returns 0 on success, else the seconds until one is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key (an access token's jti, a source address)."""

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic, max_keys: int = _MAX_KEYS) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds to wait (for RetryInfo)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, float(self.burst), now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class FailureTracker:
    """Counts failed authentications per source address, each tagged with the account it aimed
    at; `limit` within `window` s locks the address out for `lockout` s.

    A successful sign-in forgives only that address's failures against the same account (its
    user's typos), never those against other accounts or naming none: otherwise anyone with an
    account could reset the count between guesses at another one (issue 14, item 5).
    """

    def __init__(
        self, limit: int, window: float, lockout: float, *, clock: Clock = time.monotonic, max_keys: int = _MAX_KEYS
    ) -> None:
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def locked_for(self, source: str) -> float:
        """Seconds `source` stays locked out (0 = not locked)."""
        until = self._locked_until.get(source)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[source]
            return 0.0
        return left

    def fail(self, source: str, account: str = "") -> bool:
        """Record a failure from `source` against `account` ("" = none known); True when this
        one locked the source out."""
        now = self.clock()
        times = self._failures.get(source)
        if times is None:
            times = self._failures[source] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        times.append((now, account))
        while times and now - times[0][0] > self.window:
            times.popleft()
        if len(times) >= self.limit:
            # Re-inserted so that the table is in lockout order; bounded like the counts.
            self._locked_until.pop(source, None)
            self._locked_until[source] = now + self.lockout
            if len(self._locked_until) > self.max_keys:
                del self._locked_until[next(iter(self._locked_until))]
            times.clear()
            return True
        return False

    def succeed(self, source: str, account: str) -> None:
        """A successful sign-in to `account` from `source` clears the failures from `source`
        against `account` (not those against other accounts, nor an active lockout)."""
        times = self._failures.get(source)
        if times is None or not account:
            return
        kept = [entry for entry in times if entry[1] != account]
        if not kept:
            del self._failures[source]
        elif len(kept) < len(times):
            times.clear()
            times.extend(kept)
