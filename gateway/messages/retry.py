"""Which send failures are retried, and after how long.

A phone reports a failure class with each FAILED receipt (device.proto FailureClass). The
radio and the OS limit come back on their own, so those are tried again later; a refused
number, a block or an envelope the phone cannot open will fail the same way every time.
A failure after a part went out is never retried: the recipient would get that part twice.
"""

from __future__ import annotations

import random

__all__ = ["RETRYABLE", "FINAL", "backoff"]

RETRYABLE = frozenset({"limit_exceeded", "no_service", "radio_off"})
FINAL = frozenset({"invalid_number", "blocked", "decrypt_failed", "generic_failure"})


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempt + 1`: base * 4**(attempt-1), capped, +-20 % jitter
    (so phones that lost the radio together do not all retry in the same second)."""
    delay = min(cap, base * 4 ** max(attempt - 1, 0))
    return delay * rng.uniform(0.8, 1.2)
