"""Verifications in storage: each change in one transaction, with its limits read there and
its webhook (`otp:approved`, `otp:expired`) stored in the same transaction (the outbox)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from gateway.config import OtpSettings
from gateway.errors import AlreadyExists, NotFound, ResourceExhausted
from gateway.messages.repository import to_utc
from gateway.otp.machine import CheckResult, Status, Verification, cancel, check, settle
from gateway.storage.engine import Database
from gateway.storage.models import OtpSendRow, OtpVerificationRow
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.records import WebhookEvent

__all__ = ["OtpRepository", "VerificationRecord", "Started", "Blocked", "prefix_of"]


def prefix_of(number: str) -> str:
    """The pumping guard's unit: the number without its last 4 digits (RELIABILITY 28)."""
    return number[:-4] if len(number) > 5 else number


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    id: str
    owner_id: str
    to: str
    status: Status
    attempts: int
    max_attempts: int
    sends: int
    message_id: str
    code_length: int
    last_sent_at: datetime | None
    expires_at: datetime
    created_at: datetime
    updated_at: datetime

    @property
    def attempts_left(self) -> int:
        return max(self.max_attempts - self.attempts, 0) if self.status is Status.PENDING else 0


@dataclass(frozen=True, slots=True)
class Started:
    """What StartVerification did: a new verification, a resend of a pending one (its last
    message's sealed text goes out again), or the idempotent answer of an earlier call."""

    record: VerificationRecord
    resend: bool = False
    replay: bool = False


class Blocked(ResourceExhausted):
    """A send refused by a limit; `reason` labels the metric (number, prefix, owner, cooldown, pumping)."""

    def __init__(self, reason: str, message: str, retry_after: float, subject: str = "") -> None:
        super().__init__(message, retry_after, subject)
        self.reason = reason


def _record(row: OtpVerificationRow) -> VerificationRecord:
    return VerificationRecord(
        row.id, row.owner_id, row.to_number, Status(row.status), row.attempts, row.max_attempts, row.sends,
        row.message_id, row.code_length, row.last_sent_at, row.expires_at, row.created_at, row.updated_at,
    )


def _shown(row: OtpVerificationRow, status: Status) -> VerificationRecord:
    """The record with the status the machine sees now (a pending one past expiry: EXPIRED)."""
    record = _record(row)
    return record if record.status is status else replace(record, status=status)


def _machine(row: OtpVerificationRow) -> Verification:
    return Verification(Status(row.status), row.attempts, row.max_attempts, row.expires_at)


def _body(row: OtpVerificationRow) -> dict[str, Any]:
    """A webhook's record, in the proto's JSON spelling (smsgw.v1.Verification): never the code."""
    return {"verification": {
        "id": row.id, "to": row.to_number, "status": f"VERIFICATION_STATUS_{Status(row.status).name}",
        "attempts": row.attempts, "sends": row.sends, "message_id": row.message_id,
        "expires_at": to_utc(row.expires_at).isoformat().replace("+00:00", "Z"),
    }}


