"""Message storage: create with routing, dispatch claims, receipts, cancel, expiry, the event log.

Every recipient state change goes through `_transition`, which checks `may_move`,
re-derives the message state and appends the event rows in the same transaction
(DESIGN.md "Event log"). Methods are synchronous; callers run them in a worker thread.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import Future
from functools import partial
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any, NoReturn

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.config import SchedulerSettings
from gateway.devices.records import sims_from_json
from gateway.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from gateway.messages.pacing import (
    DevicePacing,
    PacingHistory,
    Sent,
    SimLimits,
    history_span,
    month_start,
)
from gateway.messages.records import (
    DispatchBatch,
    DispatchUnit,
    EventRecord,
    HeldRecipient,
    MessageFilter,
    MessageRecord,
    NewMessage,
    ReceiptRefusal,
    ReceiptUpdate,
    RecipientRecord,
    SendOutcome,
)
from gateway.storage.engine import AFTER_COMMIT, ON_ROLLBACK, Database
from gateway.storage.event_log import log_events
from gateway.messages.retry import RETRYABLE, backoff
from gateway.messages.claims import ClaimTarget, ClaimTargets
from gateway.messages.queue import DeviceQueue, Plan
from gateway.messages.rows import (
    MSG_NAMES, RCP_NAMES, Msg, Rcp, Writes, fetch_on, in_writes, load_messages, load_recipients, messages_by_id,
    messages_sql, select_messages,
)
from gateway.storage.raw import Sql, fetch, insert_into, run, run_many
from gateway.storage.models import ADOPTABLE, DailyUsageRow, Device, DispatchLogRow, EventRow, MessageRow, RecipientRow
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.payloads import MESSAGE_EVENTS, message_body
from gateway.types import (
    FINAL_STATES, PROVISIONAL_STATES, UNACCEPTED_STATES, UNSENT_STATES, EventKind, State, derive_message_state, may_move,
)

__all__ = ["MessageRepository", "to_utc", "pacing_defaults"]

_M = MessageRow.__table__.c  # type: ignore[attr-defined]
_R = RecipientRow.__table__.c  # type: ignore[attr-defined]
_D = Device.__table__.c  # type: ignore[attr-defined]
# Statements of the hot paths, written once and run on the DB-API cursor of the transaction
# (gateway.storage.raw, gateway.messages.rows): Core's per-statement set-up cost more than
# SQLite takes to run them. Booleans are compared with bound values (`:no`, `:yes`), which
# the Boolean type renders 0/1 on SQLite and false/true on PostgreSQL, as Core does.
_BOOL = _M.pinned.type
_AT = _M.updated_at.type  # UTCDateTime
_PENDING, _DISPATCHED = int(State.PENDING), int(State.DISPATCHED)
_FINAL_STATES = Sql(
    "SELECT recipient.message_id, recipient.state FROM recipient JOIN message ON message.id = recipient.message_id"
    " WHERE recipient.message_id IN (:ids) AND message.device_id = :device_id"
    f" AND recipient.state IN ({int(State.CANCELLED)}, {int(State.EXPIRED)})",
    expand=["ids"],
)
_USABLE_DEVICES = Sql(
    "SELECT id FROM device WHERE id IN (:ids) AND owner_id = :owner_id AND revoked = :no",
    expand=["ids"],
    binds={"no": _BOOL},
)
_OWNED_DEVICES = Sql(
    "SELECT id, session_id, connected_with_token_at FROM device WHERE owner_id = :owner_id AND revoked = :no",
    binds={"no": _BOOL},
    results=[None, None, _D.connected_with_token_at.type],
)
_LOADS = Sql(
    "SELECT device_id, count(*) FROM message WHERE device_id IN (:ids)"
    f" AND state IN ({', '.join(str(int(s)) for s in sorted(UNACCEPTED_STATES))}) GROUP BY device_id",
    expand=["ids"],
)
_LEAST_LOADED = Sql(
    "SELECT d.id FROM device d WHERE d.owner_id = :owner_id AND d.revoked = :no"
    " AND (d.session_id != '' OR d.connected_with_token_at IS NOT NULL)"
    " ORDER BY CASE WHEN d.session_id != '' THEN 0 ELSE 1 END,"
    " (SELECT count(*) FROM message m WHERE m.device_id = d.id"
    f" AND m.state IN ({', '.join(str(int(s)) for s in sorted(UNACCEPTED_STATES))})), d.id LIMIT 1",
    binds={"no": _BOOL},
)
"""`_Router.route` of one unpinned message in one statement: the least-loaded online device,
else the least-loaded one that ever connected with its token; the same choice `_pool` makes,
without reading every device and load into Python (3.9 ms of CPU per create at 1,000 phones
instead of 0.4 pinned)."""
_CHANGES_FOR_PHONES = Sql(
    "SELECT DISTINCT m.device_id, e.message_id FROM event e JOIN message m ON m.id = e.message_id"
    f" WHERE e.id > :after AND e.id <= :upto AND e.kind = '{EventKind.MESSAGE.value}'"
    f" AND e.state IN ({int(State.PENDING)}, {int(State.CANCELLED)}, {int(State.EXPIRED)})"
)
_USAGE = Sql("SELECT segments FROM daily_usage WHERE owner_id = :owner_id AND day = :day")
_ADD_USAGE = Sql("UPDATE daily_usage SET segments = segments + :n WHERE owner_id = :k_owner_id AND day = :k_day")
_INSERT_USAGE = insert_into(DailyUsageRow.__table__)  # type: ignore[attr-defined]
_COUNT_USAGE = Sql(
    "INSERT INTO daily_usage (owner_id, day, segments) VALUES (:owner_id, :day, :n)"
    " ON CONFLICT (owner_id, day) DO UPDATE SET segments = daily_usage.segments + excluded.segments"
    " WHERE daily_usage.segments + excluded.segments <= :cap RETURNING segments"
)
"""One message's segments added to the day's usage unless they would pass the cap: no row
back = refused. One statement instead of a read and a write (`_Adder`, `one=True`); on
PostgreSQL the row's lock orders concurrent gateways."""
_NO_CAP = 2**62  # `:cap` when the owner has none
_INSERT_MESSAGE = insert_into(MessageRow.__table__)  # type: ignore[attr-defined]
_INSERT_RECIPIENT = insert_into(RecipientRow.__table__)  # type: ignore[attr-defined]
# A pacing stamp (display only) on a recipient still waiting: never overwrites a newer state.
_STAMP_PACED = Sql(
    "UPDATE recipient SET paced_until = :paced_until"
    f" WHERE message_id = :k_message_id AND idx = :k_idx AND state = {_PENDING}",
    binds={"paced_until": _R.paced_until.type},
)
# A phone's dispatch state (`_load_queue`): its settings, its waiting messages, its history.
# The fence (`fence`): the device row locked, so a newer session's open (which locks it to
# take the device over) waits for this round's commit or is seen by it.
_LIVE_SESSION = Sql("SELECT session_id FROM device WHERE id = :device_id", for_update=True)
_DEVICE_PACING = Sql("SELECT settings_json, sims_json FROM device WHERE id = :device_id")
_PENDING_ON = messages_sql(f"WHERE device_id = :device_id AND state = {_PENDING}")
_SENT_SINCE = Sql(
    "SELECT dispatch_log.at, dispatch_log.sim, dispatch_log.parts FROM dispatch_log"
    " WHERE dispatch_log.device_id = :device_id AND dispatch_log.at >= :since",
    binds={"since": _AT},
    results=[_AT, None, None],
)
_NUMBERS_SINCE = Sql(
    "SELECT DISTINCT dispatch_log.sim, recipient.phone_number FROM dispatch_log JOIN recipient"
    " ON recipient.message_id = dispatch_log.message_id AND recipient.idx = dispatch_log.recipient_index"
    " WHERE dispatch_log.device_id = :device_id AND dispatch_log.at >= :since",
    binds={"since": _AT},
)
# Drops (`_take_drops`) and expiry (`_expire_rows`).
_FLAGGED = Sql("SELECT id FROM message WHERE drop_pending = :yes AND device_id = :device_id", binds={"yes": _BOOL})
_UNFLAG = Sql("UPDATE message SET drop_pending = :no WHERE id IN (:ids)", expand=["ids"], binds={"no": _BOOL})
_EXPIRED_WHERE = f"WHERE state IN ({', '.join(str(int(s)) for s in sorted(UNSENT_STATES))}) AND valid_until <= :now"
_EXPIRED = {  # (on one device, at most `limit`) -> statement
    (on_device, limited): messages_sql(
        _EXPIRED_WHERE + (" AND device_id = :device_id" if on_device else ""),
        limit="LIMIT :limit" if limited else "",
        binds={"now": _AT},
    )
    for on_device in (False, True)
    for limited in (False, True)
}

log = logging.getLogger(__name__)

_UNACCEPTED = [int(s) for s in UNACCEPTED_STATES]
_EXPIRED_REASON = "valid_until passed before it was sent"
_EXPIRE_BATCH = 500  # messages one dispatch round expires at most


