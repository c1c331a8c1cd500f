"""Which phones the worker wakes (gateway/push/wakes.py, docs/push.md), on SQLite and on
PostgreSQL: only a phone with no session for the grace, a usable push token and work of its
own that is due; at most once per `min_interval`; a refused token stops the pushes until the
phone reports another, and tells the owner's webhooks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.devices.repository import DeviceRepository
from gateway.devices.session_jobs import close_device_session, open_device_session
from gateway.messages.repository import MessageRepository
from gateway.push.wakes import WakeStore, WakeTarget
from gateway.storage.engine import Database
from gateway.webhooks.repository import WebhookRepository
from gateway.config import WebhookSettings
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import BACKENDS, throwaway_database
from tests.unit.gateway.test_gw_repository import T0, UNPACED, new_message

_GRACE, _EVERY = 30.0, 300.0


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'smsgw.db'}", sqlite_synchronous="NORMAL")
        database.migrate()
        yield database
        database.close()
        return
    with throwaway_database() as url:
        database = Database(url)
        database.migrate()
        yield database
        database.close()


class Fleet:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.devices = DeviceRepository(db)
        self.messages = MessageRepository(db, UNPACED)
        self.store = WakeStore(db)
        self.owner = create_owner(db, "owner", T0)

    def phone(self, push_token: str = "tok-1") -> str:
        """A paired phone that connected (with `push_token`) at T0 and left at T0."""
        code, _ = self.devices.create_pairing_code(self.owner, "phone", timedelta(minutes=5), T0)
        redeemed = self.devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        device = redeemed[0].device_id
        self.connect(device, push_token, T0)
        self.leave(device, T0)
        return device

    def connect(self, device: str, push_token: str, at: object) -> None:
        open_device_session(
            self.devices, self.messages, owner_id=self.owner, device_id=device, session_id=f"s-{device}-{at}",
            token_hash=None, app_version="t", sims=(), held=(), held_ids=(), now=at, push_token=push_token,  # type: ignore[arg-type]
        ).result()

    def leave(self, device: str, at: object) -> None:
        close_device_session(
            self.devices, self.messages, owner_id=self.owner, device_id=device, session_id=f"s-{device}-{at}",
            last=True, now=at,  # type: ignore[arg-type]
        ).result()

    def due(self, after: float) -> list[str]:
        now = T0 + timedelta(seconds=after)
        return [t.device_id for t in self.store.claim_due(now, grace=_GRACE, min_interval=_EVERY, limit=100)]


@pytest.fixture
def fleet(db: Database) -> Fleet:
    return Fleet(db)


def test_a_phone_with_work_is_woken_after_the_grace_then_every_interval(fleet: Fleet) -> None:
    phone = fleet.phone()
    fleet.messages.create(fleet.owner, new_message(1, device_id=phone), T0)
    assert fleet.due(_GRACE - 1) == []  # an ordinary reconnect would come before this
    assert fleet.due(_GRACE) == [phone]
    assert fleet.due(_GRACE + 1) == []  # claimed: marked woken
    assert fleet.due(_GRACE + _EVERY - 1) == []
    assert fleet.due(_GRACE + _EVERY) == [phone]
    listed = {d.id: d for d in fleet.devices.list(fleet.owner)}[phone]
    assert listed.last_woken_at is not None and not listed.wakeable  # wakes=False: FCM off in this repository
    assert DeviceRepository(fleet.db, wakes=True).list(fleet.owner)[0].wakeable


def test_no_push_without_due_work_of_its_own_a_usable_token_or_while_connected(fleet: Fleet) -> None:
    idle = fleet.phone()
    scheduled = fleet.phone()
    fleet.messages.create(fleet.owner, new_message(1, device_id=scheduled, schedule_at=T0 + timedelta(hours=1)), T0)
    expired = fleet.phone()
    fleet.messages.create(fleet.owner, new_message(1, device_id=expired, valid_until=T0 + timedelta(seconds=10)), T0)
    tokenless = fleet.phone(push_token="")
    fleet.messages.create(fleet.owner, new_message(1, device_id=tokenless), T0)
    back = fleet.phone()
    fleet.messages.create(fleet.owner, new_message(1, device_id=back), T0)
    fleet.connect(back, "tok-1", T0 + timedelta(seconds=5))  # reconnected by itself within the grace
    assert fleet.due(_GRACE * 2) == []
    assert fleet.due(3600 + _GRACE) == [scheduled]  # its schedule_at came
    del idle


def test_a_refused_token_stops_pushes_until_the_phone_reports_another(fleet: Fleet) -> None:
    WebhookRepository(fleet.db, WebhookSettings()).create(
        fleet.owner, "https://example.com/hook", ["device:push-token-invalid"], "", "whsec_" + "A" * 43 + "=", T0  # type: ignore[list-item]
    )
    phone = fleet.phone(push_token="old-token")
    fleet.messages.create(fleet.owner, new_message(1, device_id=phone), T0)
    [target] = fleet.store.claim_due(T0 + timedelta(seconds=_GRACE), grace=_GRACE, min_interval=_EVERY, limit=10)
    assert fleet.store.refuse_token(target, T0 + timedelta(seconds=_GRACE))
    assert not fleet.store.refuse_token(target, T0 + timedelta(seconds=_GRACE))  # once
    listed = DeviceRepository(fleet.db, wakes=True).list(fleet.owner)[0]
    assert listed.push_token_invalid and not listed.wakeable
    assert fleet.due(_GRACE + _EVERY * 2) == []
    with fleet.db.engine.connect() as c:
        [(event, payload)] = c.execute(text("SELECT event, payload FROM webhook_delivery")).all()
    assert event == "device:push-token-invalid" and f'"device_id":"{phone}"' in payload
    assert "old-token" not in payload
    # The same token in the next Hello stays refused; a new one is tried.
    later = T0 + timedelta(seconds=_GRACE * 3)
    fleet.connect(phone, "old-token", later)
    fleet.leave(phone, later)
    assert fleet.due(_GRACE * 5 + _EVERY * 2) == []
    fleet.connect(phone, "new-token", later)
    fleet.leave(phone, later)
    assert fleet.due(_GRACE * 5 + _EVERY * 2) == [phone]
    # A token refused after the phone reported another is not the current one: nothing marked.
    assert not fleet.store.refuse_token(WakeTarget(phone, fleet.owner, "old-token"), later)


def test_a_push_token_frame_replaces_the_token_of_the_live_session_only(fleet: Fleet) -> None:
    phone = fleet.phone(push_token="first")
    fleet.connect(phone, "first", T0)
    assert fleet.devices.set_push_token(phone, f"s-{phone}-{T0}", "second").result()
    assert not fleet.devices.set_push_token(phone, "an-older-session", "third").result()
    with fleet.db.engine.connect() as c:
        assert c.execute(text("SELECT push_token FROM device")).scalar_one() == "second"