class OtpRepository:
    def __init__(self, db: Database, settings: OtpSettings) -> None:
        self.db = db
        self.settings = settings

    # ---- start and resend ---------------------------------------------------------------

    def start(
        self, owner_id: str, new: OtpVerificationRow, now: datetime
    ) -> Started:
        """Store `new` (its code hash made by the caller), or resend the number's pending
        verification, or answer an earlier call with the same idempotency key; the limits are
        checked in the same transaction. Blocked when one refuses."""
        now = to_utc(now)
        try:
            return self._start(owner_id, new, now)
        except IntegrityError:
            # Another start committed first (the same key, or a pending code for the number):
            # this one now sees it and answers as a replay or a resend.
            return self._start(owner_id, new, now)

    def _start(self, owner_id: str, new: OtpVerificationRow, now: datetime) -> Started:
        with self.db.write() as s:
            if new.idempotency_key:
                # The key of a first send is the verification's; a resend's is its send row's.
                earlier = s.exec(select(OtpVerificationRow).where(
                    OtpVerificationRow.owner_id == owner_id, OtpVerificationRow.idempotency_key == new.idempotency_key,
                )).first() or s.exec(select(OtpVerificationRow).join(
                    OtpSendRow, col(OtpSendRow.verification_id) == col(OtpVerificationRow.id),
                ).where(OtpSendRow.owner_id == owner_id, OtpSendRow.idempotency_key == new.idempotency_key)).first()
                if earlier is not None:
                    if earlier.to_number != new.to_number:
                        raise AlreadyExists("idempotency_key: already used for another number")
                    return Started(_record(earlier), replay=True)
            # The number's pending verifications past expiry end now (one pending per number).
            self._expire(s, s.exec(select(OtpVerificationRow).where(
                OtpVerificationRow.owner_id == owner_id, OtpVerificationRow.to_number == new.to_number,
                OtpVerificationRow.status == int(Status.PENDING), OtpVerificationRow.expires_at <= now,
            ).with_for_update()).all(), now)
            pending = self._pending(s, owner_id, new.to_number, now)
            if pending is not None:
                self._check_cooldown(pending, now)
                self._check_send_limits(s, owner_id, new.to_number, now)
                pending.sends += 1
                pending.last_sent_at = pending.updated_at = now
                s.add(pending)
                self._log_send(s, pending, now, new.idempotency_key)
                return Started(_record(pending), resend=True)
            self._check_send_limits(s, owner_id, new.to_number, now)
            self._check_pumping(s, new.prefix, now)
            new.sends, new.last_sent_at = 1, now
            s.add(new)
            self._log_send(s, new, now, None)  # the verification holds the key
            return Started(_record(new))

    @staticmethod
    def _pending(s: Session, owner_id: str, to: str, now: datetime) -> OtpVerificationRow | None:
        """The number's pending verification that has not expired (newest)."""
        return s.exec(select(OtpVerificationRow).where(
            OtpVerificationRow.owner_id == owner_id, OtpVerificationRow.to_number == to,
            OtpVerificationRow.status == int(Status.PENDING), OtpVerificationRow.expires_at > now,
        ).order_by(col(OtpVerificationRow.id).desc()).limit(1).with_for_update()).first()

    def _check_cooldown(self, row: OtpVerificationRow, now: datetime) -> None:
        cooldown = timedelta(seconds=self.settings.resend_cooldown)
        if row.last_sent_at is not None and now < row.last_sent_at + cooldown:
            wait = (row.last_sent_at + cooldown - now).total_seconds()
            raise Blocked("cooldown", f"to: a code was sent {self.settings.resend_cooldown:g} s ago or less: resend later", wait,
                          f"verification:{row.id}")

    def _check_send_limits(self, s: Session, owner_id: str, to: str, now: datetime) -> None:
        st = self.settings
        for reason, column, value, limit, window in (
            ("number", OtpSendRow.to_number, to, st.sends_per_number, st.number_window),
            ("prefix", OtpSendRow.prefix, prefix_of(to), st.sends_per_prefix, st.prefix_window),
            ("owner", OtpSendRow.owner_id, owner_id, st.sends_per_owner_per_minute, 60.0),
        ):
            since = now - timedelta(seconds=window)
            times = s.exec(select(OtpSendRow.at).where(column == value, OtpSendRow.at > since)
                           .order_by(col(OtpSendRow.at)).limit(limit)).all()
            if len(times) >= limit:
                wait = max((to_utc(times[0]) + timedelta(seconds=window) - now).total_seconds(), 1.0)
                what = {"number": "this number", "prefix": "numbers starting like this one", "owner": "this account"}[reason]
                shown = f"{prefix_of(to)}****" if reason == "number" else value  # never a whole number
                raise Blocked(reason, f"to: at most {limit} codes per {window:g} s to {what}", wait, f"{reason}:{shown}")

    def _check_pumping(self, s: Session, prefix: str, now: datetime) -> None:
        """SMS pumping: codes sent to a prefix that hardly anyone enters. Counted over the
        settled verifications of the window (pending ones have not had their chance yet)."""
        st = self.settings
        since = now - timedelta(seconds=st.pumping_window)
        settled = [Status.APPROVED, Status.EXPIRED, Status.MAX_ATTEMPTS]
        rows = s.exec(
            select(OtpVerificationRow.status, func.count()).where(
                OtpVerificationRow.prefix == prefix, OtpVerificationRow.created_at > since,
                col(OtpVerificationRow.status).in_([int(x) for x in settled]),
            ).group_by(col(OtpVerificationRow.status))
        ).all()
        counts = {Status(status): int(n) for status, n in rows}
        total = sum(counts.values())
        if total >= st.pumping_min_volume and counts.get(Status.APPROVED, 0) / total < st.pumping_min_conversion:
            raise Blocked(
                "pumping",
                f"to: codes to numbers starting like this one are suspended (SMS pumping guard: "
                f"{counts.get(Status.APPROVED, 0)} of {total} entered in the last {st.pumping_window:g} s)",
                st.pumping_window / 4, f"prefix:{prefix}",
            )

    @staticmethod
    def _log_send(s: Session, row: OtpVerificationRow, now: datetime, key: str | None) -> None:
        s.add(OtpSendRow(
            owner_id=row.owner_id, verification_id=row.id, to_number=row.to_number, prefix=row.prefix, at=now,
            idempotency_key=key or None,
        ))

    def set_message(self, verification_id: str, message_id: str) -> None:
        with self.db.write() as s:
            row = s.get(OtpVerificationRow, verification_id)
            if row is not None:
                row.message_id = message_id
                s.add(row)

    # ---- check, cancel, read ------------------------------------------------------------

    def find(self, owner_id: str, verification_id: str = "", to: str = "") -> OtpVerificationRow:
        """A verification of the owner by id, or the number's newest one (NotFound)."""
        with self.db.read() as s:
            return self._find(s, owner_id, verification_id, to)

    @staticmethod
    def _find(s: Session, owner_id: str, verification_id: str, to: str, *, lock: bool = False) -> OtpVerificationRow:
        """`lock` (PostgreSQL: FOR UPDATE; SQLite serialises writers anyway): a check, cancel or
        sweep on another gateway waits for this transaction and then reads what it wrote, so a
        code approves once and the attempts are counted exactly."""
        if verification_id:
            row = s.get(OtpVerificationRow, verification_id, with_for_update=lock)
        else:
            query = select(OtpVerificationRow).where(
                OtpVerificationRow.owner_id == owner_id, OtpVerificationRow.to_number == to,
            ).order_by(col(OtpVerificationRow.id).desc()).limit(1)
            row = s.exec(query.with_for_update() if lock else query).first()
        if row is None or row.owner_id != owner_id:
            raise NotFound(f"verification {verification_id or 'for ' + to[:-4] + '****'} not found")
        return row

    def check(
        self, owner_id: str, verification_id: str, to: str, matches: Any, now: datetime
    ) -> tuple[VerificationRecord, CheckResult]:
        """Apply one check (`matches(row) -> bool`, the constant-time code comparison) in one
        transaction; an approval stores its `otp:approved` webhook there too. EXPIRED is only
        written by the sweep (`expire_due`) or a new start for the number, each once with its
        `otp:expired`."""
        now = to_utc(now)
        with self.db.write() as s:
            row = self._find(s, owner_id, verification_id, to, lock=True)
            ok = matches(row)  # computed whatever the state: the time does not say whether it was pending
            after, result = check(_machine(row), ok, now)
            if after.status is not Status.EXPIRED and (after.status, after.attempts) != (Status(row.status), row.attempts):
                row.status, row.attempts, row.updated_at = int(after.status), after.attempts, now
                s.add(row)
                if after.status is Status.APPROVED:
                    enqueue(s, owner_id, WebhookEvent.OTP_APPROVED, "", lambda: _body(row), now)
            return _shown(row, after.status), result

    def cancel(self, owner_id: str, verification_id: str, now: datetime) -> VerificationRecord:
        now = to_utc(now)
        with self.db.write() as s:
            row = self._find(s, owner_id, verification_id, "", lock=True)
            after = cancel(_machine(row), now)
            if after.status is Status.CANCELED and row.status == int(Status.PENDING):
                row.status, row.updated_at = int(Status.CANCELED), now
                s.add(row)
            return _shown(row, after.status)

    def get(self, owner_id: str, verification_id: str, now: datetime) -> VerificationRecord:
        """As stored, a pending one past expiry shown EXPIRED (the sweep writes it)."""
        row = self.find(owner_id, verification_id)
        return _shown(row, settle(_machine(row), to_utc(now)).status)

    def expire_due(self, now: datetime, *, batch: int = 500) -> int:
        """The sweep: pending verifications past expiry become EXPIRED, each with its webhook."""
        now = to_utc(now)
        with self.db.write() as s:
            rows = s.exec(select(OtpVerificationRow).where(
                OtpVerificationRow.status == int(Status.PENDING), OtpVerificationRow.expires_at <= now,
            ).limit(batch).with_for_update(skip_locked=True)).all()  # one a check holds: the next sweep
            return self._expire(s, rows, now)

    @staticmethod
    def _expire(s: Session, rows: Sequence[OtpVerificationRow], now: datetime) -> int:
        """EXPIRED, each with its `otp:expired` webhook (rows read PENDING in this transaction)."""
        for row in rows:
            row.status, row.updated_at = int(Status.EXPIRED), now
            s.add(row)
            enqueue(s, row.owner_id, WebhookEvent.OTP_EXPIRED, "", lambda row=row: _body(row), now)  # type: ignore[misc]
        return len(rows)

    def prune_sends(self, before: datetime) -> int:
        """Send rows older than every window: nothing counts them any more."""
        with self.db.write() as s:
            rows = s.exec(select(OtpSendRow).where(OtpSendRow.at < to_utc(before)).limit(10_000)).all()
            for row in rows:
                s.delete(row)
            return len(rows)