def pacing_defaults(settings: SchedulerSettings) -> DevicePacing:
    """The pacing of a phone without overrides, from the `scheduler` config section."""
    return DevicePacing(
        default=SimLimits(
            parts_per_minute=settings.sim_parts_per_minute,
            min_interval_ms=round(settings.sim_min_interval * 1000),
            parts_per_hour=settings.sim_parts_per_hour,
            parts_per_day=settings.sim_parts_per_day,
            recipients_per_month=settings.sim_recipients_per_month,
        ),
        phone_parts_per_minute=settings.phone_parts_per_minute,
        priority_bypass=settings.priority_bypass,
    )


def to_utc(t: datetime) -> datetime:
    """Aware UTC (naive input is taken as UTC): SQLModel stores and returns aware UTC."""
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


class MessageRepository:
    def __init__(
        self,
        db: Database,
        scheduler: SchedulerSettings | None = None,
        *,
        rng: random.Random | None = None,
        claims: ClaimTargets | None = None,
        fence: bool = False,
    ) -> None:
        """`fence`: each dispatch round first checks, in its transaction, that its session is
        still the device's live one (`smsgw bridge`, where a newer session may open on another
        bridge; in one process the registry ends an older session itself)."""
        self.db = db
        self.fence = fence
        self.scheduler = scheduler if scheduler is not None else SchedulerSettings()
        self.base_pacing = pacing_defaults(self.scheduler)
        self._rng = rng if rng is not None else random.Random()
        # The connected phones a new message may be claimed for at create (None: never).
        self.claims = claims

    # ---- client side -------------------------------------------------------------

    def create(
        self, owner_id: str, new: NewMessage, now: datetime, *, daily_segments: int = 0
    ) -> tuple[MessageRecord, bool]:
        """Store a message (routed to a device) or return the one with the same key.

        Returns (message, created). Raises AlreadyExists when the key names different
        content, InvalidArgument for a device that is not the owner's, ResourceExhausted
        when the message would take the owner past `daily_segments` today (0 = no cap);
        a replay of a stored message is answered even then.
        """
        record, created, _ = self.create_claimed(owner_id, new, now, daily_segments=daily_segments)
        return record, created

    def create_claimed(
        self, owner_id: str, new: NewMessage, now: datetime, *, daily_segments: int = 0
    ) -> tuple[MessageRecord, bool, bool]:
        """`create`, and whether the message was also claimed for its connected phone in the
        same transaction (claim at create, `_claim_at_create`): then its Delivers are handed
        to the session after the commit, and nobody needs to tell the session of it.

        The record returned is the message as `create` stores it (PENDING); when claimed, its
        recipients are DISPATCHED by the same commit (the event log shows both steps)."""
        # Insert first: a new key is the common case; the unique key catches a replay.
        try:
            record, claimed = self.create_future(owner_id, new, now, daily_segments=daily_segments).result()
        except (IntegrityError, ResourceExhausted) as exc:
            return self.replay_of(owner_id, new, exc), False, False
        return record, True, claimed

    def create_future(
        self, owner_id: str, new: NewMessage, now: datetime, *, daily_segments: int = 0
    ) -> Future[tuple[MessageRecord, bool]]:
        """The write job of `create_claimed`, submitted to the group commit: its future gives
        (message, claimed at create), or raises IntegrityError / ResourceExhausted for a key
        already stored (then `replay_of`) and the errors `create` raises."""
        now = to_utc(now)

        def tx(s: Session) -> tuple[MessageRecord, bool]:  # shares its commit with concurrent writers
            adder = _Adder(s, owner_id, daily_segments, now, one=True)
            added = adder.add(new)
            claim = self._claim_at_create(s, adder, added, now)  # before the insert: see there
            adder.write()
            if claim is not None:
                claim.flush()  # the claim's events and dispatch-log rows, after the rows they name
            return added, claim is not None

        return self.db.group_future(tx)

    def replay_of(self, owner_id: str, new: NewMessage, error: Exception) -> MessageRecord:
        """The message stored under `new`'s key (a retry, or a concurrent send that won the
        insert), after its create failed with `error`; AlreadyExists for other content, and
        `error` again when no message has the key (the daily cap refused a new one)."""
        existing = self._existing(owner_id, new)
        if existing is None:
            raise error
        return existing

    def _claim_at_create(self, s: Session, adder: _Adder, record: MessageRecord, now: datetime) -> Writes | None:
        """Store the message just added as DISPATCHED to its phone, in this transaction, when
        the phone is connected with room and nothing waits in its queue (then this is exactly
        what the phone's next round would claim, without that round: one write job and no
        hop between the loops before the Deliver). Anything else (a queue with messages in
        it, pacing or the SIM holding it back, a round under way) leaves it PENDING for the
        session, as before.

        Runs before `adder` inserts the message: a claim changes the rows it will insert
        (DISPATCHED, with its session and SIM) instead of updating them after the insert.
        Returns the claim's events and dispatch-log rows to write after that insert (None:
        no claim). An insert that fails then (a replayed key) rolls the transaction back, and
        ON_ROLLBACK undoes the claim in memory as for any rolled-back group."""
        target = self.claims.get(record.device_id) if self.claims is not None and record.device_id else None
        if target is None:
            return None
        units: list[DispatchUnit] = []
        w: Writes | None = None
        with target.lock:  # one region: the session's thread only adds room meanwhile
            queue = target.queue
            if queue is not None and target.may_claim_at_create():
                msg, rcps = adder.rows_of_last()
                queue.put(msg, rcps)
                plan = queue.plan(target.free, now, ())
                if len(plan.claims) == 1 and not plan.missing_sim and len(plan.claims[0].indices) == len(rcps):
                    w = Writes(s)
                    units = self._write_plan(w, queue, plan, target.session_id, now, {msg.id})
                    adder.replace_last(*w.take_rows())
                    target.free -= len(units)
                    target.pending += len(units)
                else:
                    queue.remove(msg.id)
                    if plan.claims:
                        queue.needs_reload = True  # the history counted a claim not made
        if not units or w is None:
            target.note_unread(s.info, (record.id,))  # its session reads it in its next round
            return None
        s.info.setdefault(AFTER_COMMIT, []).append(partial(target.hand, units))
        s.info.setdefault(ON_ROLLBACK, []).append(partial(target.unclaimed, len(units)))
        return w

    def create_many(
        self, owner_id: str, items: Sequence[NewMessage], now: datetime, *, daily_segments: int = 0
    ) -> list[SendOutcome]:
        """Store a batch (SendMessages) in ONE transaction: one commit, one fsync, for all.

        Returns one outcome per item, in order, each what `create` would have answered for
        that item alone: created, a replay of the message stored under its key (also when an
        earlier item of this batch stored it), AlreadyExists, InvalidArgument (`device_id`)
        or ResourceExhausted (the daily cap, checked item by item in order: the items after
        one that does not fit may still fit). A refused item stores nothing; the others are
        stored. Keys are looked up before inserting, so a batch retried after a lost answer
        is all replays; a key another writer commits in between (another gateway, on
        PostgreSQL) rolls the batch back, and then each item is stored on its own.
        """
        now = to_utc(now)
        try:
            return self.db.transact(lambda s: self._add_batch(s, owner_id, items, daily_segments, now))
        except IntegrityError:
            log.info("a batch of %d messages raced another writer on a key; storing them one by one", len(items))
        return [self._create_one(owner_id, new, now, daily_segments) for new in items]

    def _create_one(self, owner_id: str, new: NewMessage, now: datetime, daily_segments: int) -> SendOutcome:
        try:
            record, created = self.create(owner_id, new, now, daily_segments=daily_segments)
        except (AlreadyExists, InvalidArgument, ResourceExhausted) as exc:
            return SendOutcome(None, error=exc)
        return SendOutcome(record, created)

    def _add_batch(
        self, s: Session, owner_id: str, items: Sequence[NewMessage], daily_segments: int, now: datetime
    ) -> list[SendOutcome]:
        keys = {new.idempotency_key for new in items}
        stored = list(
            s.exec(select(MessageRow).where(MessageRow.owner_id == owner_id, col(MessageRow.idempotency_key).in_(keys)))
        )
        recipients = self._recipients_rows_many(s, [row.id for row in stored])
        # key -> (content hash, message): what is stored, and what this batch adds as it goes.
        known = {row.idempotency_key: (row.content_hash, _record(row, recipients[row.id])) for row in stored}
        adder = _Adder(s, owner_id, daily_segments, now)
        adder.expect(new for new in items if new.idempotency_key not in known)
        outcomes = []
        for new in items:
            found = known.get(new.idempotency_key)
            if found is not None:
                content_hash, record = found
                if content_hash != new.content_hash:
                    outcomes.append(SendOutcome(None, error=_conflict(record.id)))
                else:
                    outcomes.append(SendOutcome(record))
                continue
            try:
                record = adder.add(new)
            except (InvalidArgument, ResourceExhausted) as exc:  # raised before anything was queued
                outcomes.append(SendOutcome(None, error=exc))
                continue
            known[new.idempotency_key] = (new.content_hash, record)
            outcomes.append(SendOutcome(record, True))
            if self.claims is not None:
                self.claims.note_unread(s.info, record.device_id, (record.id,))  # no claim at create overtakes it
        adder.write()
        return outcomes

    def delete_device(self, owner_id: str, device_id: str, now: datetime) -> tuple[int, int, set[str]]:
        """Revoke a device and release what it has not accepted, in one transaction.

        Unpinned messages go to another of the owner's phones (or wait unrouted); messages
        pinned to it FAIL. What it accepted stays as it is: the phone may have sent it, and
        it can no longer report. Returns (rerouted, failed, devices to wake). NotFound for
        an unknown, deleted or foreign device.

        Per recipient (the dispatch unit since the scheduler): a message shows PENDING while
        any recipient is, even with others DISPATCHED or ACCEPTED, so only its PENDING and
        DISPATCHED recipients are failed or released; the accepted ones keep their state.
        """
        now = to_utc(now)

        def tx(s: Writes) -> tuple[int, int, set[str]]:
            device = s.get(Device, device_id)
            if device is None or device.owner_id != owner_id or device.revoked:
                raise NotFound(f"device {device_id} not found")
            device.revoked, device.session_id = True, ""
            s.add(device)
            s.s.flush()
            rows = load_messages(s, _M.device_id == device_id, _M.state.in_(_UNACCEPTED))
            recipients = self._recipients_rows_many(s, [r.id for r in rows])
            pinned = [r for r in rows if r.pinned]
            for row in pinned:
                rs = recipients[row.id]
                only = [r for r in rs if State(r.state) in UNACCEPTED_STATES]
                self._transition(s, row, rs, State.FAILED, "device deleted", now, only=only)
            moving = [r for r in rows if not r.pinned]
            for row in moving:
                rs = recipients[row.id]
                only = [r for r in rs if r.state == int(State.DISPATCHED)]
                self._transition(s, row, rs, State.PENDING, "device_deleted", now, only=only)
            target, _ = self._route(s, owner_id, "") if moving else (None, False)
            for row in moving:
                # The phone that was sent them is gone: like new messages, they may now follow
                # the phones (adopted when unrouted, rerouted from an offline target).
                row.device_id, row.ever_dispatched = target, False
                s.add(row)
            if moving and self.claims is not None:
                self.claims.note_behind((target,))
            return len(moving), len(pinned), {device_id, *([target] if target else [])}

        return self.db.transact(in_writes(tx))

    def get(self, owner_id: str, message_id: str) -> MessageRecord:
        with self.db.read() as s:
            row = s.get(MessageRow, message_id)
            if row is None or row.owner_id != owner_id:
                raise NotFound(f"message {message_id} not found")
            return _record(row, self._recipients_rows(s, row.id))

    def list(
        self, owner_id: str, flt: MessageFilter, *, limit: int, before_id: str | None = None, after_id: str | None = None
    ) -> list[MessageRecord]:
        """Newest first below `before_id`; oldest first above `after_id` (export). ULIDs sort by creation."""
        with self.db.read() as s:
            q = _filtered(select(MessageRow), owner_id, flt)
            if before_id:
                q = q.where(MessageRow.id < before_id)
            if after_id is not None:
                q = q.where(MessageRow.id > after_id).order_by(col(MessageRow.id))
            else:
                q = q.order_by(col(MessageRow.id).desc())
            rows = list(s.exec(q.limit(limit)))
            recipients = self._recipients_rows_many(s, [r.id for r in rows])
            return [_record(r, recipients[r.id]) for r in rows]

    def count(self, owner_id: str, flt: MessageFilter) -> int:
        """How many of the owner's messages `flt` matches (one COUNT)."""
        with self.db.read() as s:
            return int(s.exec(_filtered(select(func.count()).select_from(MessageRow), owner_id, flt)).one())

    def cancel(self, owner_id: str, message_id: str, now: datetime) -> tuple[MessageRecord, str | None]:
        """Cancel a message while no recipient is held by a phone. Returns it and the device
        it is routed to (None: unrouted), whose session must hear of it: it Drops the message
        if in flight, and takes it out of its queue in memory (a cancelled message left there
        would hold back the ones behind it on its SIM while pacing holds it)."""
        now = to_utc(now)

        def tx(s: Writes) -> tuple[MessageRecord, str | None]:
            row = s.get(MessageRow, message_id)
            if row is None or row.owner_id != owner_id:
                raise NotFound(f"message {message_id} not found")
            recipients = self._recipients_rows(s, row.id)
            if State(row.state) != State.CANCELLED:
                held = [r for r in recipients if State(r.state) not in UNACCEPTED_STATES]
                if held:
                    raise FailedPrecondition(
                        f"message {message_id} cannot be cancelled: recipient {held[0].idx} is "
                        f"{State(held[0].state).name}"
                    )
                self._transition(s, row, recipients, State.CANCELLED, "cancelled by client", now)
            return _record(row, recipients), row.device_id

        return self.db.group(in_writes(tx))

    def reschedule(
        self, owner_id: str, message_id: str, schedule_at: datetime | None, now: datetime
    ) -> tuple[MessageRecord, str | None]:
        """Move a message's send time (None = send now) while every recipient is PENDING.
        Returns it and the device to wake (its next wake-up time changed)."""
        now = to_utc(now)
        at = to_utc(schedule_at) if schedule_at is not None else None

        def tx(s: Writes) -> tuple[MessageRecord, str | None]:
            row = s.get(MessageRow, message_id)
            if row is None or row.owner_id != owner_id:
                raise NotFound(f"message {message_id} not found")
            recipients = self._recipients_rows(s, row.id)
            # PENDING is not enough: a retry waiting for its backoff, or a recipient back from a
            # lost session, was handed to a phone already (rescheduling would skip the backoff).
            moving = [r for r in recipients if State(r.state) != State.PENDING or r.attempt > 1 or row.ever_dispatched]
            if moving:
                raise FailedPrecondition(
                    f"message {message_id} cannot be rescheduled: recipient {moving[0].idx} is {State(moving[0].state).name}"
                )
            if at is not None and row.valid_until is not None and at >= row.valid_until:
                raise InvalidArgument("schedule_at", "must be before the message's valid_until")
            row.schedule_at, row.updated_at = at, now
            s.add(row)
            for r in recipients:
                r.not_before, r.paced_until, r.updated_at = at, None, now
                s.add(r)
            return _record(row, recipients), row.device_id

        return self.db.transact(in_writes(tx))

    def events_after(
        self, owner_id: str, after_id: int, *, limit: int, message_ids: Sequence[str] = (), upto: int | None = None
    ) -> list[EventRecord]:
        """The owner's events with after_id < id (<= upto), oldest first."""
        with self.db.read() as s:
            q = (
                select(EventRow, RecipientRow.phone_number)
                .join(
                    RecipientRow,
                    (RecipientRow.message_id == EventRow.message_id) & (RecipientRow.idx == EventRow.recipient_index),
                )
                .where(EventRow.owner_id == owner_id, EventRow.kind == "message", col(EventRow.id) > after_id)
            )
            if upto is not None:
                q = q.where(col(EventRow.id) <= upto)
            if message_ids:
                q = q.where(col(EventRow.message_id).in_(message_ids))
            rows = s.exec(q.order_by(col(EventRow.id)).limit(limit)).all()
            return [
                EventRecord(
                    id=e.id or 0,
                    message_id=e.message_id,
                    recipient_index=e.recipient_index,
                    phone_number=phone,
                    state=State(e.state),
                    message_state=State(e.message_state),
                    error=e.error,
                    created_at=e.created_at,
                )
                for e, phone in rows
            ]

    def last_event_id(self) -> int:
        with self.db.read() as s:
            return int(s.exec(select(func.max(EventRow.id))).one() or 0)

    def changes_for_phones(self, after: int, window: int = 10_000) -> tuple[list[tuple[str, str]], int]:
        """(device, message) of the event log's entries after `after` that a phone's session
        must read (a message now PENDING for it, or CANCELLED / EXPIRED), at most `window`
        ids on; and the id read up to. The bridges' catch-up for wake-ups lost on the bus
        (device_bridge/follower.py): event ids commit in order, so reading up to the largest
        misses nothing."""
        with self.db.read() as s:
            upto = min(int(s.exec(select(func.max(EventRow.id))).one() or 0), after + window)
            if upto <= after:
                return [], after
            rows = fetch(s.connection(), _CHANGES_FOR_PHONES, {"after": after, "upto": upto})
        return [(device_id, message_id) for device_id, message_id in rows if device_id], upto

    # ---- bridge side -------------------------------------------------------------

    # The session open's and close's statements, written once and run raw (gateway.storage.raw).
    # What older sessions of the device dispatched. A message with a DISPATCHED recipient is
    # PENDING or DISPATCHED itself (derive_message_state: the least advanced state moving), and
    # saying so lets ix_message_dispatch skip the device's history instead of reading it all.
    _STALE = Sql(
        "SELECT recipient.message_id, recipient.idx FROM recipient JOIN message ON message.id = recipient.message_id"
        f" WHERE message.device_id = :device_id AND message.state IN ({_PENDING}, {_DISPATCHED})"
        f" AND recipient.state = {_DISPATCHED} AND recipient.session_id != :session_id"
    )
    # Adopt what waits for no phone in particular: unrouted messages, and unpinned,
    # never-dispatched ones routed to a device of the owner that is offline now.
    # Written with ADOPTABLE as it stands, so the partial index ix_message_adoptable serves it:
    # a session open then reads the owner's adoptable messages, not every pending one.
    _ADOPT = Sql(
        f"UPDATE message SET device_id = :k_device_id WHERE owner_id = :k_owner_id AND {ADOPTABLE}"
        " AND (device_id IS NULL OR device_id IN (SELECT device.id FROM device"
        " WHERE device.owner_id = :k_owner_id AND device.session_id = '' AND device.id != :k_device_id))",
    )
    # What a session dispatched and the phone did not accept.
    _UNACCEPTED_ON = Sql(f"SELECT message_id, idx FROM recipient WHERE session_id = :session_id AND state = {_DISPATCHED}")
    # Never dispatched, unpinned PENDING messages of a device (rerouted when it goes offline).
    _MOVABLE = f"device_id = :k_device_id AND state = {_PENDING} AND pinned = :no AND ever_dispatched = :no"
    _ANY_MOVABLE = Sql(f"SELECT id FROM message WHERE {_MOVABLE} LIMIT 1", binds={"no": _BOOL})
    _MOVE = Sql(f"UPDATE message SET device_id = :target WHERE {_MOVABLE}", binds={"no": _BOOL})

    def open_session(
        self, owner_id: str, device_id: str, session_id: str, held: Iterable[HeldRecipient], now: datetime
    ) -> None:
        """A phone's session started: the recipients the phone holds are ACCEPTED, those
        dispatched on any older session of this device go back to PENDING (they will be
        sent again), and the owner's unrouted messages are routed here. (The bridge does this
        inside the session-open job: gateway.devices.session_jobs.)"""
        now = to_utc(now)
        return self.db.group(in_writes(lambda s: self.open_session_in(s, owner_id, device_id, session_id, held, now)))

    def open_session_in(
        self, s: Writes, owner_id: str, device_id: str, session_id: str, held: Iterable[HeldRecipient], now: datetime
    ) -> None:
        """`open_session` in the caller's transaction (`now` in UTC)."""
        held_keys = {(h.message_id, h.recipient_index): h.attempt for h in held}
        rows = messages_by_id(s, {m for m, _ in held_keys}, device_id) if held_keys else []
        recipients = self._recipients_rows_many(s, [r.id for r in rows])
        for row in rows:
            rs = recipients[row.id]
            only = [r for r in rs if held_keys.get((row.id, r.idx)) == r.attempt]
            self._transition(s, row, rs, State.ACCEPTED, "", now, only=only)
        stale = s.fetch(self._STALE, {"device_id": device_id, "session_id": session_id})
        self._move_recipients(s, stale, State.PENDING, "session_lost", now)
        s.run(self._ADOPT, {"k_owner_id": owner_id, "k_device_id": device_id})
        if self.claims is not None:
            self.claims.note_behind((device_id,))  # a session of it still open has not seen them

    def load_session_in(
        self, s: Writes, device_id: str, held_ids: Collection[str], now: datetime
    ) -> tuple[DeviceQueue | None, dict[str, State]]:
        """In the session-open transaction, after `open_session_in`: the phone's queue loaded
        whole, its expired messages taken first as a fresh round does (the session's first
        round plans on this queue instead of loading it again), and the messages the phone
        must Drop: those flagged for one, and those of `held_ids` (the ones the phone says it
        holds) that ended CANCELLED or EXPIRED. None for the queue: the device is gone."""
        self._expire_rows(s, now, device_id=device_id, batch=_EXPIRE_BATCH)
        drops = self._take_drops(s, device_id)
        if held_ids:  # its own final state, rather than the flag's EXPIRED
            ids = sorted(set(held_ids))
            drops.update((m, State(st)) for m, st in s.fetch(_FINAL_STATES, {"ids": ids, "device_id": device_id}))
        return self._load_queue(s, device_id, now), drops

    def dispatch(
        self, device_id: str, session_id: str, room: int, now: datetime, in_flight: Iterable[str] = ()
    ) -> DispatchBatch:
        """One dispatch round for a phone from a fresh load of its queue: expire what is due,
        then claim what its SIMs may send now (`DeviceQueue.plan`: priority then FIFO, at
        most `room` Delivers, at most one per message and none for a message in flight).
        Returns the Delivers to send, the messages to Drop, and when to look again.

        The bridge keeps the queue in memory between rounds instead (`dispatch_round`); this
        is the same round on what storage holds, for the scheduler's tests and the model check.
        """
        now = to_utc(now)
        busy = set(in_flight)
        return self.db.group(in_writes(lambda s: self._round(s, None, device_id, session_id, room, now, busy, ())[1]))

    def dispatch_round(
        self,
        queue: DeviceQueue | None,
        device_id: str,
        session_id: str,
        room: int,
        now: datetime,
        in_flight: Collection[str],
        fresh: Collection[str] = (),
        target: ClaimTarget | None = None,
    ) -> tuple[DeviceQueue | None, DispatchBatch]:
        """One round on the session's queue kept in memory, in one write job: reload the
        messages named in `fresh` (new, or changed by a receipt), plan, write the claims.

        With a `target` (the session's, shared with claims at create), the room is what the
        target has free when the job runs, and the claims are taken from it there, so rounds
        and creates together never claim more than the window; `room` is then ignored.

        With no queue (the first round), or one whose last round did not finish (`busy`) or
        found memory behind storage (`needs_reload`), the queue is loaded whole, and the
        device's expired and dropped messages are taken first, as a fresh round does.
        Returns the queue to keep (None: the device is gone) and the round's outcome. The
        caller clears `queue.busy` once this returned (the transaction committed).
        """
        _, kept, batch = self.dispatch_round_future(queue, device_id, session_id, room, now, in_flight, fresh, target).result()
        return kept, batch

    def dispatch_round_future(
        self,
        queue: DeviceQueue | None,
        device_id: str,
        session_id: str,
        room: int,
        now: datetime,
        in_flight: Collection[str],
        fresh: Collection[str] = (),
        target: ClaimTarget | None = None,
        ending: Collection[str] = (),
    ) -> Future[tuple[dict[str, State], DeviceQueue | None, DispatchBatch]]:
        """`dispatch_round` as a group-commit job whose future the session's loop waits on
        (one hand-off each way), also reading, in the same transaction, which of the messages
        in `ending` (in flight on the phone) ended CANCELLED or EXPIRED: (those, queue, outcome)."""
        now = to_utc(now)

        def tx(s: Writes) -> tuple[dict[str, State], DeviceQueue | None, DispatchBatch]:
            if self.fence and [row[0] for row in s.fetch(_LIVE_SESSION, {"device_id": device_id})] != [session_id]:
                return {}, queue, DispatchBatch([], {}, None, fenced=True)
            finals = _final_states_in(s, device_id, ending) if ending else {}
            kept, batch = self._round_for(s, queue, device_id, session_id, room, now, in_flight, fresh, target)
            return finals, kept, batch

        return self.db.group_future(in_writes(tx))

    def _round_for(
        self,
        s: Writes,
        queue: DeviceQueue | None,
        device_id: str,
        session_id: str,
        room: int,
        now: datetime,
        in_flight: Collection[str],
        fresh: Collection[str],
        target: ClaimTarget | None,
    ) -> tuple[DeviceQueue | None, DispatchBatch]:
        """A round, with the room taken from the session's target when it has one."""
        if target is None:
            return self._round(s, queue, device_id, session_id, room, now, in_flight, fresh)
        target.round_room = taken = target.take_room()
        kept, batch = self._round(s, queue, device_id, session_id, taken, now, in_flight, fresh)
        # Creates plan on the queue this round leaves from now on (not on the one a reload
        # replaced), and know which messages it read.
        target.caught_up(kept, set(fresh) if kept is queue and kept is not None else None)
        if batch.units:
            target.claimed(len(batch.units))
            s.info.setdefault(ON_ROLLBACK, []).append(partial(target.unclaimed, len(batch.units)))
        return kept, batch

    def _round(
        self,
        s: Writes,
        queue: DeviceQueue | None,
        device_id: str,
        session_id: str,
        room: int,
        now: datetime,
        in_flight: Collection[str],
        fresh: Collection[str],
    ) -> tuple[DeviceQueue | None, DispatchBatch]:
        drops: dict[str, State] = {}
        loaded: set[str] | None = None  # messages read in this transaction (None: all of the queue)
        if queue is None or queue.busy or queue.needs_reload:
            # Bounded: at most _EXPIRE_BATCH expired per round (the rest by the next one or
            # expire_due; the plan skips them).
            self._expire_rows(s, now, device_id=device_id, batch=_EXPIRE_BATCH)
            drops = self._take_drops(s, device_id)
            if room <= 0:
                return None, DispatchBatch([], drops, None)  # loaded by the next round with room
            queue = self._load_queue(s, device_id, now)
            if queue is None:
                return None, DispatchBatch([], drops, None)
        else:
            loaded = self._refresh(s, queue, fresh) if fresh else set()
        queue.busy = True
        plan = queue.plan(room, now, in_flight)
        if plan.expired:
            self._expire_rows(s, now, device_id=device_id, batch=_EXPIRE_BATCH)
            drops.update(self._take_drops(s, device_id))
            queue = self._load_queue(s, device_id, now)
            if queue is None:
                return None, DispatchBatch([], drops, None)
            queue.busy, loaded = True, None
            plan = queue.plan(room, now, in_flight)
        units = self._write_plan(s, queue, plan, session_id, now, loaded)
        gate = queue.next_gate(now)
        # A claim memory got wrong was skipped: look again at once, on a reloaded queue.
        wake = now if queue.needs_reload else min((t for t in (plan.wake_at, gate) if t is not None), default=None)
        return queue, DispatchBatch(units, drops, wake)

    def _load_queue(self, s: Writes, device_id: str, now: datetime) -> DeviceQueue | None:
        """A phone's dispatch state from storage: its settings, its PENDING messages (one
        query, and one for their recipients) and its recent dispatches (pacing history)."""
        device = s.fetch(_DEVICE_PACING, {"device_id": device_id})
        if not device:
            return None
        settings_json, sims_json = device[0]
        pacing = DevicePacing.from_json(settings_json, self.base_pacing)
        slots = tuple(sorted(x.slot for x in sims_from_json(sims_json))) or (1,)
        history = None if pacing.unpaced else self._history(s, device_id, pacing, now)
        rows = select_messages(s, _PENDING_ON, {"device_id": device_id})
        recipients = load_recipients(s, [m.id for m in rows])
        return DeviceQueue(device_id, pacing, slots, history, ((m, recipients[m.id]) for m in rows), now=now)

    @staticmethod
    def _refresh(s: Writes, queue: DeviceQueue, message_ids: Iterable[str]) -> set[str]:
        """Put these messages into the queue as stored now (or take them out); returns them."""
        ids = set(message_ids)
        rows = messages_by_id(s, ids)
        recipients = load_recipients(s, [m.id for m in rows])
        for m in rows:
            queue.put(m, recipients[m.id])
        for gone in ids - {m.id for m in rows}:
            queue.remove(gone)
        return ids

    def _write_plan(
        self, s: Writes, queue: DeviceQueue, plan: Plan, session_id: str, now: datetime, loaded: set[str] | None
    ) -> list[DispatchUnit]:
        """Store a plan: the claims DISPATCHED on `session_id` (with their dispatch-log rows),
        the recipients whose pinned SIM is absent FAILED, the pacing stamps. Rows the queue
        held from an earlier transaction (not in `loaded`) are read again first: a claim
        whose recipients changed meanwhile (a cancel, a reschedule) is not made, and the
        queue is marked to reload (its history counted the claim)."""
        if plan.paced:
            s.run_many(
                _STAMP_PACED,
                [{"k_message_id": r.message_id, "k_idx": r.idx, "paced_until": r.paced_until} for r in plan.paced],
            )
        touched = {c.message_id for c in plan.claims} | {m for m, _ in plan.missing_sim}
        if loaded is not None and touched - loaded:
            self._refresh(s, queue, touched - loaded)
        for message_id, idx in plan.missing_sim:
            entry = queue.get(message_id)
            if entry is None:
                continue
            row, rs = entry
            only = [r for r in rs if r.idx == idx and r.state == int(State.PENDING)]
            reason = f"sim_not_present: SIM {row.sim_number} is not in this phone"
            self._transition(s, row, rs, State.FAILED, reason, now, only=only)
            queue.put(row, rs)
        units = []
        for claim in plan.claims:
            entry = queue.get(claim.message_id)
            wanted = set(claim.indices)
            claimed = [
                r for r in (entry[1] if entry is not None else [])
                if r.idx in wanted and r.state == int(State.PENDING) and r.attempt == claim.attempt
                and (r.not_before is None or r.not_before <= now)
            ]
            if entry is None or len(claimed) != len(wanted):
                queue.needs_reload = True  # storage moved on meanwhile; its history counted this claim
                continue
            row, rs = entry
            self._transition(s, row, rs, State.DISPATCHED, "", now, only=claimed)
            row.ever_dispatched = True
            for r in claimed:
                r.session_id, r.sim, r.paced_until = session_id, claim.sim, None
                s.add(r)
                s.dispatch_log(
                    {"device_id": queue.device_id, "sim": claim.sim, "at": now, "parts": max(row.parts, 1),
                     "message_id": row.id, "recipient_index": r.idx}
                )
            units.append(DispatchUnit(_record(row, rs), tuple(r.idx for r in claimed), claim.attempt, claim.sim))
            queue.put(row, rs)
        return units

    @staticmethod
    def _history(s: Writes, device_id: str, pacing: DevicePacing, now: datetime) -> PacingHistory:
        since = now - history_span(pacing)
        sent = [
            Sent(to_utc(at), sim, parts)  # closed windows
            for at, sim, parts in s.fetch(_SENT_SINCE, {"device_id": device_id, "since": since})
        ]
        month: dict[int, set[str]] = {}
        if any(x.recipients_per_month for x in (pacing.default, *pacing.sims.values())):
            for sim, number in s.fetch(_NUMBERS_SINCE, {"device_id": device_id, "since": month_start(now)}):
                month.setdefault(sim, set()).add(number)
        return PacingHistory(sent, month)

    def apply_receipts(self, device_id: str, receipts: Sequence[ReceiptUpdate], now: datetime) -> int:
        """Apply a phone's receipts, forward only; stale, repeated or foreign ones change nothing.
        A SENT / DELIVERED overrides EXPIRED / CANCELLED (`may_move`: the SMS went out).

        A report on one part of a multipart SMS updates the part counts; the recipient moves
        to SENT / DELIVERED once every part has. A retryable FAILED (gateway.messages.retry)
        with no part sent returns the recipient to PENDING for its next attempt after a
        backoff, until `max_attempts`. Returns how many states changed. Safe to call again
        with the same receipts.
        """
        return self.apply_receipts_checked(device_id, receipts, now)[0]

    def apply_receipts_checked(
        self, device_id: str, receipts: Sequence[ReceiptUpdate], now: datetime
    ) -> tuple[int, dict[int, ReceiptRefusal]]:
        """`apply_receipts`, also returning the receipts it can never apply, by position: one
        naming a message not routed to this device, or a recipient index the message lacks.
        Those change nothing; the bridge refuses them (Reject) so the phone stops re-sending."""
        changed, refused, _ = self.apply_receipt_batch_future(device_id, receipts, now).result()
        return changed, refused

    def apply_receipt_batch_future(
        self, device_id: str, receipts: Sequence[ReceiptUpdate], now: datetime
    ) -> Future[tuple[int, dict[int, ReceiptRefusal], dict[str, State]]]:
        """`apply_receipts_checked` as a group-commit job whose future the session's loop
        waits on, also giving which of the messages the phone ACCEPTED ended CANCELLED or
        EXPIRED (it must drop them: what `final_states` answers), from the rows the same
        transaction read: one write job for a session's batch, no other read."""
        now = to_utc(now)
        accepted = {r.message_id for r in receipts if r.state == State.ACCEPTED}

        def tx(s: Writes) -> tuple[int, dict[int, ReceiptRefusal], dict[str, State]]:
            changed, refused = 0, dict[int, ReceiptRefusal]()
            ids = list({r.message_id for r in receipts})
            rows = {r.id: r for r in messages_by_id(s, ids, device_id)}
            recipients = self._recipients_rows_many(s, list(rows))
            for i, receipt in enumerate(receipts):
                row = rows.get(receipt.message_id)
                if row is None:
                    refused[i] = ReceiptRefusal.UNKNOWN_MESSAGE
                    continue
                count = len(recipients[row.id])
                if receipt.recipient_index >= count or any(x >= count for x in receipt.recipient_indices):
                    refused[i] = ReceiptRefusal.UNKNOWN_RECIPIENT
                    continue
                changed += self._apply_receipt(s, row, recipients[row.id], receipt, now)
            ended = (int(State.CANCELLED), int(State.EXPIRED))
            finals = {
                message_id: State(r.state)
                for message_id in accepted if message_id in rows
                for r in recipients[message_id] if r.state in ended
            }
            return changed, refused, finals

        return self.db.group_future(in_writes(tx))

    def _apply_receipt(self, s: Writes, row: Msg, rs: list[Rcp], receipt: ReceiptUpdate, now: datetime) -> int:
        # A late report of an old attempt is stale. Attempt 0 ("the current one", from a phone
        # that does not say) never reaches a PENDING recipient: that may be a retry waiting
        # for its backoff, and a replayed receipt must not claim it was handed over.
        current = [
            r for r in rs
            if receipt.attempt == r.attempt or (receipt.attempt == 0 and r.state != int(State.PENDING))
        ]
        if receipt.state == State.ACCEPTED:
            wanted = set(receipt.recipient_indices)
            only = [r for r in current if (r.idx in wanted if wanted else r.state == int(State.DISPATCHED))]
            return self._transition(s, row, rs, State.ACCEPTED, "", now, only=only)
        if receipt.recipient_index >= len(rs):
            log.warning("receipt names recipient %d of %d; ignored", receipt.recipient_index, len(rs))
            return 0
        r = rs[receipt.recipient_index]
        if r not in current:
            return 0
        # Any report on a recipient means the phone holds it.
        changed = self._transition(s, row, rs, State.ACCEPTED, "", now, only=[r])
        total = max(row.parts, 1)
        if receipt.state in (State.SENT, State.DELIVERED):
            done = receipt.parts_done or total
            if receipt.state == State.SENT:
                r.parts_sent = max(r.parts_sent, min(done, total))
            else:
                # A delivered part was sent, but a report on part 1 says nothing of part 3:
                # parts_sent only rises to what is delivered (it used to jump to the total,
                # showing every part sent while the recipient was not SENT).
                r.parts_delivered = max(r.parts_delivered, min(done, total))
                r.parts_sent = max(r.parts_sent, r.parts_delivered)
            s.add(r)
            if done < total:
                return changed  # one part of several: counted, no state change, no event
            return changed + self._transition(s, row, rs, receipt.state, "", now, only=[r])
        if State(r.state) in PROVISIONAL_STATES:
            # Expired or cancelled, and the phone failed it anyway: nothing went out whole, as the
            # state already says (may_move keeps it). Only the parts that did go out are recorded.
            if receipt.parts_done > r.parts_sent:
                r.parts_sent = min(receipt.parts_done, total)
                s.add(r)
            return changed
        if State(r.state) in FINAL_STATES:
            return changed  # a late FAILED for a finished recipient: not even its last_error changes
        cls = receipt.failure_class or "generic_failure"
        reason = cls if not receipt.error or receipt.error == cls else f"{cls}: {receipt.error}"
        r.last_error = reason
        r.parts_sent = max(r.parts_sent, min(receipt.parts_done, total))
        s.add(r)
        settings = self.scheduler
        if (
            cls in RETRYABLE
            and r.parts_sent == 0  # a part went out (this report or an earlier one): a retry would repeat it
            and State(r.state) in UNSENT_STATES
            and r.attempt < settings.max_attempts
        ):
            delay = backoff(r.attempt, settings.retry_base, settings.retry_max, self._rng)
            return changed + self._retry(s, row, rs, r, reason, now + timedelta(seconds=delay), now)
        return changed + self._transition(s, row, rs, State.FAILED, reason, now, only=[r])

    def _retry(self, s: Writes, row: Msg, rs: list[Rcp], r: Rcp, reason: str, at: datetime, now: datetime) -> int:
        """Back to PENDING for the next attempt, not before `at` (the one backward move)."""
        r.attempt += 1
        r.state, r.session_id, r.not_before, r.paced_until, r.error = int(State.PENDING), "", at, None, ""
        r.updated_at = now
        s.add(r)
        note = f"retry {r.attempt} of {self.scheduler.max_attempts} after {reason}"
        return self._changed(s, row, rs, [r], note, now)

    def close_session(self, device_id: str, session_id: str, now: datetime) -> None:
        """The session ended: what it dispatched and the phone did not accept goes back to
        PENDING. (The bridge does this inside the session-close job: gateway.devices.session_jobs.)"""
        now = to_utc(now)
        return self.db.group(in_writes(lambda s: self.close_session_in(s, session_id, now)))

    def close_session_in(self, s: Writes, session_id: str, now: datetime) -> None:
        """`close_session` in the caller's transaction (`now` in UTC)."""
        unaccepted = s.fetch(self._UNACCEPTED_ON, {"session_id": session_id})
        self._move_recipients(s, unaccepted, State.PENDING, "session_lost", now)

    def reroute_from(self, owner_id: str, device_id: str) -> set[str]:
        """Move the never-dispatched, unpinned PENDING messages of an offline device to the
        owner's least-loaded online device. Messages ever dispatched stay: that phone may
        hold them, and sending them from a second phone could send an SMS twice. Returns the
        device they went to (none: nothing moved)."""
        return self.db.group(in_writes(lambda s: self.reroute_from_in(s, owner_id, device_id)))

    def reroute_from_in(self, s: Writes, owner_id: str, device_id: str) -> set[str]:
        """`reroute_from` in the caller's transaction."""
        # Most phones go offline with nothing to move: then no routing (which reads every
        # device of the owner) at all.
        if not s.fetch(self._ANY_MOVABLE, {"k_device_id": device_id, "no": False}):
            return set()
        target, _ = self._route(s, owner_id, "", exclude=device_id, online_only=True)  # type: ignore[arg-type]
        if target is None:
            return set()
        moved = s.run(self._MOVE, {"k_device_id": device_id, "target": target, "no": False})
        if moved and self.claims is not None:
            self.claims.note_behind((target,))  # its queue has not seen them: no claim at create before they are
        return {target} if moved else set()

    def final_states(self, device_id: str, message_ids: Iterable[str]) -> dict[str, State]:
        """Which of these messages of the device ended CANCELLED or EXPIRED (the phone must drop them)."""
        ids = list(message_ids)
        if not ids:
            return {}
        with self.db.read() as s:
            return {mid: State(st) for mid, st in fetch(s.connection(), _FINAL_STATES, {"ids": ids, "device_id": device_id})}

    def expire_due(self, now: datetime, *, batch: int = 500) -> set[str]:
        """Expire unsent recipients past valid_until; returns the devices to wake (Drop)."""
        now = to_utc(now)
        devices: set[str] = set()
        while True:
            dropped, rows = self.db.transact(in_writes(lambda s: self._expire_rows(s, now, batch=batch)))
            devices.update(r.device_id for r in rows if r.id in dropped and r.device_id)
            if len(rows) < batch:
                return devices

    @staticmethod
    def _take_drops(s: Writes, device_id: str) -> dict[str, State]:
        """The device's messages flagged for a Drop, unflagged: the phone is told once per
        session; a phone that missed it lists the message in its next Hello and is told then."""
        ids = [i for (i,) in s.fetch(_FLAGGED, {"yes": True, "device_id": device_id})]
        if ids:
            s.run(_UNFLAG, {"ids": ids, "no": False})
        return {i: State.EXPIRED for i in ids}

    def _expire_rows(
        self, s: Writes, now: datetime, *, device_id: str | None = None, batch: int | None = None
    ) -> tuple[set[str], list[Msg]]:
        """Expire the unsent recipients of messages past valid_until. Returns the messages a
        phone may hold (ever dispatched: the phone gets a Drop) and the rows looked at."""
        params: dict[str, Any] = {"now": now, "device_id": device_id, "limit": batch}
        due = select_messages(s, _EXPIRED[device_id is not None, batch is not None], params)
        rows = self._move_all(s, due, State.EXPIRED, _EXPIRED_REASON, now)
        for row in rows:
            if row.ever_dispatched:
                row.drop_pending = True
                s.add(row)
        return {r.id for r in rows if r.ever_dispatched}, rows

    def pacing_of(self, device_id: str) -> DevicePacing:
        """The pacing the bridge applies to a phone: its overrides on the config defaults."""
        with self.db.read() as s:
            device = s.get(Device, device_id)
            return DevicePacing.from_json(device.settings_json if device else "", self.base_pacing)

    def device_pacing(self, owner_id: str, device_id: str) -> DevicePacing:
        with self.db.read() as s:
            return DevicePacing.from_json(self._owned_device(s, owner_id, device_id).settings_json, self.base_pacing)

    def set_device_pacing(self, owner_id: str, device_id: str, pacing: DevicePacing | None) -> DevicePacing:
        """Store a phone's pacing overrides (None = back to the config defaults)."""
        with self.db.write() as s:
            device = self._owned_device(s, owner_id, device_id)
            device.settings_json = "{}" if pacing is None else pacing.to_json()
            s.add(device)
            if self.claims is not None:
                self.claims.note_behind((device_id,))  # no claim at create on the old pacing
            # Pacing stamps were computed under the old settings.
            s.exec(
                update(RecipientRow)
                .where(col(RecipientRow.paced_until).is_not(None))
                .where(col(RecipientRow.message_id).in_(select(MessageRow.id).where(MessageRow.device_id == device_id, MessageRow.state == int(State.PENDING))))
                .values(paced_until=None)
            )
            return DevicePacing.from_json(device.settings_json, self.base_pacing)

    @staticmethod
    def _owned_device(s: Session, owner_id: str, device_id: str) -> Device:
        device = s.get(Device, device_id)
        if device is None or device.owner_id != owner_id or device.revoked:
            raise NotFound(f"device {device_id} not found")
        return device

    def prune_dispatch_log(self, before: datetime) -> int:
        """Drop dispatch history older than every pacing window (the calendar month cap's included)."""
        with self.db.write() as s:
            result = s.exec(delete(DispatchLogRow).where(col(DispatchLogRow.at) < to_utc(before)))
            return int(result.rowcount or 0)

    # ---- internals ---------------------------------------------------------------

    def _move_all(self, s: Writes, rows: Iterable[Msg], new: State, error: str, now: datetime) -> list[Msg]:
        """`_transition` every recipient of each row to `new`, with one recipients query."""
        rows = list(rows)
        recipients = self._recipients_rows_many(s, [r.id for r in rows])
        for row in rows:
            self._transition(s, row, recipients[row.id], new, error, now)
        return rows

    def _move_recipients(
        self, s: Writes, recipient_keys: Iterable[tuple[str, int]], new: State, error: str, now: datetime
    ) -> int:
        """`_transition` these recipients (message id, index; of any messages) to `new`."""
        chosen: dict[str, set[int]] = {}
        for message_id, idx in list(recipient_keys):
            chosen.setdefault(message_id, set()).add(idx)
        if not chosen:
            return 0
        rows = messages_by_id(s, chosen)
        recipients = self._recipients_rows_many(s, list(chosen))
        moved = 0
        for row in rows:
            rs = recipients[row.id]
            moved += self._transition(s, row, rs, new, error, now, only=[r for r in rs if r.idx in chosen[row.id]])
        return moved

    def _transition(
        self,
        s: Writes,
        row: Msg | MessageRow,
        recipients: list[Rcp],
        new: State,
        error: str,
        now: datetime,
        *,
        only: list[Rcp] | None = None,
    ) -> int:
        """Move recipients (all, or `only`) to `new` where `may_move` allows; re-derive the
        message state; append one event per changed recipient. Returns how many changed."""
        moved = []
        for r in only if only is not None else recipients:
            if may_move(State(r.state), new):
                r.state = int(new)
                r.error = error if new in (State.FAILED, State.EXPIRED, State.CANCELLED) else ""
                if new == State.FAILED:
                    r.last_error = error
                if new == State.PENDING:
                    r.session_id = ""
                r.updated_at = now
                s.add(r)
                moved.append(r)
        return self._changed(s, row, recipients, moved, error, now)

    def _changed(
        self, s: Writes, row: Msg | MessageRow, recipients: list[Rcp], moved: list[Rcp], error: str, now: datetime
    ) -> int:
        """Re-derive the message state after `moved` changed and log one event each."""
        if not moved:
            return 0
        row.state = int(derive_message_state([State(r.state) for r in recipients], row.with_delivery_report))
        row.updated_at = now
        s.add(row)
        for r in moved:
            s.event(self._event(row, r, now, error))
            event = MESSAGE_EVENTS.get(State(r.state))
            if event is not None:  # the webhook outbox, in this same transaction (RELIABILITY 13)
                enqueue(
                    s, row.owner_id, event, row.device_id or "",
                    lambda r=r: message_body(_record(row, recipients), r.idx), now,  # type: ignore[misc]
                )
        return len(moved)

    @staticmethod
    def _event(row: Msg | MessageRow, r: Rcp, now: datetime, error: str = "") -> dict[str, Any]:
        """One event-log row's values (inserted with the others of the transaction at once)."""
        return {
            "owner_id": row.owner_id,
            "kind": EventKind.MESSAGE.value,
            "message_id": row.id,
            "recipient_index": r.idx,
            "state": r.state,
            "message_state": row.state,
            "error": error if State(r.state) in (State.FAILED, State.EXPIRED, State.CANCELLED, State.PENDING) else "",
            "inbound_id": "",
            "created_at": now,
        }

    def _route(
        self, s: Session, owner_id: str, device_id: str, *, exclude: str = "", online_only: bool = False
    ) -> tuple[str | None, bool]:
        """(device, pinned) for one message: see `_Router.route`."""
        return _Router(s, owner_id, exclude=exclude, online_only=online_only).route(device_id)

    def _existing(self, owner_id: str, new: NewMessage) -> MessageRecord | None:
        """The message already stored under this key, if its content matches; AlreadyExists if not."""
        with self.db.read() as s:
            row = s.exec(
                select(MessageRow).where(MessageRow.owner_id == owner_id, MessageRow.idempotency_key == new.idempotency_key)
            ).first()
            if row is None:
                return None
            if row.content_hash != new.content_hash:
                raise _conflict(row.id)
            return _record(row, self._recipients_rows(s, row.id))

    def _recipients_rows(self, s: Session | Writes, message_id: str) -> list[Rcp]:
        return load_recipients(s, [message_id])[message_id]

    def _recipients_rows_many(self, s: Session | Writes, ids: list[str]) -> dict[str, list[Rcp]]:
        return load_recipients(s, ids)


