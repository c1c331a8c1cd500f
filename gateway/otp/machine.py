"""A verification's state machine, pure (the repository applies it in a transaction; the
property tests drive it directly): a code approves at most once, never after expiry, never
after the attempts ran out; a resend keeps the one code."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum

__all__ = ["Status", "CheckResult", "Verification", "check", "settle", "cancel"]


class Status(IntEnum):
    """Values match smsgw.v1.VerificationStatus."""

    PENDING = 1
    APPROVED = 2
    EXPIRED = 3
    MAX_ATTEMPTS = 4
    CANCELED = 5


class CheckResult(IntEnum):
    """Values match smsgw.v1.CheckResult."""

    APPROVED = 1
    DENIED = 2
    EXPIRED = 3
    MAX_ATTEMPTS = 4
    CANCELED = 5


_ENDED = {Status.APPROVED: CheckResult.CANCELED, Status.EXPIRED: CheckResult.EXPIRED,
          Status.MAX_ATTEMPTS: CheckResult.MAX_ATTEMPTS, Status.CANCELED: CheckResult.CANCELED}


@dataclass(frozen=True, slots=True)
class Verification:
    status: Status
    attempts: int
    max_attempts: int
    expires_at: datetime

    @property
    def attempts_left(self) -> int:
        return max(self.max_attempts - self.attempts, 0) if self.status is Status.PENDING else 0


def settle(v: Verification, now: datetime) -> Verification:
    """A pending verification past its expiry is EXPIRED (whoever looks first writes it)."""
    if v.status is Status.PENDING and now >= v.expires_at:
        return replace(v, status=Status.EXPIRED)
    return v


def check(v: Verification, code_ok: bool, now: datetime) -> tuple[Verification, CheckResult]:
    """One check. Only a pending verification takes a code: the right one approves it (and
    spends it); a wrong one uses an attempt, and the last wrong one ends it (MAX_ATTEMPTS).
    A check of an ended verification changes nothing and says why it ended; an approved one
    answers CANCELED (its code worked once)."""
    v = settle(v, now)
    if v.status is not Status.PENDING:
        return v, _ENDED[v.status]
    if code_ok:
        return replace(v, status=Status.APPROVED, attempts=v.attempts + 1), CheckResult.APPROVED
    used = v.attempts + 1
    if used >= v.max_attempts:
        return replace(v, status=Status.MAX_ATTEMPTS, attempts=used), CheckResult.MAX_ATTEMPTS
    return replace(v, attempts=used), CheckResult.DENIED


def cancel(v: Verification, now: datetime) -> Verification:
    v = settle(v, now)
    return replace(v, status=Status.CANCELED) if v.status is Status.PENDING else v
