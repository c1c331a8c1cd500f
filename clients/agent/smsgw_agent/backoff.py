"""Reconnect delays of a phone (RELIABILITY 8).

* The first attempt after a reset waits uniform[0, 5 s): RFC 6455 section
  7.2.3 asks clients to spread their first reconnect so that a bridge restart
  does not bring every phone back in the same instant.
* Then 1 s x 1.6^n with +/-20 % jitter, capped at 120 s (gRPC's connection
  backoff).
* :meth:`Backoff.reset` after every Welcome, so a phone that got in starts
  again from the random first delay next time.

``scale`` multiplies every delay (tests and the simulator's
``--reconnect-scale`` shrink them; the bounds above hold at ``scale=1``).
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Reconnect delay generator; not thread-safe, one per phone.

    Args:
        first_max: Upper bound (exclusive) of the first delay after a reset.
        base: Nominal second delay; the n-th after that is ``base * factor**n``.
        factor: Growth per attempt.
        jitter: Relative jitter of the exponential delays (0.2 = +/-20 %).
        cap: No delay exceeds this (before ``scale``).
        scale: Multiplies every delay (1.0 in production).
        rng: Random source; tests pass a seeded one.

    Raises:
        ValueError: A negative bound, ``factor < 1``, ``jitter`` outside 0..1,
            or ``cap < base``.
    """

    __slots__ = ("_attempt", "_rng", "base", "cap", "factor", "first_max", "jitter", "scale")

    def __init__(
        self,
        *,
        first_max: float = 5.0,
        base: float = 1.0,
        factor: float = 1.6,
        jitter: float = 0.2,
        cap: float = 120.0,
        scale: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if first_max < 0 or base < 0 or cap < 0 or scale < 0:
            raise ValueError("backoff bounds and scale must not be negative")
        if factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if not 0 <= jitter <= 1:
            raise ValueError("backoff jitter must be in 0..1")
        if cap < base:
            raise ValueError("backoff cap must be at least base")
        self.first_max = first_max
        self.base = base
        self.factor = factor
        self.jitter = jitter
        self.cap = cap
        self.scale = scale
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    def __repr__(self) -> str:
        return f"<Backoff attempt={self._attempt} scale={self.scale}>"

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """Return the seconds to wait before the next connection attempt."""
        if self._attempt == 0:
            # random() is in [0, 1), so the first delay never reaches first_max.
            delay = self._rng.random() * self.first_max
        else:
            delay = min(self._nominal(self._attempt - 1), self.cap)
            delay *= 1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)
            delay = min(delay, self.cap)
        self._attempt += 1
        return delay * self.scale

    def reset(self) -> None:
        """Start over from the random first delay; call it after each Welcome."""
        self._attempt = 0

    def _nominal(self, n: int) -> float:
        try:
            return self.base * self.factor**n
        except OverflowError:
            return self.cap