class _Adder:
    """Adds new messages in one write transaction (`create`: one; `create_many`: a batch).

    Each `add` routes the message (the owner's devices and loads are read once, and every
    message counts in the next choice, so a batch spreads like one-by-one sends), counts it
    against the daily segment cap (the usage row is read once) and queues its rows; `write`
    inserts them with one executemany per table (Core), not as ORM objects:
    building a SQLModel row costs about 0.3 ms, which would cap SendMessages near 1,000
    messages/s. The records are made from the same values and equal what a later read
    returns (PENDING, attempt 1, nothing sent).
    """

    def __init__(self, s: Session, owner_id: str, daily_segments: int, now: datetime, *, one: bool = False) -> None:
        """`one`: a single `add` follows (`create`): the cap is then checked by the usage
        write itself (`_COUNT_USAGE`), with no read before it."""
        self._s, self._owner_id, self._cap, self._now, self._one = s, owner_id, daily_segments, now, one
        self._router = _Router(s, owner_id, one=one)
        self._usage: tuple[str, int | None] | None = None  # (day, segments stored; None = no row yet)
        self._segments = 0  # added to the usage row by `write`
        self._messages: list[dict[str, Any]] = []
        self._recipients: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []

    def expect(self, items: Iterable[NewMessage]) -> None:
        """Read the devices these items will be routed among, in one query (`_Router.expect`)."""
        self._router.expect(new.device_id for new in items)

    def add(self, new: NewMessage) -> MessageRecord:
        """Queue one message; returns its record. Raises InvalidArgument (`device_id`) or
        ResourceExhausted (the daily cap) before anything is queued or counted."""
        device_id, pinned = self._router.route(new.device_id)
        self._count(new.parts * len(new.phone_numbers))
        self._router.took(device_id)
        return self._queue(new, device_id, pinned)

    def write(self) -> None:
        """Insert everything queued (messages first: the others refer to them) and the usage."""
        connection = self._s.connection()  # once: Session.connection() costs ~25 µs a call
        if self._usage is not None and self._segments:
            day, stored = self._usage
            key = {"owner_id": self._owner_id, "day": day}
            if stored is None:
                run(connection, _INSERT_USAGE, {**key, "segments": self._segments})
            else:
                run(connection, _ADD_USAGE, {"k_owner_id": self._owner_id, "k_day": day, "n": self._segments})
        for statement, values in ((_INSERT_MESSAGE, self._messages), (_INSERT_RECIPIENT, self._recipients)):
            run_many(connection, statement, values)  # raw: gateway.storage.raw
        log_events(self._s, self._events)  # inserted last, at commit (gateway.storage.event_log)

    def replace_last(self, msgs: Sequence[Msg], rcps: Sequence[Rcp]) -> None:
        """Insert these rows of the message added last instead of the ones queued (a claim
        at create changed them before the insert: `MessageRepository._claim_at_create`)."""
        last = self._messages[-1]
        for msg in msgs:
            assert msg.id == last["id"], "only the message added last"
            self._messages[-1] = {name: getattr(msg, name) for name in MSG_NAMES}
        changed = {r.idx: r for r in rcps if r.message_id == last["id"]}
        assert len(changed) == len(rcps), "only the recipients of the message added last"
        self._recipients = [
            {name: getattr(changed[r["idx"]], name) for name in RCP_NAMES}
            if r["message_id"] == last["id"] and r["idx"] in changed else r
            for r in self._recipients
        ]

    def rows_of_last(self) -> tuple[Msg, list[Rcp]]:
        """The rows of the message added last, as plain rows (for a claim at create)."""
        values = self._messages[-1]
        rcps = [
            Rcp(
                message_id=r["message_id"], idx=r["idx"], phone_number=r["phone_number"], state=r["state"], error="",
                updated_at=r["updated_at"], attempt=1, session_id="", sim=0, not_before=r["not_before"],
                paced_until=None, parts_sent=0, parts_delivered=0, last_error="",
            )
            for r in self._recipients
            if r["message_id"] == values["id"]
        ]
        return Msg(**values), rcps

    def _count(self, segments: int) -> None:
        """Add to the owner's segments of the UTC day (written by `write`, in this transaction)."""
        if self._one:  # counted and checked by one statement, before the message is planned
            day = self._now.date().isoformat()
            cap = self._cap or _NO_CAP
            params = {"owner_id": self._owner_id, "day": day, "n": segments, "cap": cap}
            # A day's first message inserts the row unchecked: one that can never fit is refused first.
            if segments > cap or not fetch_on(self._s, _COUNT_USAGE, params):
                self._refuse(self._used(day), segments)
            return
        if self._usage is None:  # read once per transaction (Core: an ORM get costs ~10x)
            day = self._now.date().isoformat()
            found = fetch_on(self._s, _USAGE, {"owner_id": self._owner_id, "day": day})
            self._usage = (day, found[0][0] if found else None)
        used = (self._usage[1] or 0) + self._segments
        if self._cap and used + segments > self._cap:
            self._refuse(used, segments)
        self._segments += segments

    def _used(self, day: str) -> int:
        found = fetch_on(self._s, _USAGE, {"owner_id": self._owner_id, "day": day})
        return int(found[0][0]) if found else 0

    def _refuse(self, used: int, segments: int) -> NoReturn:
        now = self._now
        midnight = datetime.combine(now.date() + timedelta(days=1), time(), UTC)
        raise ResourceExhausted(
            f"daily cap of {self._cap} SMS segments reached ({used} sent today, this message needs {segments})",
            (midnight - now).total_seconds(),
            subject=f"owner:{self._owner_id}",
        )

    def _queue(self, new: NewMessage, device_id: str | None, pinned: bool) -> MessageRecord:
        owner_id, now = self._owner_id, self._now
        message_id = str(ULID())  # python-ulid 4: monotonic within a millisecond, so FIFO by id holds
        valid_until = to_utc(new.valid_until) if new.valid_until else None
        schedule_at = to_utc(new.schedule_at) if new.schedule_at else None
        pending = int(State.PENDING)
        self._messages.append(
            {
                "id": message_id,
                "owner_id": owner_id,
                "idempotency_key": new.idempotency_key,
                "content_hash": new.content_hash,
                "device_id": device_id,
                "pinned": pinned,
                "ever_dispatched": False,
                "drop_pending": False,
                "sim_number": new.sim_number,
                "text": new.text,
                "data": new.data,
                "port": new.port,
                "is_encrypted": new.is_encrypted,
                "priority": new.priority,
                "valid_until": valid_until,
                "schedule_at": schedule_at,
                "with_delivery_report": new.with_delivery_report,
                "state": pending,
                "parts": new.parts,
                "encoding": new.encoding,
                "created_at": now,
                "updated_at": now,
            }
        )
        for i, number in enumerate(new.phone_numbers):
            self._recipients.append(
                {
                    "message_id": message_id,
                    "idx": i,
                    "phone_number": number,
                    "state": pending,
                    "updated_at": now,
                    "not_before": schedule_at,
                }
            )
            self._events.append(
                {
                    "owner_id": owner_id,
                    "kind": EventKind.MESSAGE.value,
                    "message_id": message_id,
                    "recipient_index": i,
                    "state": pending,
                    "message_state": pending,
                    "error": "",
                    "created_at": now,
                }
            )
        return MessageRecord(
            id=message_id,
            owner_id=owner_id,
            idempotency_key=new.idempotency_key,
            device_id=device_id,
            sim_number=new.sim_number,
            text=new.text,
            data=new.data,
            port=new.port,
            is_encrypted=new.is_encrypted,
            priority=new.priority,
            valid_until=valid_until,
            with_delivery_report=new.with_delivery_report,
            state=State.PENDING,
            recipients=tuple(
                RecipientRecord(i, number, State.PENDING, "", now, next_attempt_at=schedule_at)
                for i, number in enumerate(new.phone_numbers)
            ),
            created_at=now,
            updated_at=now,
            parts=new.parts,
            encoding=new.encoding,
            schedule_at=schedule_at,
        )


