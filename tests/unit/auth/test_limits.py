"""gateway.auth.limits with an injected clock (RELIABILITY 26): refusal and recovery after refill."""

from __future__ import annotations

import pytest

from gateway.auth.limits import FailureTracker, RateLimiter


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_burst_passes_then_the_next_is_refused_with_the_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=20.0, burst=40, clock=clock)
    assert [limiter.take("t") for _ in range(40)] == [0.0] * 40
    wait = limiter.take("t")
    assert wait > 0
    assert wait == pytest.approx(1 / 20.0, rel=1e-6)
    # Refused requests take nothing: still refused, with the same wait, at the same instant.
    assert limiter.take("t") == pytest.approx(wait)


def test_recovery_after_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert limiter.take("t") == 0
    wait = limiter.take("t")
    assert wait == pytest.approx(0.5)
    clock.advance(wait / 2)
    assert limiter.take("t") == pytest.approx(0.25)  # half refilled: the wait shrinks
    clock.advance(0.25)
    assert limiter.take("t") == 0
    assert limiter.take("t") > 0
    # A long pause refills to the burst, never beyond it.
    clock.advance(3600)
    assert [limiter.take("t") for _ in range(3)] == [0.0] * 3
    assert limiter.take("t") > 0


def test_sustained_rate_is_the_configured_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=8.0, burst=1, clock=clock)
    allowed = 0
    for _ in range(640):  # 10 s in steps of 1/64 s (exact in binary floating point)
        allowed += limiter.take("t") == 0
        clock.advance(1 / 64)
    assert allowed == 80


def test_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0 and limiter.take("b") == 0
    assert limiter.take("b") > 0
    assert limiter.take("a") > 0


def test_the_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.take(key) == 0
    assert limiter.take("a") > 0  # "a" is now the most recently seen
    assert limiter.take("d") == 0  # evicts "b"
    assert len(limiter._buckets) == 3
    assert set(limiter._buckets) == {"a", "c", "d"}
    assert limiter.take("a") > 0  # still remembered, still limited
    assert limiter.take("b") == 0  # forgotten: more lenient, never stricter
    for i in range(1000):
        limiter.take(f"k{i}")
    assert len(limiter._buckets) == 3


# ---- FailureTracker ------------------------------------------------------------------


def test_limit_failures_within_the_window_lock_out() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=3, window=60, lockout=300, clock=clock)
    assert tracker.locked_for("ip") == 0
    assert tracker.fail("ip") is False
    clock.advance(10)
    assert tracker.fail("ip") is False
    clock.advance(10)
    assert tracker.fail("ip") is True
    assert tracker.locked_for("ip") == pytest.approx(300)
    assert tracker.locked_for("other") == 0
    clock.advance(299)
    assert tracker.locked_for("ip") == pytest.approx(1)
    clock.advance(1)
    assert tracker.locked_for("ip") == 0  # the lockout ends after the time passes
    # ...and the count starts afresh.
    assert tracker.fail("ip") is False
    assert tracker.locked_for("ip") == 0


def test_failures_spread_beyond_the_window_do_not_lock_out() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=3, window=60, lockout=300, clock=clock)
    for _ in range(20):
        assert tracker.fail("ip") is False
        clock.advance(31)  # at most two failures in any 60 s
    assert tracker.locked_for("ip") == 0


def test_succeed_clears_its_accounts_count_but_not_an_active_lockout() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=3, window=60, lockout=300, clock=clock)
    tracker.fail("ip", "alice")
    tracker.fail("ip", "alice")
    tracker.succeed("ip", "alice")  # her own typos are forgiven
    assert tracker.fail("ip", "alice") is False
    assert tracker.fail("ip", "alice") is False
    assert tracker.fail("ip", "alice") is True
    tracker.succeed("ip", "alice")
    assert tracker.locked_for("ip") == pytest.approx(300)


def test_alternating_guesses_and_sign_ins_to_another_account_lock_out() -> None:
    """Issue 14, item 5: 9 wrong guesses at admin, 1 good sign-in with one's own account, and
    again; a success reset the whole count of the address, so this never locked."""
    clock = FakeClock()
    tracker = FailureTracker(limit=10, window=300, lockout=300, clock=clock)
    guesses = 0
    for _ in range(3):  # bounded: 30 guesses at most
        for _ in range(9):
            guesses += 1
            if tracker.fail("ip", "admin"):
                break
            clock.advance(0.01)
        if tracker.locked_for("ip"):
            break
        tracker.succeed("ip", "mallory")
    assert tracker.locked_for("ip") == pytest.approx(300)
    assert guesses == 10  # the tenth guess at admin locks, whatever came between


def test_a_success_keeps_failures_naming_no_account() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=3, window=60, lockout=300, clock=clock)
    tracker.fail("ip")  # a bad bearer token: no account known
    tracker.fail("ip", "admin")
    tracker.succeed("ip", "mallory")
    tracker.succeed("ip", "")  # names no account: clears nothing
    assert tracker.fail("ip", "mallory") is True


def test_counts_still_decay_with_the_window() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=3, window=60, lockout=300, clock=clock)
    tracker.fail("ip", "admin")
    tracker.fail("ip", "admin")
    tracker.succeed("ip", "mallory")
    clock.advance(61)
    assert tracker.fail("ip", "admin") is False  # the two older ones left the window
    assert tracker.fail("ip", "bob") is False
    assert tracker.fail("ip", "admin") is True


def test_sources_are_independent() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=2, window=60, lockout=30, clock=clock)
    tracker.fail("a")
    tracker.fail("b")
    assert tracker.locked_for("a") == 0 and tracker.locked_for("b") == 0
    assert tracker.fail("a") is True
    assert tracker.locked_for("a") > 0
    assert tracker.locked_for("b") == 0


def test_failure_table_is_bounded() -> None:
    clock = FakeClock()
    tracker = FailureTracker(limit=5, window=60, lockout=30, clock=clock, max_keys=10)
    for i in range(1000):
        tracker.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(tracker._failures) <= 10


def test_lockout_table_is_bounded() -> None:
    """Lockouts of addresses that never come back must not pile up (an address spray)."""
    clock = FakeClock()
    tracker = FailureTracker(limit=1, window=60, lockout=300, clock=clock, max_keys=10)
    for i in range(1000):
        assert tracker.fail(f"2001:db8::{i:x}") is True
    assert len(tracker._locked_until) <= 10
    assert len(tracker._failures) <= 10
    assert tracker.locked_for("2001:db8::3e7") > 0  # the most recent lockouts are kept
