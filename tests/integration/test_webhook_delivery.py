"""The webhook outbox and worker against a real HTTP receiver on 127.0.0.1, over a fake clock:
the whole RELIABILITY 12 schedule (about 75.6 h) runs in seconds. Receivers answering 500,
429, 410, 400, timing out and closing the connection each get the specified behaviour; the
SSRF guard also holds at connect time; the outbox row is written in the transaction of the
change that caused it (RELIABILITY 13)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from gateway.config import WebhookSettings
from gateway.messages.records import NewMessage, ReceiptUpdate
from gateway.messages.repository import MessageRepository
from gateway.devices.repository import DeviceRepository
from gateway.storage.engine import Database
from gateway.storage.models import AuditRow, WebhookAttemptRow, WebhookDeliveryRow
from gateway.types import State
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.records import DeliveryState, WebhookEvent, WebhookState
from gateway.webhooks.repository import WebhookRepository
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.ssrf import Policy
from gateway.webhooks.worker import WebhookWorker
from tests.helpers.accounts import create_owner
from tests.helpers.webhook_receiver import Receiver

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
OPEN = Policy(allow_private=True, allow_http=True)  # the receiver is on 127.0.0.1


@dataclass
class Outbox:
    """A database, one owner with one webhook, and a worker on a fake clock."""

    db: Database
    owner: str
    settings: WebhookSettings
    receiver: Receiver
    policy: Policy = OPEN
    now: datetime = T0
    url: str = ""
    attempt_times: list[datetime] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.repo = WebhookRepository(self.db, self.settings, rng=random.Random(7))
        self.webhook = self.repo.create(
            self.owner, self.url or self.receiver.url, list(WebhookEvent), "", "whsec_" + "A" * 43 + "=", T0
        )

    def event(self, name: WebhookEvent = WebhookEvent.SMS_RECEIVED) -> None:
        with self.db.write() as s:
            assert enqueue(s, self.owner, name, "dev1", lambda: {"inbound": {"sender": "+15550001111"}}, self.now) == 1

    def run(self, *, max_rounds: int = 30) -> None:
        """Deliver, then jump the clock to the next due time, until nothing is due (bounded)."""

        async def main() -> None:
            sender = WebhookSender(self.policy, self.settings.timeout)
            worker = WebhookWorker(self.repo, sender, self.settings, clock=lambda: self.now)
            try:
                for _ in range(max_rounds):
                    if await worker.deliver_due():
                        self.attempt_times.append(self.now)
                    due = self.repo.next_due()
                    if due is None:
                        return
                    self.now = max(self.now, due)
                raise AssertionError(f"still due after {max_rounds} rounds")
            finally:
                await sender.aclose()

        asyncio.run(main())

    def deliveries(self) -> list[WebhookDeliveryRow]:
        with self.db.read() as s:
            return list(s.exec(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.id)))

    def attempts(self) -> list[WebhookAttemptRow]:
        with self.db.read() as s:
            return list(s.exec(select(WebhookAttemptRow).order_by(WebhookAttemptRow.id)))

    def state(self) -> WebhookState:
        return self.repo.get(self.owner, self.webhook.id).state


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'smsgw.db'}", sqlite_synchronous="NORMAL")
    database.create_all()
    yield database
    database.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(default=500, hang_for=1.5) as r:
        yield r


def _outbox(db: Database, receiver: Receiver, **settings: object) -> Outbox:
    config = WebhookSettings(**{"timeout": 0.5, **settings})  # type: ignore[arg-type]
    return Outbox(db, create_owner(db, "owner", T0), config, receiver)


def test_a_failing_receiver_gets_the_whole_schedule_then_the_webhook_is_failing(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    box.event()
    box.run()
    delays = box.settings.retry_delays
    assert len(receiver.received) == len(delays) + 1 == 10
    assert len({r.id for r in receiver.received}) == 1, "every attempt carries the same webhook-id"
    gaps = [(b - a).total_seconds() for a, b in zip(box.attempt_times, box.attempt_times[1:], strict=False)]
    for gap, planned in zip(gaps, delays, strict=True):
        assert planned * 0.9 <= gap <= planned * 1.1
    assert 0.9 * 75.6 <= (box.attempt_times[-1] - T0).total_seconds() / 3600 <= 1.1 * 75.6
    [delivery] = box.deliveries()
    assert delivery.state == DeliveryState.FAILED and delivery.attempts == 10
    assert delivery.last_error.startswith("gave up after 10 attempts")
    assert [a.status_code for a in box.attempts()] == [500] * 10
    webhook = box.repo.get(box.owner, box.webhook.id)
    assert webhook.state is WebhookState.FAILING and "HTTP 500" in webhook.disabled_reason
    with db.read() as s:
        assert [a.action for a in s.exec(select(AuditRow).where(AuditRow.action.startswith("webhook.")))] == [  # type: ignore[attr-defined]
            "webhook.create", "webhook.failing"
        ]

    # Five days of failures without a success disable it: the pending delivery is held,
    # and new events are not stored for it at all.
    box.now = T0 + timedelta(days=5, hours=1)
    box.event()
    box.run()
    assert box.state() is WebhookState.DISABLED
    assert "no successful delivery since" in box.repo.get(box.owner, box.webhook.id).disabled_reason
    assert box.repo.get(box.owner, box.webhook.id).pending_deliveries == 1
    assert box.repo.claim_due(box.now + timedelta(days=9), 10) == []
    with db.write() as s:
        assert enqueue(s, box.owner, WebhookEvent.SMS_SENT, "dev1", dict, box.now) == 0
    # Enabled again, the held delivery goes out at once.
    receiver.default = 204
    box.now += timedelta(hours=1)
    box.repo.enable(box.owner, box.webhook.id, box.now)
    box.run()
    assert box.state() is WebhookState.ACTIVE
    assert receiver.received[-1].event["event"] == "sms:received" and receiver.received[-1].answered == 204


def test_410_disables_the_webhook_at_once(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    receiver.script([410])
    box.event()
    box.run()
    assert box.state() is WebhookState.DISABLED
    assert "410" in box.repo.get(box.owner, box.webhook.id).disabled_reason
    assert [d.state for d in box.deliveries()] == [DeliveryState.FAILED]
    with db.write() as s:  # nothing more is stored for (or sent to) a disabled webhook
        assert enqueue(s, box.owner, WebhookEvent.SMS_SENT, "dev1", dict, box.now) == 0
    assert box.repo.next_due() is None and len(receiver.received) == 1


def test_other_4xx_and_3xx_are_never_retried(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    receiver.script([400, 302])
    box.event()
    box.event()
    box.run()
    assert [r.answered for r in receiver.received] == [400, 302]
    assert all(d.state == DeliveryState.FAILED and d.attempts == 1 for d in box.deliveries())
    assert box.state() is WebhookState.FAILING


def test_429_and_503_retry_after_is_honoured_but_never_sooner(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    receiver.script([(429, "7"), (503, "120"), 204])
    box.event()
    box.run()
    gaps = [(b - a).total_seconds() for a, b in zip(box.attempt_times, box.attempt_times[1:], strict=False)]
    assert gaps[0] == 7  # later than the schedule's 5 s: as asked
    assert 270 <= gaps[1] <= 330  # the schedule's 5 min: 120 s would be sooner
    assert box.deliveries()[0].state == DeliveryState.SUCCEEDED
    assert box.state() is WebhookState.ACTIVE


def test_a_receiver_asking_for_retry_after_1_still_gets_the_whole_schedule(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    receiver.default = (503, "1")
    box.event()
    box.run()
    assert len(receiver.received) == 10
    assert (box.attempt_times[-1] - T0).total_seconds() / 3600 >= 0.9 * 75.6


@pytest.mark.parametrize("retry_after", ["\u00b2", "soon", "-5", "1e9"])
def test_odd_retry_after_values_still_follow_the_schedule(db: Database, receiver: Receiver, retry_after: str) -> None:
    box = _outbox(db, receiver, retry_delays=(5.0,))
    receiver.script([(503, retry_after), 204])
    box.event()
    box.run()
    assert [a.status_code for a in box.attempts()] == [503, 204]
    assert 4.5 <= (box.attempt_times[1] - T0).total_seconds() <= 5.5


def test_an_unusable_stored_url_fails_the_delivery_without_stalling_the_worker(db: Database, receiver: Receiver) -> None:
    """A URL httpx refuses (a row written before creation checked for it): recorded as final."""
    from gateway.storage.models import WebhookRow

    box = _outbox(db, receiver)
    with db.write() as s:
        row = s.get(WebhookRow, box.webhook.id)
        assert row is not None
        row.url = "http://127.0.0.1:1/a\x00b"
        s.add(row)
    box.event()
    box.run()
    [attempt] = box.attempts()
    assert attempt.status_code == 0 and "control characters" in attempt.error
    assert box.deliveries()[0].state == DeliveryState.FAILED


def test_a_timeout_and_a_closed_connection_are_retried(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    receiver.script(["hang", "close", 204])
    box.event()
    box.run()
    errors = [a.error for a in box.attempts()]
    assert errors[0] == "timed out after 0.5 s"
    assert errors[1].startswith("connection closed without a valid answer")
    assert errors[2] == ""
    assert len({r.id for r in receiver.received}) == 1
    [delivery] = box.deliveries()
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.attempts == 3
    webhook = box.repo.get(box.owner, box.webhook.id)
    assert webhook.failing_since is None and webhook.last_success_at is not None


def test_a_success_after_failures_clears_the_failing_state(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver, retry_delays=(5.0,))
    box.event()
    box.run()
    assert box.state() is WebhookState.FAILING
    receiver.default = 200
    box.event()
    box.run()
    webhook = box.repo.get(box.owner, box.webhook.id)
    assert webhook.state is WebhookState.ACTIVE and webhook.disabled_reason == "" and webhook.failing_since is None


def test_the_ssrf_guard_holds_at_connect_time(db: Database, receiver: Receiver) -> None:
    """A name resolving to loopback passed creation (say it re-bound since): the connection
    is still refused, and the receiver never hears of it."""
    port = receiver.server.server_address[1]
    box = Outbox(
        db, create_owner(db, "owner", T0), WebhookSettings(timeout=0.5, retry_delays=()), receiver,
        policy=Policy(allow_http=True), url=f"http://localhost:{port}/hook",
    )
    box.event()
    box.run()
    assert receiver.received == []
    [attempt] = box.attempts()
    assert attempt.status_code == 0 and "SSRF guard" in attempt.error and "loopback" in attempt.error


def test_the_outbox_row_commits_or_rolls_back_with_its_change(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver)
    with pytest.raises(RuntimeError), db.write() as s:
        enqueue(s, box.owner, WebhookEvent.SMS_SENT, "dev1", lambda: {}, T0)
        raise RuntimeError("the change failed")
    assert box.deliveries() == []

    # A receipt that moves a recipient to SENT writes exactly one sms:sent; a repeat writes none.
    devices, messages = DeviceRepository(db), MessageRepository(db)
    code, _ = devices.create_pairing_code(box.owner, "phone", timedelta(minutes=5), T0)
    redeemed = devices.redeem_pairing_code(code, T0)
    assert redeemed is not None
    device = redeemed[0].device_id
    new = NewMessage(
        phone_numbers=("+15550001111",), text="hello", data=None, port=0, device_id=device, sim_number=0,
        priority=0, valid_until=None, with_delivery_report=True, is_encrypted=False, idempotency_key="k1",
        content_hash="h1", parts=1, encoding="GSM_7",
    )
    message, _ = messages.create(box.owner, new, T0)
    sent = ReceiptUpdate(message.id, State.SENT, 0, "", attempt=1)
    assert messages.apply_receipts(device, [sent], T0) > 0
    assert messages.apply_receipts(device, [sent], T0) == 0
    [delivery] = [d for d in box.deliveries() if d.event == "sms:sent"]
    body = json.loads(delivery.payload)
    assert body["event"] == "sms:sent" and body["id"] == delivery.id and body["device_id"] == device
    assert body["state"] == "SENT" and body["message"]["id"] == message.id
    assert body["message"]["text_message"]["text"] == "hello"


def test_a_stale_claim_does_not_overwrite_a_newer_one(db: Database, receiver: Receiver) -> None:
    """A worker whose lease ran out records late: its attempt is logged, the newer claim decides."""
    from gateway.webhooks.schedule import Outcome, Verdict

    box = _outbox(db, receiver)
    box.event()
    [old] = box.repo.claim_due(T0, 1)
    [new] = box.repo.claim_due(T0 + timedelta(seconds=60), 1)  # the lease (timeout + 5 s) ran out
    assert new.delivery_id == old.delivery_id and new.attempt == old.attempt + 1
    box.repo.record(new, Outcome(Verdict.SUCCEEDED, 200), 5, T0 + timedelta(seconds=61))
    box.repo.record(old, Outcome(Verdict.RETRY, 500, "HTTP 500"), 9000, T0 + timedelta(seconds=62))
    [delivery] = box.deliveries()
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.attempts == 2
    assert [a.status_code for a in box.attempts()] == [200, 500]
    assert box.state() is WebhookState.ACTIVE


def test_a_replay_restarts_the_schedule_and_keeps_numbering_attempts(db: Database, receiver: Receiver) -> None:
    box = _outbox(db, receiver, retry_delays=(5.0, 60.0))
    box.event()
    box.run()
    [delivery] = box.deliveries()
    assert delivery.state == DeliveryState.FAILED and delivery.attempts == 3
    box.repo.replay(box.owner, delivery.id, box.now)
    start = box.now
    receiver.script([500])
    receiver.default = 204
    box.run()
    assert [(t - start).total_seconds() for t in box.attempt_times[-2:]] == [0, pytest.approx(5, rel=0.1)]
    [delivery] = box.deliveries()
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.attempts == 5
    assert [a.attempt for a in box.attempts()] == [1, 2, 3, 4, 5]
