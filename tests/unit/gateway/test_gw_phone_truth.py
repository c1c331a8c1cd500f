"""The phone's truth wins over expiry and cancel (issue 14, item 3), on SQLite and PostgreSQL.

EXPIRED and CANCELLED are the server's verdicts, reached while a phone may hold the recipient
(expiry of an ACCEPTED one; a cancel or expiry with the Deliver in flight); the phone gets a
Drop that can come too late. A SENT / DELIVERED receipt then records what happened: the
recipient moves, the message state follows, one event and one webhook delivery per change,
and the daily segment count (charged when the message was stored) is not charged again.
An ACCEPTED or FAILED receipt leaves the verdict, and a receipt of an older attempt changes
nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from gateway.devices.repository import DeviceRepository
from gateway.messages.records import ReceiptUpdate
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.storage.models import DailyUsageRow, WebhookDeliveryRow, WebhookRow
from gateway.types import State
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import UNPACED, new_message

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
P, D, A, S = State.PENDING, State.DISPATCHED, State.ACCEPTED, State.SENT
DL, F, E, C = State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED
_names = itertools.count(1)


class Stage:
    """A new owner with one online phone and a webhook for every sms:* outcome (PostgreSQL
    tests share one database, so everything read here is the owner's)."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.repo = MessageRepository(self.db, UNPACED)
        self.owner = create_owner(self.db, name, T0)
        devices = DeviceRepository(self.db)
        code, _ = devices.create_pairing_code(self.owner, "phone", timedelta(minutes=5), T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        self.dev = redeemed[0].device_id
        devices.set_online(self.dev, "s1", token_hash=None, app_version="t", sims=(), now=T0)
        self.repo.open_session(self.owner, self.dev, "s1", [], T0)
        with self.db.write() as s:
            s.add(
                WebhookRow(
                    id=f"wh-{name}", owner_id=self.owner, url="https://example.com/hook",
                    events="sms:sent sms:delivered sms:failed", secret="whsec_x", created_at=T0,
                )
            )  # fmt: skip

    def receipt(self, message_id: str, state: State, index: int = 0, **kwargs: Any) -> int:
        return self.repo.apply_receipts(self.dev, [ReceiptUpdate(message_id, state, index, **kwargs)], T0 + 10 * SEC)

    def states(self, message_id: str) -> tuple[State, list[State]]:
        m = self.repo.get(self.owner, message_id)
        return m.state, [r.state for r in m.recipients]

    def events(self, message_id: str) -> list[tuple[int, State, State]]:
        """(recipient, state, message state) of every logged change, oldest first."""
        got = self.repo.events_after(self.owner, 0, limit=1000, message_ids=[message_id])
        return [(e.recipient_index, e.state, e.message_state) for e in got]

    def hooks(self) -> list[tuple[str, int, str]]:
        """(event, recipient, recipient state) of every webhook delivery, in order."""
        with self.db.read() as s:
            q = select(WebhookDeliveryRow).where(WebhookDeliveryRow.owner_id == self.owner)
            rows = list(s.exec(q.order_by(col(WebhookDeliveryRow.id))))
        out = []
        for row in rows:
            body = json.loads(row.payload)
            out.append((row.event, body["recipient_index"], body["state"]))
        return out

    def segments(self) -> int:
        with self.db.read() as s:
            usage = s.get(DailyUsageRow, (self.owner, T0.date().isoformat()))
            return usage.segments if usage else 0


@pytest.fixture(scope="module")
def postgresql() -> Iterator[Database]:
    """One throwaway database for the module (creating one costs about a second)."""
    with throwaway_database() as url:
        db = Database(url)
        db.create_all()
        try:
            yield db
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def stage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stage]:
    name = f"owner-{next(_names)}"
    if request.param == "postgresql":
        yield Stage(request.getfixturevalue("postgresql"), name)
        return
    db = Database(f"sqlite:///{tmp_path / 'smsgw.db'}", sqlite_synchronous="NORMAL")
    db.create_all()
    try:
        yield Stage(db, name)
    finally:
        db.close()


def _accepted_then_expired(stage: Stage, n: int = 1, parts: int = 1) -> str:
    """A message the phone ACCEPTED whose valid_until then passed: EXPIRED, a Drop pending."""
    m, _ = stage.repo.create(stage.owner, new_message(n, device_id=stage.dev, valid_until=T0 + 5 * SEC, parts=parts), T0)
    assert [u.message.id for u in stage.repo.dispatch(stage.dev, "s1", 10, T0).units] == [m.id]
    assert stage.receipt(m.id, A) == n
    assert stage.repo.expire_due(T0 + 5 * SEC) == {stage.dev}
    assert stage.states(m.id) == (E, [E] * n)
    return m.id


def test_expired_after_accept_then_sent_and_delivered(stage: Stage) -> None:
    mid = _accepted_then_expired(stage, n=2, parts=2)
    assert stage.segments() == 4  # 2 recipients x 2 parts, charged when it was stored
    assert stage.hooks() == [("sms:failed", 0, "EXPIRED"), ("sms:failed", 1, "EXPIRED")]
    # The phone had sent recipient 0's first part when the Drop arrived: counted, no change.
    assert stage.receipt(mid, S, 0, parts_done=1) == 0
    assert stage.repo.get(stage.owner, mid).recipients[0].parts_sent == 1
    # The last part: the SMS went out. Recipient 0 is SENT, the message waits for its report.
    assert stage.receipt(mid, S, 0, parts_done=2) == 1
    m = stage.repo.get(stage.owner, mid)
    assert (m.state, [r.state for r in m.recipients]) == (S, [S, E])
    assert m.recipients[0].error == "" and m.recipients[1].error == "valid_until passed before it was sent"
    assert stage.receipt(mid, DL, 0) == 1
    # All done: DELIVERED and EXPIRED mixed -> EXPIRED (derive_message_state).
    assert stage.states(mid) == (E, [DL, E])
    assert stage.events(mid)[-2:] == [(0, S, S), (0, DL, E)]
    assert stage.hooks()[2:] == [("sms:sent", 0, "SENT"), ("sms:delivered", 0, "DELIVERED")]
    # Repeated receipts change nothing, log nothing; the daily count was not charged again.
    before = stage.events(mid)
    assert stage.receipt(mid, S, 0) == 0 and stage.receipt(mid, DL, 0) == 0
    assert stage.events(mid) == before and len(stage.hooks()) == 4
    assert stage.segments() == 4


def test_expired_then_delivered_in_one_step_and_a_late_sent_is_ignored(stage: Stage) -> None:
    mid = _accepted_then_expired(stage)
    assert stage.receipt(mid, DL, 0) == 1
    assert stage.states(mid) == (DL, [DL])
    assert stage.receipt(mid, S, 0) == 0  # SENT after DELIVERED: still forward only
    assert stage.states(mid) == (DL, [DL])
    assert [s for _, s, _ in stage.events(mid)] == [P, D, A, E, DL]
    assert stage.hooks() == [("sms:failed", 0, "EXPIRED"), ("sms:delivered", 0, "DELIVERED")]
    assert stage.segments() == 1


def test_cancelled_with_the_deliver_in_flight_then_sent(stage: Stage) -> None:
    """The client cancels while the Deliver is on its way; the phone accepts and sends it
    before the Drop arrives. ACCEPTED leaves CANCELLED (the phone is told to drop it); SENT
    does not (it went out)."""
    m, _ = stage.repo.create(stage.owner, new_message(device_id=stage.dev), T0)
    stage.repo.dispatch(stage.dev, "s1", 10, T0)
    record, wake = stage.repo.cancel(stage.owner, m.id, T0 + SEC)
    assert record.state == C and wake == stage.dev
    # The bridge's batch call answers, from the same transaction, that the phone must drop it.
    changed, refused, finals = stage.repo.apply_receipt_batch_future(stage.dev, [ReceiptUpdate(m.id, A, 0)], T0 + 10 * SEC).result()
    assert (changed, refused, finals) == (0, {}, {m.id: C})
    assert stage.states(m.id) == (C, [C])
    assert stage.repo.final_states(stage.dev, [m.id]) == {m.id: C}  # the bridge answers with a Drop
    assert stage.receipt(m.id, S, 0) == 1
    assert stage.states(m.id) == (S, [S])
    assert stage.repo.final_states(stage.dev, [m.id]) == {}
    assert stage.events(m.id)[-2:] == [(0, C, C), (0, S, S)]
    assert stage.hooks() == [("sms:sent", 0, "SENT")]  # a cancel is the client's own act: no webhook
    assert stage.receipt(m.id, DL, 0) == 1
    assert stage.states(m.id) == (DL, [DL])
    assert stage.segments() == 1


def test_failed_for_an_expired_recipient_keeps_the_verdict_and_records_parts(stage: Stage) -> None:
    """A FAILED says the SMS did not go out whole, as EXPIRED already does: no move, no
    retry, no event, no webhook; the parts that did go out are recorded."""
    mid = _accepted_then_expired(stage, parts=3)
    events, hooks = stage.events(mid), stage.hooks()
    assert stage.receipt(mid, F, 0, failure_class="no_service") == 0  # retryable, but expired
    assert stage.receipt(mid, F, 0, failure_class="generic_failure", parts_done=1) == 0
    m = stage.repo.get(stage.owner, mid)
    r = m.recipients[0]
    assert (m.state, r.state, r.attempt, r.parts_sent, r.last_error) == (E, E, 1, 1, "")
    assert stage.events(mid) == events and stage.hooks() == hooks


def test_a_receipt_of_an_older_attempt_never_overrides(stage: Stage) -> None:
    """Attempt 1 failed (retryable), attempt 2 was dispatched and then expired: a SENT naming
    attempt 1 is stale; one naming attempt 2 (or none: the current one) is the phone's truth."""
    m, _ = stage.repo.create(stage.owner, new_message(device_id=stage.dev, valid_until=T0 + timedelta(minutes=5)), T0)
    stage.repo.dispatch(stage.dev, "s1", 10, T0)
    assert stage.receipt(m.id, F, 0, failure_class="no_service", attempt=1) == 2  # ACCEPTED, then PENDING
    later = T0 + timedelta(minutes=1)
    assert [u.attempt for u in stage.repo.dispatch(stage.dev, "s1", 10, later).units] == [2]
    stage.repo.expire_due(T0 + timedelta(minutes=5))
    assert stage.states(m.id) == (E, [E])
    assert stage.receipt(m.id, S, 0, attempt=1) == 0
    assert stage.states(m.id) == (E, [E])
    assert stage.receipt(m.id, S, 0, attempt=2) == 1
    assert stage.states(m.id) == (S, [S])
    assert stage.repo.get(stage.owner, m.id).recipients[0].attempt == 2
