"""Webhook storage: endpoints per owner, the outbox of deliveries, claims and results.

A delivery is claimed by pushing its `next_attempt_at` one lease ahead and counting the
attempt, in one transaction; a worker killed mid-request leaves it due again once the lease
runs out, so it is sent again with the same webhook-id (RELIABILITY 3). Methods are
synchronous; callers run them in a worker thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.auth.repository import AuditEntry, audit_row
from gateway.config import WebhookSettings
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound
from gateway.storage.engine import Database
from gateway.storage.models import AuditRow, Device, WebhookAttemptRow, WebhookDeliveryRow, WebhookRow
from gateway.webhooks.formats import Format, render
from gateway.webhooks.outbox import new_delivery_id
from gateway.webhooks.records import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    WebhookEvent,
    WebhookRecord,
    WebhookState,
)
from gateway.webhooks.schedule import Outcome, Verdict, retry_delay

__all__ = ["WebhookRepository", "Claim", "Recorded"]

_PENDING, _SUCCEEDED, _FAILED = int(DeliveryState.PENDING), int(DeliveryState.SUCCEEDED), int(DeliveryState.FAILED)
_DISABLED = int(WebhookState.DISABLED)
_LEASE_MARGIN = 5.0  # seconds past the attempt timeout (which asyncio enforces) before a claim counts as abandoned


@dataclass(frozen=True, slots=True)
class Claim:
    """One attempt to make: everything the sender needs, read in the claiming transaction."""

    delivery_id: str
    webhook_id: str
    owner_id: str
    url: str
    secrets: tuple[str, ...]  # the current secret, then the previous one during a rotation
    payload: bytes
    attempt: int  # 1-based, counting every attempt ever made
    is_ping: bool
    position: int = 0  # 1-based place in the retry schedule (restarts after a replay)
    format: str = ""  # gateway.webhooks.formats.Format: how the request is signed


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording an attempt changed, for metrics and logs."""

    state: DeliveryState
    webhook_state: WebhookState
    webhook_changed: bool
    next_attempt_at: datetime | None


