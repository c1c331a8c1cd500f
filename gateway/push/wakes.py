"""Waking phones whose session is gone (issue 17): which ones, when, and what FCM said.

A phone is woken when all of these hold (docs/push.md):
- it has no live session on any bridge, and it has had none for `fcm.grace` (30 s), so an
  ordinary reconnect costs no push;
- it reported a push token FCM has not refused;
- work waits for it: a PENDING recipient of a message routed or pinned to it whose time has
  come (no `schedule_at` or retry backoff still ahead) and whose `valid_until` has not passed.
  Unpinned work was rerouted to online phones when its session ended (as before), so what is
  left is work only this phone can take;
- it was not woken in the last `fcm.min_interval` (5 min).

Each check claims the phones to wake in one transaction (their rows locked with SKIP LOCKED
on PostgreSQL, `last_woken_at` set), so two workers never push the same phone twice in one
interval, then sends the pushes off the request path, `fcm.concurrency` at a time. A phone
that reconnects is not due any more (it has a session); one that stays away with work waiting
is pushed again every `min_interval`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, false, or_, select, update
from sqlmodel import Session

from gateway.config import FcmSettings
from gateway.metrics import GatewayMetrics
from gateway.push.fcm import FcmSender, PushOutcome
from gateway.storage.engine import Database
from gateway.storage.models import Device, MessageRow, RecipientRow
from gateway.types import UNACCEPTED_STATES, State, utcnow
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.records import WebhookEvent

__all__ = ["WakeTarget", "WakeStore", "Waker", "collapse_key"]

log = logging.getLogger(__name__)

_D, _M, _R = Device.__table__.c, MessageRow.__table__.c, RecipientRow.__table__.c  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WakeTarget:
    device_id: str
    owner_id: str
    push_token: str = field(repr=False)


def collapse_key(device_id: str) -> str:
    """FCM folds queued pushes with one key into the newest: one per device, and not the
    device id itself (the push carries nothing of ours in the clear)."""
    return "smsgw-" + hashlib.sha256(device_id.encode()).hexdigest()[:16]


class WakeStore:
    """The device rows' side of waking (blocking: call from a thread)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_due(self, now: datetime, *, grace: float, min_interval: float, limit: int) -> list[WakeTarget]:
        """The phones to wake now (module docstring), each marked woken at `now` in the same
        transaction."""
        work = exists(
            select(1)
            .select_from(MessageRow.__table__.join(RecipientRow.__table__, _R.message_id == _M.id))  # type: ignore[arg-type]
            .where(
                _M.device_id == _D.id,
                _M.state.in_([int(s) for s in UNACCEPTED_STATES]),
                _R.state == int(State.PENDING),
                or_(_R.not_before.is_(None), _R.not_before <= now),
                or_(_M.valid_until.is_(None), _M.valid_until > now),
            )
        )
        due = (
            select(_D.id, _D.owner_id, _D.push_token)
            .where(
                _D.session_id == "",
                _D.revoked == false(),
                _D.push_token != "",
                _D.push_token_invalid_at.is_(None),
                or_(_D.last_seen.is_(None), _D.last_seen <= now - timedelta(seconds=grace)),
                or_(_D.last_woken_at.is_(None), _D.last_woken_at <= now - timedelta(seconds=min_interval)),
                work,
            )
            .order_by(_D.id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: another worker's claim is skipped
        )

        def tx(s: Session) -> list[WakeTarget]:
            targets = [WakeTarget(r.id, r.owner_id, r.push_token) for r in s.execute(due)]
            if targets:
                ids = [t.device_id for t in targets]
                s.execute(update(Device.__table__).where(_D.id.in_(ids)).values(last_woken_at=now))  # type: ignore[arg-type]
            return targets

        return self.db.transact(tx)

    def refuse_token(self, target: WakeTarget, now: datetime) -> bool:
        """FCM refused the token: no more pushes to it, and the owner's `device:push-token-invalid`
        webhooks are told, unless the phone has reported another token since. Returns whether
        it was marked."""

        def tx(s: Session) -> bool:
            marked = s.execute(
                update(Device.__table__)  # type: ignore[arg-type]
                .where(_D.id == target.device_id, _D.push_token == target.push_token, _D.push_token_invalid_at.is_(None))
                .values(push_token_invalid_at=now)
            ).rowcount
            if marked:
                name = s.execute(select(_D.name).where(_D.id == target.device_id)).scalar_one()
                enqueue(s, target.owner_id, WebhookEvent.DEVICE_PUSH_TOKEN_INVALID, target.device_id,
                        lambda: _unreachable_body(target.device_id, name), now)
            return bool(marked)

        return self.db.transact(tx)


def _unreachable_body(device_id: str, name: str) -> dict[str, Any]:
    return {"device": {"id": device_id, "name": name, "wakeable": False}}


# Checks come at most this often, however often they are asked for (every commit that logs
# events asks): one query per 0.1 s at most, and a send to a dozing phone waits <= 0.1 s here.
_SPACING = 0.1


class Waker:
    """The worker's loop: claim the phones due and push them, every `fcm.check_interval`, and
    soon after any commit that logged events (`nudge`, from the bus): new work for a phone
    that left long ago is pushed at once instead of at the next check."""

    def __init__(
        self,
        store: WakeStore,
        sender: FcmSender,
        settings: FcmSettings,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.sender = sender
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._in_flight: set[asyncio.Task[None]] = set()
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Check soon (on the loop `run` runs on: the bus's events callback)."""
        self._nudged.set()

    async def run(self) -> None:
        """Until cancelled; a failing database is logged and tried again next time."""
        try:
            while True:
                self._nudged.clear()
                try:
                    await self.wake_due()
                except Exception:
                    log.exception("looking for phones to wake failed; will retry")
                await asyncio.sleep(_SPACING)
                try:
                    await asyncio.wait_for(self._nudged.wait(), max(0.0, self.settings.check_interval - _SPACING))
                except TimeoutError:
                    pass
        finally:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def wake_due(self) -> list[asyncio.Task[None]]:
        """Claim what is due, as many as there is room for in flight, and start their pushes."""
        room = self.settings.concurrency - len(self._in_flight)
        if room <= 0:
            return []
        config = self.settings
        targets = await asyncio.to_thread(
            self.store.claim_due, self.clock(), grace=config.grace, min_interval=config.min_interval, limit=room
        )
        started = []
        for target in targets:
            task = asyncio.create_task(self._wake(target))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            started.append(task)
        return started

    async def _wake(self, target: WakeTarget) -> None:
        result = await self.sender.wake(target.push_token, collapse_key(target.device_id))
        self.metrics.fcm_wakes.labels(result.outcome.value).inc()
        if result.outcome is PushOutcome.SENT:
            log.info("woke device %s (FCM push)", target.device_id)
        elif result.outcome is PushOutcome.INVALID_TOKEN:
            if await asyncio.to_thread(self.store.refuse_token, target, self.clock()):
                self.metrics.fcm_invalid_tokens.inc()
            log.warning("FCM refused device %s's push token (%s): no more pushes until it reports a new one",
                        target.device_id, result.detail)
        elif result.outcome is PushOutcome.UNAUTHORIZED:
            log.error("FCM refused our credentials (%s): check fcm.credentials_file's service account and project",
                      result.detail)
        else:
            log.warning("could not wake device %s: %s", target.device_id, result.detail)
