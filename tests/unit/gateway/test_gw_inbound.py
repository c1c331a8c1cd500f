"""gateway.inbound.repository.InboundRepository: stored once per (device, phone id), logged
and handed to the webhook outbox in the same transaction, listed and watched per owner.

Real SQLite files, and a throwaway PostgreSQL database for the lost-race path; injected
times, no wall clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from gateway.devices.repository import DeviceRepository
from gateway.inbound.records import NewInbound
from gateway.inbound.repository import InboundRepository
from gateway.messages.records import MessageFilter
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.storage.models import EventRow, InboundRow, WebhookDeliveryRow, WebhookRow
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import new_message

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SENDER = "+15550007777"


class Store:
    """A database with two owners; `alice` has two phones, `bob` one."""

    def __init__(self, url: str) -> None:
        self.db = Database(url, sqlite_synchronous="NORMAL")
        self.db.create_all()
        self.repo = InboundRepository(self.db)
        devices = DeviceRepository(self.db)
        self.alice, self.bob = create_owner(self.db, "alice", T0), create_owner(self.db, "bob", T0)
        self.phone1, self.phone2, self.bob_phone = (
            self._pair(devices, owner) for owner in (self.alice, self.alice, self.bob)
        )

    def _pair(self, devices: DeviceRepository, owner_id: str) -> str:
        code, _ = devices.create_pairing_code(owner_id, "phone", timedelta(minutes=10), T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        return redeemed[0].device_id

    def rows(self, model: Any) -> list[Any]:
        with self.db.read() as s:
            return list(s.exec(select(model)))

    def webhook(self, owner_id: str, events: str, device_id: str = "") -> None:
        with self.db.write() as s:
            s.add(
                WebhookRow(
                    id=f"wh{len(self.rows(WebhookRow))}", owner_id=owner_id, url="https://example.com/hook",
                    events=events, device_id=device_id, secret="whsec_x", created_at=T0,
                )
            )  # fmt: skip


def sms(phone_id: str, text: str | None = "hello", **kwargs: Any) -> NewInbound:
    return NewInbound(phone_id, kwargs.pop("sender", SENDER), text=text, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'smsgw.db'}")
    try:
        yield st
    finally:
        st.db.close()


class TestStore:
    def test_stores_text_and_data_with_one_event_each(self, store: Store) -> None:
        got = store.repo.store(
            store.alice,
            store.phone1,
            [sms("a", sim=2, received_at=T0 - timedelta(seconds=5)), sms("b", None, data=b"\x00\x01", port=2948)],
            T0,
        )
        assert [r.phone_id for r in got] == ["a", "b"]
        text, data = got
        assert (text.text, text.data, text.sim, text.sender, text.device_id) == ("hello", None, 2, SENDER, store.phone1)
        assert text.received_at == T0 - timedelta(seconds=5) and text.created_at == T0
        assert (data.text, data.data, data.port) == (None, b"\x00\x01", 2948)
        assert data.received_at == T0  # the phone did not say: when the server stored it
        events = store.rows(EventRow)
        assert [(e.kind, e.inbound_id, e.owner_id) for e in events] == [
            ("inbound", text.id, store.alice),
            ("inbound", data.id, store.alice),
        ]

    def test_a_resent_sms_is_stored_and_logged_once(self, store: Store) -> None:
        [first] = store.repo.store(store.alice, store.phone1, [sms("a")], T0)
        again = store.repo.store(store.alice, store.phone1, [sms("a", "changed on re-send"), sms("b")], T0)
        assert [r.phone_id for r in again] == ["b"]
        assert store.repo.store(store.alice, store.phone1, [sms("a"), sms("b")], T0) == []
        assert len(store.rows(InboundRow)) == 2 and len(store.rows(EventRow)) == 2
        [kept] = [r for r in store.repo.list(store.alice, limit=10) if r.phone_id == "a"]
        assert kept == first  # the first copy stays

    def test_a_repeat_within_one_batch_is_stored_once(self, store: Store) -> None:
        got = store.repo.store(store.alice, store.phone1, [sms("a"), sms("a")], T0)
        assert len(got) == 1 and len(store.rows(EventRow)) == 1

    def test_phone_ids_are_per_device(self, store: Store) -> None:
        store.repo.store(store.alice, store.phone1, [sms("a")], T0)
        assert len(store.repo.store(store.alice, store.phone2, [sms("a")], T0)) == 1
        assert len(store.repo.store(store.bob, store.bob_phone, [sms("a")], T0)) == 1

    def test_record_repr_hides_sender_and_body(self, store: Store) -> None:
        [record] = store.repo.store(store.alice, store.phone1, [sms("a", "SECRET BODY")], T0)
        for value in (record, sms("a", "SECRET BODY")):
            assert SENDER not in repr(value) and "SECRET" not in repr(value)


class TestOutbox:
    def test_new_sms_are_enqueued_for_subscribed_webhooks_only(self, store: Store) -> None:
        store.webhook(store.alice, "sms:received")
        store.webhook(store.alice, "sms:data-received sms:sent")
        store.webhook(store.alice, "sms:received", device_id=store.phone2)
        store.webhook(store.bob, "sms:received sms:data-received")
        [text, data] = store.repo.store(
            store.alice, store.phone1, [sms("a", "hi"), sms("b", None, data=b"\x07", port=9)], T0
        )
        deliveries = store.rows(WebhookDeliveryRow)
        assert sorted((d.webhook_id, d.event) for d in deliveries) == [("wh0", "sms:received"), ("wh1", "sms:data-received")]
        by_event = {d.event: json.loads(d.payload) for d in deliveries}
        received = by_event["sms:received"]
        assert received["event"] == "sms:received" and received["device_id"] == store.phone1
        assert received["inbound"]["id"] == text.id
        assert received["inbound"]["sender"] == SENDER
        assert received["inbound"]["text_message"] == {"text": "hi"}
        assert by_event["sms:data-received"]["inbound"]["data_message"] == {"data": "Bw==", "port": 9}
        assert by_event["sms:data-received"]["inbound"]["id"] == data.id

    def test_a_resent_sms_is_not_enqueued_again(self, store: Store) -> None:
        store.webhook(store.alice, "sms:received")
        store.repo.store(store.alice, store.phone1, [sms("a")], T0)
        store.repo.store(store.alice, store.phone1, [sms("a")], T0 + timedelta(seconds=30))
        assert len(store.rows(WebhookDeliveryRow)) == 1


class TestList:
    def test_newest_first_paged_and_owner_isolated(self, store: Store) -> None:
        for i in range(5):
            store.repo.store(store.alice, store.phone1 if i % 2 else store.phone2, [sms(f"a{i}")], T0)
        store.repo.store(store.bob, store.bob_phone, [sms("b0")], T0)
        page1 = store.repo.list(store.alice, limit=3)
        page2 = store.repo.list(store.alice, limit=3, before_id=page1[-1].id)
        assert [r.phone_id for r in page1 + page2] == ["a4", "a3", "a2", "a1", "a0"]
        assert [r.phone_id for r in store.repo.list(store.bob, limit=10)] == ["b0"]
        assert [r.phone_id for r in store.repo.list(store.alice, store.phone1, limit=10)] == ["a3", "a1"]
        assert store.repo.list(store.alice, store.bob_phone, limit=10) == []  # another owner's phone

    def test_received_window(self, store: Store) -> None:
        times = [T0 + timedelta(minutes=i) for i in range(4)]
        store.repo.store(store.alice, store.phone1, [sms(f"a{i}", received_at=t) for i, t in enumerate(times)], T0)
        got = store.repo.list(store.alice, received_after=times[1], received_before=times[3], limit=10)
        assert [r.phone_id for r in got] == ["a2", "a1"]  # after inclusive, before exclusive


class TestEvents:
    def test_events_after_joins_inbound_and_skips_message_events(self, store: Store) -> None:
        messages = MessageRepository(store.db)
        messages.create(store.alice, new_message(device_id=store.phone1), T0)
        store.repo.store(store.alice, store.phone1, [sms("a")], T0)
        store.repo.store(store.alice, store.phone2, [sms("b")], T0)
        store.repo.store(store.bob, store.bob_phone, [sms("c")], T0)
        events = store.repo.events_after(store.alice, 0, limit=10)
        assert [e.inbound.phone_id for e in events] == ["a", "b"]
        assert events[0].id < events[1].id
        assert [e.inbound.phone_id for e in store.repo.events_after(store.alice, events[0].id, limit=10)] == ["b"]
        assert [e.inbound.phone_id for e in store.repo.events_after(store.alice, 0, limit=10, device_id=store.phone2)] == ["b"]
        assert [e.inbound.phone_id for e in store.repo.events_after(store.alice, 0, limit=10, upto=events[0].id)] == ["a"]
        assert [e.inbound.phone_id for e in store.repo.events_after(store.alice, 0, limit=1)] == ["a"]
        # WatchMessages' reader sees only the message's own event.
        [message_event] = messages.events_after(store.alice, 0, limit=10)
        assert message_event.message_id == messages.list(store.alice, MessageFilter(), limit=1)[0].id


# ---- the lost race: another session stores the same SMS between our read and our insert ----


def _race(store: Store, other_url: str) -> None:
    """Before our first flush, a second connection (another bridge) commits the same SMS."""
    other = Database(other_url, sqlite_synchronous="NORMAL")
    done = False

    def before_flush(session: Session, *_: Any) -> None:
        nonlocal done
        if done:
            return
        done = True
        InboundRepository(other).store(store.alice, store.phone1, [sms("a", "the other copy")], T0)

    event.listen(Session, "before_flush", before_flush)
    try:
        got = store.repo.store(store.alice, store.phone1, [sms("a"), sms("b")], T0)
    finally:
        event.remove(Session, "before_flush", before_flush)
        other.close()
    assert done
    assert [r.phone_id for r in got] == ["b"]  # retried after the unique constraint refused "a"
    rows = store.rows(InboundRow)
    assert sorted(r.phone_id for r in rows) == ["a", "b"]
    assert [r.text for r in rows if r.phone_id == "a"] == ["the other copy"]
    assert len(store.rows(EventRow)) == 2  # one event per stored SMS, none for the loser


def test_lost_race_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'smsgw.db'}"
    store = Store(url)
    try:
        _race(store, url)
    finally:
        store.db.close()


def test_lost_race_on_postgresql() -> None:
    with throwaway_database() as url:
        store = Store(url)
        try:
            _race(store, url)
        finally:
            store.db.close()
