"""gateway/otp/machine.py, the verification's pure state machine (issue 20), driven by
hypothesis through any sequence of checks (right or wrong code), cancels, looks (`settle`)
and a clock that only moves forward, against an independent model:

- a verification is approved at most once, and only while pending: never at or after its
  expiry, never after its attempts ran out, never after a cancel;
- `attempts_left` is never negative, and each denial takes exactly one;
- once a verification has ended its status (and attempts) never change again, and every
  later check answers why it ended.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.otp.machine import CheckResult, Status, Verification, cancel, check, settle

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

# Why a check of an ended verification says it ended (an approved one: its code worked once).
_ENDED_ANSWER = {
    Status.APPROVED: CheckResult.CANCELED, Status.EXPIRED: CheckResult.EXPIRED,
    Status.MAX_ATTEMPTS: CheckResult.MAX_ATTEMPTS, Status.CANCELED: CheckResult.CANCELED,
}

# Steps that land on, just before and just after the usual TTLs (60 s .. 30 min).
_STEPS = st.one_of(
    st.sampled_from([0.0, 0.000001, 1.0, 59.999999, 60.0, 60.000001, 300.0, 599.999999, 600.0, 1800.0]),
    st.floats(min_value=0, max_value=2000, allow_nan=False, allow_infinity=False),
)


class VerificationMachine(RuleBasedStateMachine):
    """The machine under test next to a model that only knows the rules in words."""

    @initialize(
        max_attempts=st.integers(1, 20),
        ttl=st.sampled_from([60.0, 600.0, 1800.0]) | st.floats(0.001, 1800.0),
        attempts_before=st.integers(0, 19),
    )
    def start(self, max_attempts: int, ttl: float, attempts_before: int) -> None:
        self.now = T0
        used = min(attempts_before, max_attempts - 1)  # a pending verification with some attempts spent
        self.v = Verification(Status.PENDING, used, max_attempts, T0 + timedelta(seconds=ttl))
        self.approvals = 0
        self.ended: Status | None = None
        self.ended_attempts = -1
        self.denials = 0
        self.log: list[str] = []

    # ---- the model ------------------------------------------------------------------------

    def _model_pending(self) -> bool:
        """Still takes a code: not ended, not expired."""
        return self.ended is None and self.now < self.v.expires_at

    def _after(self, before: Verification, after: Verification) -> None:
        """What every transition must respect."""
        assert after.max_attempts == before.max_attempts and after.expires_at == before.expires_at
        assert after.attempts >= before.attempts, "attempts never go back"
        assert after.attempts <= after.max_attempts
        if before.status is not Status.PENDING:
            assert after == before, f"an ended verification changed: {before} -> {after}"
        if after.status is not Status.PENDING and self.ended is None:
            self.ended, self.ended_attempts = after.status, after.attempts
        self.v = after

    # ---- rules -------------------------------------------------------------------------------

    @rule(step=_STEPS)
    def time_passes(self, step: float) -> None:
        self.now += timedelta(seconds=step)

    @rule(right=st.booleans())
    def check_code(self, right: bool) -> None:
        before, pending = self.v, self._model_pending()
        after, result = check(before, right, self.now)
        self.log.append(f"check({'right' if right else 'wrong'}) at +{(self.now - T0).total_seconds()}s -> {result.name}")
        if pending:
            if right:
                assert result is CheckResult.APPROVED and after.status is Status.APPROVED
                self.approvals += 1
            elif before.attempts + 1 >= before.max_attempts:
                assert result is CheckResult.MAX_ATTEMPTS and after.status is Status.MAX_ATTEMPTS
                assert after.attempts_left == 0
            else:
                assert result is CheckResult.DENIED and after.status is Status.PENDING
                assert after.attempts_left == before.attempts_left - 1, "a denial takes exactly one attempt"
                self.denials += 1
            assert after.attempts == before.attempts + 1
        elif self.ended is not None:
            assert result is _ENDED_ANSWER[self.ended], "a check of an ended verification says why it ended"
            assert after.status is self.ended
        else:  # pending in storage, but its time is up
            assert result is CheckResult.EXPIRED and after.status is Status.EXPIRED
            assert after.attempts == before.attempts, "a check after expiry uses no attempt"
        if result is CheckResult.APPROVED:
            assert right and pending, "approved only with the right code while pending"
        self._after(before, after)

    @rule()
    def cancel_it(self) -> None:
        before, pending = self.v, self._model_pending()
        after = cancel(before, self.now)
        self.log.append(f"cancel at +{(self.now - T0).total_seconds()}s -> {after.status.name}")
        if pending:
            assert after.status is Status.CANCELED
        elif self.ended is not None:
            assert after.status is self.ended
        else:
            assert after.status is Status.EXPIRED, "too late to cancel: it expired"
        assert after.attempts == before.attempts
        self._after(before, after)

    @rule()
    def look(self) -> None:
        """`settle`, what a read or the sweep does: only a pending one past expiry changes."""
        before, pending = self.v, self._model_pending()
        after = settle(before, self.now)
        if pending or self.ended is not None:
            assert after == before
        else:
            assert after.status is Status.EXPIRED and after.attempts == before.attempts
        self._after(before, after)

    @precondition(lambda self: self.ended is not None)
    @rule(right=st.booleans(), step=_STEPS)
    def ended_stays_ended(self, right: bool, step: float) -> None:
        """Whatever comes after the end, and however much later, changes nothing."""
        later = self.now + timedelta(seconds=step)
        assert check(self.v, right, later)[0] == self.v
        assert cancel(self.v, later) == self.v
        assert settle(self.v, later) == self.v

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def at_most_one_approval(self) -> None:
        assert self.approvals <= 1
        assert (self.v.status is Status.APPROVED) == (self.approvals == 1)

    @invariant()
    def attempts_left_in_range(self) -> None:
        left = self.v.attempts_left
        assert 0 <= left <= self.v.max_attempts
        if self.v.status is not Status.PENDING:
            assert left == 0
        else:
            assert left == self.v.max_attempts - self.v.attempts >= 1

    @invariant()
    def ended_is_final(self) -> None:
        if self.ended is not None:
            assert self.v.status is self.ended and self.v.attempts == self.ended_attempts

    @invariant()
    def expired_only_after_expiry(self) -> None:
        if self.v.status is Status.EXPIRED:
            assert self.now >= self.v.expires_at
        if self.v.status is Status.APPROVED:
            assert self.v.attempts >= 1


TestVerificationMachine = VerificationMachine.TestCase
TestVerificationMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None, database=None)


# ---- sequences the stateful test may take long to find ----------------------------------------


@settings(max_examples=200, deadline=None, database=None)
@given(max_attempts=st.integers(1, 20), guesses=st.integers(0, 1000), right_at_end=st.booleans())
def test_brute_force_is_cut_off_at_max_attempts(max_attempts: int, guesses: int, right_at_end: bool) -> None:
    """`guesses` wrong codes, then perhaps the right one: the right one approves only when
    fewer than max_attempts wrong ones came before it; after max_attempts wrong codes the
    answer is MAX_ATTEMPTS for good, right code or not."""
    v = Verification(Status.PENDING, 0, max_attempts, T0 + timedelta(minutes=10))
    now = T0
    results = []
    for _ in range(guesses):
        v, r = check(v, False, now)
        results.append(r)
        if v.status is not Status.PENDING:
            break
    denied = results.count(CheckResult.DENIED)
    assert denied == min(guesses, max_attempts - 1)
    assert v.attempts == min(guesses, max_attempts)
    if guesses >= max_attempts:
        assert results[max_attempts - 1] is CheckResult.MAX_ATTEMPTS and v.status is Status.MAX_ATTEMPTS
    if right_at_end:
        v, r = check(v, True, now)
        assert (r is CheckResult.APPROVED) == (guesses < max_attempts)
        if guesses >= max_attempts:
            assert r is CheckResult.MAX_ATTEMPTS and v.status is Status.MAX_ATTEMPTS


@settings(max_examples=200, deadline=None, database=None)
@given(
    ttl=st.floats(0.001, 1800.0),
    offset=st.floats(-1800.0, 1800.0).filter(lambda x: x != 0) | st.just(0.0),
    attempts=st.integers(0, 4),
)
def test_expiry_boundary(ttl: float, offset: float, attempts: int) -> None:
    """A right code approves strictly before expires_at and never at or after it."""
    expires = T0 + timedelta(seconds=ttl)
    v = Verification(Status.PENDING, attempts, 5, expires)
    now = expires + timedelta(seconds=offset)
    after, result = check(v, True, now)
    if now < expires:
        assert result is CheckResult.APPROVED and after.status is Status.APPROVED
    else:
        assert result is CheckResult.EXPIRED and after.status is Status.EXPIRED and after.attempts == attempts


def test_an_approved_code_does_not_approve_again() -> None:
    v = Verification(Status.PENDING, 0, 5, T0 + timedelta(minutes=10))
    v, first = check(v, True, T0)
    v2, second = check(v, True, T0)
    assert (first, second) == (CheckResult.APPROVED, CheckResult.CANCELED)
    assert v2 == v and v.attempts_left == 0


def test_a_canceled_verification_takes_no_code() -> None:
    v = cancel(Verification(Status.PENDING, 2, 5, T0 + timedelta(minutes=10)), T0)
    assert v.status is Status.CANCELED and v.attempts_left == 0
    assert check(v, True, T0) == (v, CheckResult.CANCELED)