class WebhookRepository:
    def __init__(self, db: Database, settings: WebhookSettings, *, rng: random.Random | None = None) -> None:
        self.db = db
        self.settings = settings
        self._rng = rng if rng is not None else random.Random()

    # ---- endpoints -----------------------------------------------------------------

    def create(
        self, owner_id: str, url: str, events: Sequence[WebhookEvent], device_id: str, secret: str, now: datetime
    ) -> WebhookRecord:
        with self.db.write() as s:
            if device_id:
                device = s.get(Device, device_id)
                if device is None or device.owner_id != owner_id or device.revoked:
                    raise InvalidArgument("device_id", "not one of your devices")
            count = s.exec(select(func.count()).select_from(WebhookRow).where(WebhookRow.owner_id == owner_id)).one()
            if count >= self.settings.max_per_owner:
                raise FailedPrecondition(f"at most {self.settings.max_per_owner} webhooks per account; delete one first")
            row = WebhookRow(
                id=str(ULID()), owner_id=owner_id, url=url, events=" ".join(str(e) for e in events),
                device_id=device_id, secret=secret, created_at=now,
            )
            s.add(row)
            s.add(_audit(owner_id, now, "webhook.create", row.id, f"events={row.events}"))
            return _webhook_record(row, 0)

    def upsert_external(
        self, owner_id: str, external_id: str, url: str, event: WebhookEvent, device_id: str, fmt: Format,
        secret: Callable[[Session], str], now: datetime,
    ) -> WebhookRecord:
        """Create or replace the webhook the owner calls `external_id` (SMSGate's API: a POST
        with a known id replaces it). `secret(s)` gives its signing secret inside this
        transaction. A replaced webhook keeps its outbox and becomes active again."""
        with self.db.write() as s:
            if device_id:
                device = s.get(Device, device_id)
                if device is None or device.owner_id != owner_id or device.revoked:
                    raise InvalidArgument("device_id", "not one of your devices")
            row = s.exec(
                select(WebhookRow).where(WebhookRow.owner_id == owner_id, WebhookRow.external_id == external_id)
            ).first()
            if row is None:
                count = s.exec(select(func.count()).select_from(WebhookRow).where(WebhookRow.owner_id == owner_id)).one()
                if count >= self.settings.max_per_owner:
                    raise FailedPrecondition(
                        f"at most {self.settings.max_per_owner} webhooks per account; delete one first"
                    )
                row = WebhookRow(id=str(ULID()), owner_id=owner_id, url=url, events="", secret="", created_at=now)
                action = "webhook.create"
            else:
                action = "webhook.replace"
            row.url, row.events, row.device_id, row.format, row.external_id = url, str(event), device_id, str(fmt), external_id
            row.secret, row.previous_secret, row.previous_secret_until = secret(s), "", None
            row.state, row.disabled_reason, row.failing_since = int(WebhookState.ACTIVE), "", None
            s.add(row)
            s.add(_audit(owner_id, now, action, row.id, f"events={row.events} format={row.format}"))
            return self._record(s, row) if action == "webhook.replace" else _webhook_record(row, 0)

    def delete_external(self, owner_id: str, external_id: str, now: datetime) -> bool:
        """Delete the webhook the owner calls `external_id`; False when there is none."""
        with self.db.read() as s:
            found = s.exec(
                select(WebhookRow.id).where(WebhookRow.owner_id == owner_id, WebhookRow.external_id == external_id)
            ).first()
        if found is None:
            return False
        try:
            self.delete(owner_id, found, now)
        except NotFound:  # deleted meanwhile
            return False
        return True

    def list(self, owner_id: str) -> list[WebhookRecord]:
        with self.db.read() as s:
            rows = list(s.exec(select(WebhookRow).where(WebhookRow.owner_id == owner_id).order_by(col(WebhookRow.id))))
            pending = self._pending_counts(s, [r.id for r in rows])
            return [_webhook_record(r, pending.get(r.id, 0)) for r in rows]

    def get(self, owner_id: str, webhook_id: str) -> WebhookRecord:
        with self.db.read() as s:
            row = self._owned(s, owner_id, webhook_id)
            return self._record(s, row)

    def delete(self, owner_id: str, webhook_id: str, now: datetime) -> None:
        """The webhook, its outbox and its attempt log go at once: nothing more is sent."""
        with self.db.write() as s:
            row = self._owned(s, owner_id, webhook_id)
            s.exec(delete(WebhookAttemptRow).where(col(WebhookAttemptRow.webhook_id) == row.id))
            s.exec(delete(WebhookDeliveryRow).where(col(WebhookDeliveryRow.webhook_id) == row.id))
            s.delete(row)
            s.add(_audit(owner_id, now, "webhook.delete", row.id, ""))

    def enable(self, owner_id: str, webhook_id: str, now: datetime) -> WebhookRecord:
        """ACTIVE again; its held deliveries come due now."""
        with self.db.write() as s:
            row = self._owned(s, owner_id, webhook_id)
            row.state, row.disabled_reason, row.failing_since = int(WebhookState.ACTIVE), "", None
            s.add(row)
            for d in s.exec(
                select(WebhookDeliveryRow).where(
                    WebhookDeliveryRow.webhook_id == row.id, WebhookDeliveryRow.state == _PENDING
                )
            ):
                d.next_attempt_at, d.updated_at = now, now
                s.add(d)
            s.add(_audit(owner_id, now, "webhook.enable", row.id, ""))
            return self._record(s, row)

    def rotate(self, owner_id: str, webhook_id: str, secret: str, now: datetime) -> WebhookRecord:
        """The new secret signs from now on; the old one also signs for `secret_overlap`."""
        with self.db.write() as s:
            row = self._owned(s, owner_id, webhook_id)
            if row.format == Format.SMSGATE:
                raise FailedPrecondition(
                    "an SMSGate-format webhook is signed with the account's webhooks.signing_key setting: "
                    "change that (PATCH /3rdparty/v1/settings) instead"
                )
            row.previous_secret = row.secret
            row.previous_secret_until = now + timedelta(seconds=self.settings.secret_overlap)
            row.secret = secret
            s.add(row)
            s.add(_audit(owner_id, now, "webhook.rotate", row.id, ""))
            return self._record(s, row)

    # ---- deliveries ------------------------------------------------------------------

    def deliveries(
        self, owner_id: str, webhook_id: str, *, state: DeliveryState | None, limit: int, before_id: str | None
    ) -> list[DeliveryRecord]:
        """Newest first, each with its attempts (oldest first)."""
        with self.db.read() as s:
            self._owned(s, owner_id, webhook_id)
            q = select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
            if state is not None:
                q = q.where(WebhookDeliveryRow.state == int(state))
            if before_id:
                q = q.where(col(WebhookDeliveryRow.id) < before_id)
            rows = list(s.exec(q.order_by(col(WebhookDeliveryRow.id).desc()).limit(limit)))
            attempts: dict[str, list[AttemptRecord]] = {r.id: [] for r in rows}
            if rows:
                for a in s.exec(
                    select(WebhookAttemptRow)
                    .where(col(WebhookAttemptRow.delivery_id).in_(list(attempts)))
                    .order_by(col(WebhookAttemptRow.id))
                ):
                    attempts[a.delivery_id].append(_attempt_record(a))
            return [_delivery_record(r, attempts[r.id]) for r in rows]

    def replay(self, owner_id: str, delivery_id: str, now: datetime) -> DeliveryRecord:
        """Send a delivery again (same webhook-id) with a fresh schedule."""
        with self.db.write() as s:
            d = s.get(WebhookDeliveryRow, delivery_id)
            if d is None or d.owner_id != owner_id:
                raise NotFound("no such webhook delivery")
            if d.state == _PENDING:
                raise FailedPrecondition("the delivery is still pending; it is retried on its own")
            d.state, d.attempt_base, d.next_attempt_at, d.updated_at = _PENDING, d.attempts, now, now
            d.max_attempts = 0 if d.event != WebhookEvent.SYSTEM_PING else 1
            s.add(d)
            return _delivery_record(d, [])

    def create_ping(self, owner_id: str, webhook_id: str, now: datetime) -> Claim:
        """A system:ping for one webhook, stored like every event and claimed at once: the
        caller sends it now, once (a disabled webhook too: that is how an owner checks it)."""
        with self.db.write() as s:
            row = self._owned(s, owner_id, webhook_id)
            delivery_id = new_delivery_id()
            payload = render(
                row.format, WebhookEvent.SYSTEM_PING, delivery_id, row.external_id or row.id, row.device_id, now,
                {"webhook_id": row.id},
            )
            d = WebhookDeliveryRow(
                id=delivery_id, webhook_id=row.id, owner_id=owner_id, event=str(WebhookEvent.SYSTEM_PING),
                payload=payload, max_attempts=1, created_at=now, updated_at=now,
            )
            s.add(d)
            return self._take(s, d, row, now)

    def claim_due(self, now: datetime, limit: int, *, busy: Sequence[str] = ()) -> list[Claim]:
        """Up to `limit` due deliveries of enabled webhooks, oldest due first, none of the
        `busy` webhooks (those at their share of the worker). Pings are TestWebhook's own. A
        delivery whose claims were all lost (the worker died each time) past the end of its
        schedule fails here instead of being claimed forever."""
        with self.db.write() as s:
            q = (
                select(WebhookDeliveryRow, WebhookRow)
                .join(WebhookRow, col(WebhookRow.id) == WebhookDeliveryRow.webhook_id)
                .where(
                    WebhookDeliveryRow.state == _PENDING,
                    col(WebhookDeliveryRow.next_attempt_at) <= now,
                    col(WebhookRow.state) != _DISABLED,
                    col(WebhookDeliveryRow.event) != str(WebhookEvent.SYSTEM_PING),
                )
                .order_by(col(WebhookDeliveryRow.next_attempt_at), col(WebhookDeliveryRow.id))
                .limit(limit)
                .with_for_update(skip_locked=True, of=WebhookDeliveryRow)  # PostgreSQL; SQLite serialises writes
            )
            if busy:
                q = q.where(col(WebhookDeliveryRow.webhook_id).not_in(list(busy)))
            claims = []
            for d, w in s.exec(q).all():
                if d.attempts - d.attempt_base > len(self.settings.retry_delays):
                    d.state, d.next_attempt_at, d.updated_at = _FAILED, None, now
                    d.last_error = f"gave up: {d.attempts - d.attempt_base} attempts were claimed but never finished"
                    s.add(d)
                    continue
                claims.append(self._take(s, d, w, now))
            return claims

    def _take(self, s: Session, d: WebhookDeliveryRow, w: WebhookRow, now: datetime) -> Claim:
        d.attempts += 1
        d.next_attempt_at = now + timedelta(seconds=self.settings.timeout + _LEASE_MARGIN)
        d.updated_at = now
        s.add(d)
        secrets = (w.secret,)
        if w.previous_secret and w.previous_secret_until is not None and w.previous_secret_until > now:
            secrets = (w.secret, w.previous_secret)
        elif w.previous_secret:  # the overlap is over: the old secret is kept no longer
            w.previous_secret, w.previous_secret_until = "", None
            s.add(w)
        return Claim(
            d.id, w.id, w.owner_id, w.url, secrets, d.payload.encode(), d.attempts,
            d.event == WebhookEvent.SYSTEM_PING, d.attempts - d.attempt_base, w.format,
        )

    def next_due(self) -> datetime | None:
        """When the earliest pending delivery of an enabled webhook comes due."""
        with self.db.read() as s:
            return s.exec(
                select(func.min(WebhookDeliveryRow.next_attempt_at))
                .join(WebhookRow, col(WebhookRow.id) == WebhookDeliveryRow.webhook_id)
                .where(WebhookDeliveryRow.state == _PENDING, col(WebhookRow.state) != _DISABLED)
            ).one()

    def record(self, claim: Claim, outcome: Outcome, latency_ms: int, now: datetime) -> Recorded:
        """Log the attempt, then move the delivery (succeeded, retry later, failed) and the
        webhook (healthy, failing, disabled) as the outcome says, in one transaction."""
        settings = self.settings
        with self.db.write() as s:
            d = s.get(WebhookDeliveryRow, claim.delivery_id)
            w = s.get(WebhookRow, claim.webhook_id)
            if d is None or w is None:  # deleted while the request was in flight
                return Recorded(DeliveryState.FAILED, WebhookState.DISABLED, False, None)
            s.add(
                WebhookAttemptRow(
                    delivery_id=d.id, webhook_id=w.id, attempt=claim.attempt, at=now,
                    status_code=outcome.status_code, latency_ms=latency_ms, error=outcome.error[:300],
                )
            )
            before = WebhookState(w.state)
            if d.state != _PENDING or d.attempts != claim.attempt:
                # Its lease ran out and it was claimed again (or replayed): the newer claim decides.
                return Recorded(DeliveryState(d.state), before, False, d.next_attempt_at)
            d.updated_at = now
            d.last_error = outcome.error[:300]
            if outcome.verdict is Verdict.SUCCEEDED:
                d.state, d.next_attempt_at = _SUCCEEDED, None
                if not claim.is_ping:  # a test ping says nothing of the webhook's health
                    w.last_success_at, w.failing_since = now, None
                    if before is WebhookState.FAILING:
                        w.state, w.disabled_reason = int(WebhookState.ACTIVE), ""
            else:
                delay = None
                if outcome.verdict is Verdict.RETRY and (d.max_attempts == 0 or claim.position < d.max_attempts):
                    delay = retry_delay(
                        claim.position, settings.retry_delays, settings.jitter, self._rng,
                        retry_after=outcome.retry_after, retry_after_cap=settings.retry_after_cap,
                    )
                if delay is not None:
                    d.next_attempt_at = now + timedelta(seconds=delay)
                else:
                    d.state, d.next_attempt_at = _FAILED, None
                    if outcome.verdict is Verdict.RETRY and not claim.is_ping:
                        d.last_error = f"gave up after {claim.position} attempts; last: {d.last_error}"
                if not claim.is_ping:
                    self._failed(s, w, d, outcome, gave_up=delay is None, now=now)
            s.add(d)
            s.add(w)
            after = WebhookState(w.state)
            return Recorded(DeliveryState(d.state), after, after is not before, d.next_attempt_at)

    def _failed(
        self, s: Session, w: WebhookRow, d: WebhookDeliveryRow, outcome: Outcome, *, gave_up: bool, now: datetime
    ) -> None:
        """A failed attempt's effect on the webhook: 410 disables it; a delivery that gave
        up marks it FAILING; failing without a success for `disable_after` disables it."""
        if w.state == _DISABLED:
            return
        w.failing_since = w.failing_since or now
        reason = ""
        if outcome.verdict is Verdict.GONE:
            reason = "the receiver answered 410 Gone"
        elif now - w.failing_since >= timedelta(seconds=self.settings.disable_after):
            reason = f"no successful delivery since {w.failing_since.isoformat(timespec='seconds')} ({d.last_error})"
        if reason:
            w.state, w.disabled_reason = _DISABLED, reason
            s.add(_audit(w.owner_id, now, "webhook.disabled", w.id, reason))
        elif gave_up:
            if w.state != int(WebhookState.FAILING):  # one audit entry per change of state
                s.add(_audit(w.owner_id, now, "webhook.failing", w.id, f"delivery {d.id} failed: {d.last_error}"))
            w.state, w.disabled_reason = int(WebhookState.FAILING), f"delivery {d.id} failed: {d.last_error}"

    def prune(self, before: datetime, *, batch: int = 2000) -> int:
        """Finished deliveries (and their attempts) older than `before` go; pending ones stay.
        In batches (short write transactions), until none is left."""
        pruned = 0
        while True:
            with self.db.write() as s:
                old = select(WebhookDeliveryRow.id).where(
                    col(WebhookDeliveryRow.state) != _PENDING, col(WebhookDeliveryRow.updated_at) < before
                )
                ids = list(s.exec(old.limit(batch)))
                if ids:
                    s.exec(delete(WebhookAttemptRow).where(col(WebhookAttemptRow.delivery_id).in_(ids)))
                    s.exec(delete(WebhookDeliveryRow).where(col(WebhookDeliveryRow.id).in_(ids)))
            pruned += len(ids)
            if len(ids) < batch:
                return pruned

    # ---- helpers ---------------------------------------------------------------------

    @staticmethod
    def _owned(s: Session, owner_id: str, webhook_id: str) -> WebhookRow:
        row = s.get(WebhookRow, webhook_id) if webhook_id else None
        if row is None or row.owner_id != owner_id:
            raise NotFound("no such webhook")
        return row

    def _record(self, s: Session, row: WebhookRow) -> WebhookRecord:
        """One webhook as the API shows it, with its pending deliveries counted."""
        return _webhook_record(row, self._pending_counts(s, [row.id]).get(row.id, 0))

    @staticmethod
    def _pending_counts(s: Session, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        q = (
            select(WebhookDeliveryRow.webhook_id, func.count())
            .where(col(WebhookDeliveryRow.webhook_id).in_(ids), WebhookDeliveryRow.state == _PENDING)
            .group_by(WebhookDeliveryRow.webhook_id)
        )
        return {k: int(v) for k, v in s.exec(q).all()}


def _audit(owner_id: str, now: datetime, action: str, webhook_id: str, detail: str) -> AuditRow:
    return audit_row(AuditEntry(action, owner_id, actor=webhook_id, detail=detail), now)


def _webhook_record(r: WebhookRow, pending: int) -> WebhookRecord:
    return WebhookRecord(
        id=r.id, owner_id=r.owner_id, url=r.url, events=tuple(WebhookEvent(e) for e in r.events.split()),
        device_id=r.device_id, state=WebhookState(r.state), disabled_reason=r.disabled_reason,
        failing_since=r.failing_since, last_success_at=r.last_success_at, created_at=r.created_at,
        pending_deliveries=pending, format=r.format, external_id=r.external_id,
    )


def _attempt_record(a: WebhookAttemptRow) -> AttemptRecord:
    return AttemptRecord(a.delivery_id, a.attempt, a.at, a.status_code, a.latency_ms, a.error)


def _delivery_record(d: WebhookDeliveryRow, attempts: list[AttemptRecord]) -> DeliveryRecord:
    return DeliveryRecord(
        id=d.id, webhook_id=d.webhook_id, event=d.event, state=DeliveryState(d.state), attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.state == _PENDING else None, created_at=d.created_at,
        last_error=d.last_error, attempt_log=tuple(attempts),
    )
