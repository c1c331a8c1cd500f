"""Message storage: create with routing, dispatch claims, receipts, cancel, expiry, the event log.

Every recipient state change goes through `_transition`, which checks `may_move`,
re-derives the message state and appends the event rows in the same transaction
(DESIGN.md "Event log"). Methods are synchronous; callers run them in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from gateway.messages.records import (
    EventRecord,
    MessageFilter,
    MessageRecord,
    NewMessage,
    ReceiptUpdate,
    RecipientRecord,
)
from gateway.storage.engine import Database
from gateway.storage.models import DailyUsageRow, Device, EventRow, MessageRow, RecipientRow
from gateway.types import UNACCEPTED_STATES, State, derive_message_state, may_move

__all__ = ["MessageRepository", "to_utc"]

log = logging.getLogger(__name__)

_UNACCEPTED = [int(s) for s in UNACCEPTED_STATES]
_EXPIRED_REASON = "valid_until passed before a phone accepted it"


def to_utc(t: datetime) -> datetime:
    """Aware UTC (naive input is taken as UTC): SQLModel stores and returns aware UTC."""
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


class MessageRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

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
        now = to_utc(now)
        # Insert first: a new key is the common case; the unique key catches a replay.
        try:
            with self.db.write() as s:
                self._count_segments(s, owner_id, new.parts * len(new.phone_numbers), daily_segments, now)
                device_id, pinned = self._route(s, owner_id, new.device_id)
                row = MessageRow(
                    id=str(ULID()),
                    owner_id=owner_id,
                    idempotency_key=new.idempotency_key,
                    content_hash=new.content_hash,
                    device_id=device_id,
                    pinned=pinned,
                    sim_number=new.sim_number,
                    text=new.text,
                    data=new.data,
                    port=new.port,
                    is_encrypted=new.is_encrypted,
                    priority=new.priority,
                    valid_until=to_utc(new.valid_until) if new.valid_until else None,
                    with_delivery_report=new.with_delivery_report,
                    state=int(State.PENDING),
                    parts=new.parts,
                    encoding=new.encoding,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                recipients = [
                    RecipientRow(message_id=row.id, idx=i, phone_number=n, state=int(State.PENDING), updated_at=now)
                    for i, n in enumerate(new.phone_numbers)
                ]
                s.add_all(recipients)
                for r in recipients:
                    s.add(self._event(row, r, now))
                record = _record(row, recipients)
        except (IntegrityError, ResourceExhausted):
            # The key exists (a retry, or a concurrent send that won the insert).
            existing = self._existing(owner_id, new)
            if existing is None:
                raise
            return existing, False
        return record, True

    @staticmethod
    def _count_segments(s: Session, owner_id: str, segments: int, cap: int, now: datetime) -> None:
        """Add to the owner's segments of the UTC day, in the transaction that stores them."""
        day = now.date().isoformat()
        usage = s.get(DailyUsageRow, (owner_id, day)) or DailyUsageRow(owner_id=owner_id, day=day, segments=0)
        if cap and usage.segments + segments > cap:
            midnight = datetime.combine(now.date() + timedelta(days=1), time(), UTC)
            raise ResourceExhausted(
                f"daily cap of {cap} SMS segments reached ({usage.segments} sent today, this message needs {segments})",
                (midnight - now).total_seconds(),
                subject=f"owner:{owner_id}",
            )
        usage.segments += segments
        s.add(usage)

    def delete_device(self, owner_id: str, device_id: str, now: datetime) -> tuple[int, int, set[str]]:
        """Revoke a device and release what it has not accepted, in one transaction.

        Unpinned messages go to another of the owner's phones (or wait unrouted); messages
        pinned to it FAIL. What it accepted stays as it is: the phone may have sent it, and
        it can no longer report. Returns (rerouted, failed, devices to wake). NotFound for
        an unknown, deleted or foreign device.
        """
        now = to_utc(now)
        with self.db.write() as s:
            device = s.get(Device, device_id)
            if device is None or device.owner_id != owner_id or device.revoked:
                raise NotFound(f"device {device_id} not found")
            device.revoked, device.session_id = True, ""
            s.add(device)
            s.flush()
            rows = list(
                s.exec(select(MessageRow).where(MessageRow.device_id == device_id, col(MessageRow.state).in_(_UNACCEPTED)))
            )
            pinned = [r for r in rows if r.pinned]
            self._move_all(s, pinned, State.FAILED, "device deleted", now)
            moving = [r for r in rows if not r.pinned]
            self._move_all(s, [r for r in moving if r.state == int(State.DISPATCHED)], State.PENDING, "device_deleted", now)
            target, _ = self._route(s, owner_id, "") if moving else (None, False)
            for row in moving:
                # The phone that was sent them is gone: like new messages, they may now follow
                # the phones (adopted when unrouted, rerouted from an offline target).
                row.device_id, row.session_id, row.ever_dispatched = target, "", False
                s.add(row)
            return len(moving), len(pinned), {device_id, *([target] if target else [])}

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
            q = select(MessageRow).where(MessageRow.owner_id == owner_id)
            if flt.state is not None:
                q = q.where(MessageRow.state == int(flt.state))
            if flt.device_id:
                q = q.where(MessageRow.device_id == flt.device_id)
            if flt.created_after is not None:
                q = q.where(MessageRow.created_at >= to_utc(flt.created_after))
            if flt.created_before is not None:
                q = q.where(MessageRow.created_at < to_utc(flt.created_before))
            if before_id:
                q = q.where(MessageRow.id < before_id)
            if after_id is not None:
                q = q.where(MessageRow.id > after_id).order_by(col(MessageRow.id))
            else:
                q = q.order_by(col(MessageRow.id).desc())
            rows = list(s.exec(q.limit(limit)))
            recipients = self._recipients_rows_many(s, [r.id for r in rows])
            return [_record(r, recipients[r.id]) for r in rows]

    def cancel(self, owner_id: str, message_id: str, now: datetime) -> tuple[MessageRecord, str | None]:
        """Cancel a message while no recipient is held by a phone. Returns it and the device
        to wake (it Drops the message if in flight); None when no phone ever got it."""
        now = to_utc(now)
        with self.db.write() as s:
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
            return _record(row, recipients), row.device_id if row.ever_dispatched else None

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
                .where(EventRow.owner_id == owner_id, col(EventRow.id) > after_id)
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

    # ---- bridge side -------------------------------------------------------------

    def open_session(
        self, owner_id: str, device_id: str, session_id: str, held_ids: Iterable[str], now: datetime
    ) -> None:
        """A phone's session started: the phone's held messages are ACCEPTED, messages
        dispatched on any older session of this device go back to PENDING (they will be
        sent again), and the owner's unrouted messages are routed here."""
        now = to_utc(now)
        with self.db.write() as s:
            held = list(held_ids)
            mine = select(MessageRow).where(col(MessageRow.id).in_(held), MessageRow.device_id == device_id)
            self._move_all(s, s.exec(mine), State.ACCEPTED, "", now)
            stale = select(MessageRow).where(
                MessageRow.device_id == device_id,
                MessageRow.state == int(State.DISPATCHED),
                MessageRow.session_id != session_id,
            )
            for row in self._move_all(s, s.exec(stale), State.PENDING, "session_lost", now):
                row.session_id = ""
            # Adopt what waits for no phone in particular: unrouted messages, and unpinned,
            # never-dispatched ones routed to a device that is offline now.
            offline = select(Device.id).where(Device.owner_id == owner_id, Device.session_id == "", Device.id != device_id)
            s.exec(
                update(MessageRow)
                .where(MessageRow.owner_id == owner_id, MessageRow.state == int(State.PENDING))
                .where(MessageRow.pinned == False, MessageRow.ever_dispatched == False)  # noqa: E712
                .where(col(MessageRow.device_id).is_(None) | col(MessageRow.device_id).in_(offline))
                .values(device_id=device_id)
            )

    def dispatch(self, device_id: str, session_id: str, limit: int, now: datetime) -> list[MessageRecord]:
        """Claim up to `limit` PENDING messages of the device (priority, then FIFO) and mark
        them DISPATCHED on `session_id`. Due messages are expired first, so they never take
        a window slot from a live one."""
        if limit <= 0:
            return []
        now = to_utc(now)
        with self.db.write() as s:
            due = select(MessageRow).where(
                MessageRow.device_id == device_id,
                MessageRow.state == int(State.PENDING),
                col(MessageRow.valid_until) <= now,
            )
            self._move_all(s, s.exec(due), State.EXPIRED, _EXPIRED_REASON, now)
            q = (
                select(MessageRow)
                .where(MessageRow.device_id == device_id, MessageRow.state == int(State.PENDING))
                .order_by(col(MessageRow.priority).desc(), col(MessageRow.id))
                .limit(limit)
            )
            rows = list(s.exec(q))
            recipients = self._recipients_rows_many(s, [r.id for r in rows])
            for row in rows:
                self._transition(s, row, recipients[row.id], State.DISPATCHED, "", now)
                row.session_id = session_id
                row.ever_dispatched = True
            return [_record(row, recipients[row.id]) for row in rows]

    def apply_receipts(self, device_id: str, receipts: Sequence[ReceiptUpdate], now: datetime) -> int:
        """Apply a phone's receipts, forward only; stale, repeated or foreign ones change nothing.

        Returns how many changed a state. Safe to call again with the same receipts.
        """
        now = to_utc(now)
        changed = 0
        with self.db.write() as s:
            ids = list({r.message_id for r in receipts})
            rows = {
                r.id: r
                for r in s.exec(select(MessageRow).where(col(MessageRow.id).in_(ids), MessageRow.device_id == device_id))
            }
            recipients = self._recipients_rows_many(s, list(rows))
            for receipt in receipts:
                row = rows.get(receipt.message_id)
                if row is None:
                    log.warning("receipt for a message not routed to this device ignored")
                    continue
                rs = recipients[row.id]
                # Any receipt means the phone holds the message: the recipients not yet
                # accepted are now (so a cancel cannot claim an SMS that is on its way).
                changed += self._transition(s, row, rs, State.ACCEPTED, "", now)
                if receipt.state == State.ACCEPTED:
                    continue
                if receipt.recipient_index < len(rs):
                    changed += self._transition(
                        s, row, rs, receipt.state, receipt.error, now, only=[rs[receipt.recipient_index]]
                    )
                else:
                    log.warning("receipt names recipient %d of %d; ignored", receipt.recipient_index, len(rs))
        return changed

    def close_session(self, device_id: str, session_id: str, now: datetime) -> None:
        """The session ended: what it dispatched and the phone did not accept goes back to PENDING."""
        now = to_utc(now)
        with self.db.write() as s:
            q = select(MessageRow).where(
                MessageRow.device_id == device_id,
                MessageRow.session_id == session_id,
                MessageRow.state == int(State.DISPATCHED),
            )
            for row in self._move_all(s, s.exec(q), State.PENDING, "session_lost", now):
                row.session_id = ""

    def reroute_from(self, owner_id: str, device_id: str) -> set[str]:
        """Move the never-dispatched, unpinned PENDING messages of an offline device to the
        owner's least-loaded online device. Messages ever dispatched stay: that phone may
        hold them, and sending them from a second phone could send an SMS twice."""
        with self.db.write() as s:
            target, _ = self._route(s, owner_id, "", exclude=device_id, online_only=True)
            if target is None:
                return set()
            result = s.exec(
                update(MessageRow)
                .where(
                    MessageRow.device_id == device_id,
                    MessageRow.state == int(State.PENDING),
                    MessageRow.pinned == False,  # noqa: E712
                    MessageRow.ever_dispatched == False,  # noqa: E712
                )
                .values(device_id=target)
            )
            return {target} if result.rowcount else set()

    def final_states(self, device_id: str, message_ids: Iterable[str]) -> dict[str, State]:
        """Which of these messages of the device are CANCELLED or EXPIRED (the phone must drop them)."""
        ids = list(message_ids)
        if not ids:
            return {}
        with self.db.read() as s:
            q = select(MessageRow.id, MessageRow.state).where(
                col(MessageRow.id).in_(ids),
                MessageRow.device_id == device_id,
                col(MessageRow.state).in_([int(State.CANCELLED), int(State.EXPIRED)]),
            )
            return {mid: State(st) for mid, st in s.exec(q)}

    def expire_due(self, now: datetime, *, batch: int = 500) -> set[str]:
        """Expire unaccepted messages past valid_until; returns the devices to wake (Drop)."""
        now = to_utc(now)
        devices: set[str] = set()
        while True:
            with self.db.write() as s:
                q = (
                    select(MessageRow)
                    .where(col(MessageRow.state).in_(_UNACCEPTED), col(MessageRow.valid_until) <= now)
                    .limit(batch)
                )
                rows = self._move_all(s, s.exec(q), State.EXPIRED, _EXPIRED_REASON, now)
                devices.update(r.device_id for r in rows if r.ever_dispatched and r.device_id)
            if len(rows) < batch:
                return devices

    # ---- internals ---------------------------------------------------------------

    def _move_all(
        self, s: Session, rows: Iterable[MessageRow], new: State, error: str, now: datetime
    ) -> list[MessageRow]:
        """`_transition` every recipient of each row to `new`, with one recipients query."""
        rows = list(rows)
        recipients = self._recipients_rows_many(s, [r.id for r in rows])
        for row in rows:
            self._transition(s, row, recipients[row.id], new, error, now)
        return rows

    def _transition(
        self,
        s: Session,
        row: MessageRow,
        recipients: list[RecipientRow],
        new: State,
        error: str,
        now: datetime,
        *,
        only: list[RecipientRow] | None = None,
    ) -> int:
        """Move recipients (all, or `only`) to `new` where `may_move` allows; re-derive the
        message state; append one event per changed recipient. Returns how many changed."""
        moved = []
        for r in only if only is not None else recipients:
            if may_move(State(r.state), new):
                r.state = int(new)
                r.error = error if new in (State.FAILED, State.EXPIRED, State.CANCELLED) else ""
                r.updated_at = now
                s.add(r)
                moved.append(r)
        if not moved:
            return 0
        row.state = int(derive_message_state([State(r.state) for r in recipients], row.with_delivery_report))
        row.updated_at = now
        s.add(row)
        for r in moved:
            s.add(self._event(row, r, now, error))
        return len(moved)

    @staticmethod
    def _event(row: MessageRow, r: RecipientRow, now: datetime, error: str = "") -> EventRow:
        return EventRow(
            owner_id=row.owner_id,
            message_id=row.id,
            recipient_index=r.idx,
            state=r.state,
            message_state=row.state,
            error=error if State(r.state) in (State.FAILED, State.EXPIRED, State.CANCELLED, State.PENDING) else "",
            created_at=now,
        )

    def _route(
        self, s: Session, owner_id: str, device_id: str, *, exclude: str = "", online_only: bool = False
    ) -> tuple[str | None, bool]:
        """(device, pinned): the requested device, else the least-loaded online device,
        else (unless online_only) the least-loaded device, else None (unrouted)."""
        if device_id:
            device = s.get(Device, device_id)
            if device is None or device.owner_id != owner_id or device.revoked:
                raise InvalidArgument("device_id", "unknown device")
            return device_id, True
        devices = [
            d
            for d in s.exec(select(Device).where(Device.owner_id == owner_id, Device.revoked == False))  # noqa: E712
            if d.id != exclude
        ]
        online = [d for d in devices if d.session_id]
        pool = online or ([] if online_only else devices)
        if not pool:
            return None, False
        loads = dict(
            s.exec(
                select(MessageRow.device_id, func.count())
                .where(col(MessageRow.device_id).in_([d.id for d in pool]), col(MessageRow.state).in_(_UNACCEPTED))
                .group_by(MessageRow.device_id)
            ).all()
        )
        best = min(pool, key=lambda d: (loads.get(d.id, 0), d.id))
        return best.id, False

    def _existing(self, owner_id: str, new: NewMessage) -> MessageRecord | None:
        """The message already stored under this key, if its content matches; AlreadyExists if not."""
        with self.db.read() as s:
            row = s.exec(
                select(MessageRow).where(MessageRow.owner_id == owner_id, MessageRow.idempotency_key == new.idempotency_key)
            ).first()
            if row is None:
                return None
            if row.content_hash != new.content_hash:
                raise AlreadyExists(f"idempotency_key already used for message {row.id} with different content")
            return _record(row, self._recipients_rows(s, row.id))

    def _recipients_rows(self, s: Session, message_id: str) -> list[RecipientRow]:
        q = select(RecipientRow).where(RecipientRow.message_id == message_id).order_by(col(RecipientRow.idx))
        return list(s.exec(q))

    def _recipients_rows_many(self, s: Session, ids: list[str]) -> dict[str, list[RecipientRow]]:
        out: dict[str, list[RecipientRow]] = {i: [] for i in ids}
        if ids:
            q = select(RecipientRow).where(col(RecipientRow.message_id).in_(ids)).order_by(col(RecipientRow.idx))
            for r in s.exec(q):
                out[r.message_id].append(r)
        return out


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
        recipients=tuple(RecipientRecord(r.idx, r.phone_number, State(r.state), r.error, r.updated_at) for r in recipients),
        created_at=row.created_at,
        updated_at=row.updated_at,
        parts=row.parts,
        encoding=row.encoding,
    )