class _Router:
    """Routing for the messages of one transaction: the owner's devices and their loads are
    read once (on the first unpinned message), and every message routed here adds to its
    device's load, so a batch spreads over the phones as the same sends one by one would.

    The devices a batch is pinned to are read together (`expect`): one query for the batch,
    not one per phone (a 1,000-item SendMessages pinned round-robin spent ~0.2 s reading
    them one by one, issue 15)."""

    def __init__(
        self, s: Session, owner_id: str, *, exclude: str = "", online_only: bool = False, one: bool = False
    ) -> None:
        """`one`: a single message is routed (`create`): unpinned, it is routed by one
        statement (`_LEAST_LOADED`), with no pool read into Python for the next choices."""
        self._s, self._owner_id, self._exclude, self._online_only = s, owner_id, exclude, online_only
        self._one = one
        self._loads: dict[str, int] | None = None  # the pool's devices -> their PENDING + DISPATCHED messages
        self._added: dict[str, int] = {}  # device -> messages routed here, not yet in the database
        self._pinned: dict[str, bool] = {}  # device -> whether a message may be pinned to it
        self._all_known = False  # every usable device is in _pinned (the owner's devices were read)

    def expect(self, device_ids: Iterable[str]) -> None:
        """Read, in one query, what the coming messages need: the pool when one of them is
        unpinned ('') (the owner's devices, which also answer for every pinned one), else
        whether each pinned device not yet known is the owner's and not revoked."""
        wanted = set(device_ids)
        if "" in wanted:
            self._pool()
        unknown = [d for d in wanted if d and d not in self._pinned]
        if not unknown:
            return
        if self._all_known:
            usable: set[str] = set()
        else:
            usable = {
                d for (d,) in fetch_on(self._s, _USABLE_DEVICES, {"ids": sorted(unknown), "owner_id": self._owner_id, "no": False})
            }
        for d in unknown:
            self._pinned[d] = d in usable

    def route(self, device_id: str) -> tuple[str | None, bool]:
        """(device, pinned): the requested device, else the least-loaded online device,
        else (unless online_only) the least-loaded device that ever connected with its
        token, else None (unrouted).
        InvalidArgument on `device_id` for a device that is unknown, revoked or another owner's."""
        if device_id:
            if device_id not in self._pinned:
                self.expect((device_id,))
            if not self._pinned[device_id]:
                raise InvalidArgument("device_id", "unknown device")
            return device_id, True
        if self._one and self._loads is None:
            found = fetch_on(self._s, _LEAST_LOADED, {"owner_id": self._owner_id, "no": False})
            return (found[0][0] if found else None), False
        loads, added = self._pool(), self._added
        if not loads:
            return None, False
        return min(loads, key=lambda d: (loads[d] + added.get(d, 0), d)), False

    def took(self, device_id: str | None) -> None:
        """A message routed to `device_id` was queued: it counts in the next choice."""
        if device_id is not None:
            self._added[device_id] = self._added.get(device_id, 0) + 1

    def _pool(self) -> dict[str, int]:
        if self._loads is None:
            s = self._s
            # Ids and sessions only: ORM rows for every device would cost ~50 µs each.
            owned = fetch_on(s, _OWNED_DEVICES, {"owner_id": self._owner_id, "no": False})
            for device_id, _, _ in owned:  # the owner's usable devices: any other is not
                self._pinned[device_id] = True
            self._all_known = True
            devices = [(d, session_id, proven) for d, session_id, proven in owned if d != self._exclude]
            online = [d for d, session_id, _ in devices if session_id]
            # Offline, only a phone that has held a session with its token: an orphan of a
            # lost pairing Welcome may never come (docs/protocol.md "When the code is spent").
            pool = online or ([] if self._online_only else [d for d, _, proven in devices if proven is not None])
            counts: dict[str, int] = {}
            if pool:
                counts = dict(fetch_on(s, _LOADS, {"ids": pool}))
            self._loads = {d: counts.get(d, 0) for d in pool}
        return self._loads


def _final_states_in(s: Writes, device_id: str, message_ids: Collection[str]) -> dict[str, State]:
    """`final_states` inside a write transaction."""
    return {mid: State(st) for mid, st in s.fetch(_FINAL_STATES, {"ids": list(message_ids), "device_id": device_id})}


def _conflict(message_id: str) -> AlreadyExists:
    return AlreadyExists(f"idempotency_key already used for message {message_id} with different content")


def _record(row: MessageRow, recipients: list[RecipientRow]) -> MessageRecord:
    return MessageRecord(
        id=row.id,
        owner_id=row.owner_id,
        idempotency_key=row.idempotency_key,
        device_id=row.device_id,
        sim_number=row.sim_number,
        text=row.text,
        data=row.data,
        port=row.port,
        is_encrypted=row.is_encrypted,
        priority=row.priority,
        valid_until=row.valid_until,
        with_delivery_report=row.with_delivery_report,
        state=State(row.state),
        recipients=tuple(_recipient_record(r) for r in recipients),
        created_at=row.created_at,
        updated_at=row.updated_at,
        parts=row.parts,
        encoding=row.encoding,
        schedule_at=row.schedule_at,
    )


def _recipient_record(r: RecipientRow) -> RecipientRecord:
    gates = [t for t in (r.not_before, r.paced_until) if t is not None]
    return RecipientRecord(
        r.idx,
        r.phone_number,
        State(r.state),
        r.error,
        r.updated_at,
        attempt=r.attempt,
        sim=r.sim,
        parts_sent=r.parts_sent,
        parts_delivered=r.parts_delivered,
        last_error=r.last_error,
        next_attempt_at=max(gates) if gates and r.state == int(State.PENDING) else None,
    )


def _filtered(q: Any, owner_id: str, flt: MessageFilter) -> Any:
    """`q` limited to the owner's messages that `flt` matches."""
    q = q.where(MessageRow.owner_id == owner_id)
    if flt.state is not None:
        states = [int(flt.state), *(int(x) for x in flt.also_states)]
        q = q.where(col(MessageRow.state).in_(states)) if len(states) > 1 else q.where(MessageRow.state == states[0])
    if flt.device_id:
        q = q.where(MessageRow.device_id == flt.device_id)
    if flt.created_after is not None:
        q = q.where(MessageRow.created_at >= to_utc(flt.created_after))
    if flt.created_before is not None:
        q = q.where(MessageRow.created_at < to_utc(flt.created_before))
    return q
