"""Pairing codes at the repository level (docs/protocol.md "Pairing"): a code trades for a
device once, can re-issue that device's token while the phone has not yet connected with it
(a lost Welcome), and is spent for good by the first session opened with the token, by its
expiry, or by the device's deletion. On SQLite, and on PostgreSQL with two writers at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.auth.repository import AuthRepository
from gateway.devices.repository import DeviceRepository, Online, hash_secret
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import new_message

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=10)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One throwaway PostgreSQL database for the module; each test makes its own owner."""
    with throwaway_database() as url:
        schema = Database(url)
        schema.create_all()
        schema.close()
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'p.db'}")
        database.create_all()
    else:
        database = Database(request.getfixturevalue("pg_url"))
    yield database
    database.close()


def _owner(db: Database) -> str:
    return create_owner(db, f"owner-{uuid.uuid4().hex[:8]}", T0)


def _pair_actions(db: Database, owner: str) -> list[str]:
    rows = AuthRepository(db).list_audit(owner, action="", limit=100, before_id=None)
    return sorted(r.action for r in rows if r.action.startswith("device."))


def _online(devices: DeviceRepository, device_id: str, session_id: str, token: str, *, with_token: bool) -> Online:
    return devices.set_online(
        device_id, session_id, token_hash=hash_secret(token), app_version="t", sims=(), now=T0, with_token=with_token
    )


def test_retry_before_the_token_is_used_reissues_it_for_the_same_device(db: Database) -> None:
    devices = DeviceRepository(db)
    owner = _owner(db)
    code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
    first = devices.redeem_pairing_code(code, T0, "10.0.0.1")
    assert first is not None
    # The Welcome never arrived: the phone tries the same code again.
    assert devices.pairing_code_valid(code, T0 + timedelta(minutes=1))
    second = devices.redeem_pairing_code(code, T0 + timedelta(minutes=1), "10.0.0.1")
    assert second is not None
    assert second[0] == first[0]
    assert second[1] != first[1]
    assert devices.authenticate(first[1]) is None  # the undelivered token is dead
    assert devices.authenticate(second[1]) == first[0]
    listed = devices.list(owner)
    assert [d.id for d in listed] == [first[0].device_id]
    assert not listed[0].connected_with_token
    assert _pair_actions(db, owner) == ["device.pair", "device.reissue"]


def test_first_session_with_the_token_spends_the_code(db: Database) -> None:
    devices = DeviceRepository(db)
    owner = _owner(db)
    code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
    redeemed = devices.redeem_pairing_code(code, T0)
    assert redeemed is not None
    identity, token = redeemed
    # The pairing session itself does not prove the phone holds the token ...
    assert _online(devices, identity.device_id, "s1", token, with_token=False) is Online.ONLINE
    assert devices.set_offline(identity.device_id, "s1", T0)
    assert devices.pairing_code_valid(code, T0)
    assert not devices.list(owner)[0].connected_with_token
    # ... a session opened with it does.
    assert _online(devices, identity.device_id, "s2", token, with_token=True) is Online.ONLINE
    assert devices.list(owner)[0].connected_with_token
    assert not devices.pairing_code_valid(code, T0)
    assert devices.redeem_pairing_code(code, T0) is None
    assert devices.authenticate(token) == identity  # the token it holds keeps working
    assert _pair_actions(db, owner) == ["device.pair"]


def test_expiry_spends_the_code_and_leaves_the_orphan_listed(db: Database) -> None:
    devices = DeviceRepository(db)
    owner = _owner(db)
    code, expires = devices.create_pairing_code(owner, "phone", TTL, T0)
    redeemed = devices.redeem_pairing_code(code, T0)
    assert redeemed is not None
    assert not devices.pairing_code_valid(code, expires)
    assert devices.redeem_pairing_code(code, expires) is None
    listed = devices.list(owner)
    assert [(d.id, d.connected_with_token) for d in listed] == [(redeemed[0].device_id, False)]


def test_deleting_the_orphan_spends_the_code(db: Database) -> None:
    devices = DeviceRepository(db)
    messages = MessageRepository(db)
    owner = _owner(db)
    code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
    redeemed = devices.redeem_pairing_code(code, T0)
    assert redeemed is not None
    assert devices.pairing_code_valid(code, T0)  # still re-issuable ...
    messages.delete_device(owner, redeemed[0].device_id, T0)
    assert not devices.pairing_code_valid(code, T0)  # ... not once the owner deleted it
    assert devices.redeem_pairing_code(code, T0) is None
    assert devices.list(owner) == []


def test_two_writers_redeeming_one_code_at_once_make_one_device(db: Database) -> None:
    """Two sessions take the same code at the same moment (on PostgreSQL through two engines,
    as two bridge processes would; SQLite has one writer per data directory): one device,
    both answers name it, and only the later token works."""
    devices = DeviceRepository(db)
    owner = _owner(db)
    code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
    other = db if db.is_sqlite else Database(db.engine.url.render_as_string(hide_password=False))
    start = threading.Barrier(2, timeout=10)
    results: list[object] = [None, None]

    def redeem(i: int, repo: DeviceRepository) -> None:
        start.wait()
        results[i] = repo.redeem_pairing_code(code, T0)

    threads = [threading.Thread(target=redeem, args=(i, r)) for i, r in enumerate([devices, DeviceRepository(other)])]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        if other is not db:
            other.close()
    assert all(r is not None for r in results), results
    ids = {r[0] for r in results}  # type: ignore[index]
    tokens = [r[1] for r in results]  # type: ignore[index]
    assert len(ids) == 1
    assert [d.id for d in devices.list(owner)] == [next(iter(ids)).device_id]
    assert sum(devices.authenticate(t) is not None for t in tokens) == 1


def test_a_session_whose_token_was_reissued_meanwhile_neither_takes_the_device_nor_spends_the_code(db: Database) -> None:
    """The token is checked at the upgrade, the session opens after Hello: a retry with the
    code in between kills it. set_online re-checks it, in the transaction that takes the device."""
    devices = DeviceRepository(db)
    owner = _owner(db)
    code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
    first = devices.redeem_pairing_code(code, T0)
    second = devices.redeem_pairing_code(code, T0)
    assert first is not None and second is not None
    device_id = first[0].device_id
    assert _online(devices, device_id, "bearer-1", first[1], with_token=True) is Online.TOKEN_REPLACED
    assert _online(devices, device_id, "pairing-2", first[1], with_token=False) is Online.TOKEN_REPLACED
    [listed] = devices.list(owner)
    assert (listed.online, listed.connected_with_token) == (False, False)  # nothing changed
    assert devices.pairing_code_valid(code, T0)
    assert _online(devices, device_id, "bearer-2", second[1], with_token=True) is Online.ONLINE
    assert not devices.pairing_code_valid(code, T0)


def _wait_for_a_lock_wait(db: Database, worker: threading.Thread) -> None:
    """Until `worker` waits for a row lock in this database (or has ended without waiting)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while worker.is_alive():
        with db.engine.connect() as conn:
            if conn.execute(query).scalar():
                return
        worker.join(0.01)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    return worker, result


def test_postgresql_a_reissue_waits_for_a_first_session_with_the_token_on_another_bridge(pg_url: str) -> None:
    """Another bridge's set_online holds the device row (about to spend the code): the re-issue
    waits for it and then finds the code spent, rather than killing the token just used."""
    db = Database(pg_url)
    other = Database(pg_url)
    try:
        devices = DeviceRepository(db)
        code, _ = devices.create_pairing_code(_owner(db), "phone", TTL, T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        device_id = redeemed[0].device_id
        with other.engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT id FROM device WHERE id = :id FOR UPDATE"), {"id": device_id})
            worker, result = _in_thread(lambda: devices.redeem_pairing_code(code, T0))
            _wait_for_a_lock_wait(db, worker)
            conn.execute(text("UPDATE device SET connected_with_token_at = :t WHERE id = :id"), {"t": T0, "id": device_id})
        worker.join(30)
        assert result == [None]
        assert devices.authenticate(redeemed[1]) == redeemed[0]
    finally:
        other.close()
        db.close()


def test_postgresql_a_first_session_with_the_token_waits_for_a_reissue_on_another_bridge(pg_url: str) -> None:
    """The other order: a re-issue holds the code and the device; set_online waits for it and
    then finds the token it was admitted with replaced."""
    db = Database(pg_url)
    other = Database(pg_url)
    try:
        devices = DeviceRepository(db)
        code, _ = devices.create_pairing_code(_owner(db), "phone", TTL, T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        identity, token = redeemed
        with other.engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT code_hash FROM pairing_code WHERE code_hash = :h FOR UPDATE"), {"h": hash_secret(code)})
            conn.execute(text("SELECT id FROM device WHERE id = :id FOR UPDATE"), {"id": identity.device_id})
            worker, result = _in_thread(lambda: _online(devices, identity.device_id, "s1", token, with_token=True))
            _wait_for_a_lock_wait(db, worker)
            conn.execute(text("UPDATE device SET token_hash = 'reissued' WHERE id = :id"), {"id": identity.device_id})
        worker.join(30)
        assert result == [Online.TOKEN_REPLACED]
        assert devices.pairing_code_valid(code, T0)
    finally:
        other.close()
        db.close()


def test_an_orphan_gets_no_unpinned_message_while_every_phone_is_offline(db: Database) -> None:
    """Routing's offline fallback skips a device that never connected with its token: a
    message there would wait for a phone that may never come. Unrouted, the next phone to
    connect adopts it; a message pinned to the orphan still goes there."""
    devices, messages = DeviceRepository(db), MessageRepository(db)
    owner = _owner(db)
    code, _ = devices.create_pairing_code(owner, "orphan", TTL, T0)
    orphan = devices.redeem_pairing_code(code, T0)
    assert orphan is not None
    alone, _ = messages.create(owner, new_message(), T0)
    assert alone.device_id is None

    code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
    phone = devices.redeem_pairing_code(code, T0)
    assert phone is not None
    assert _online(devices, phone[0].device_id, "s1", phone[1], with_token=True) is Online.ONLINE
    assert devices.set_offline(phone[0].device_id, "s1", T0)
    for _ in range(3):  # the orphan would be the least loaded each time
        routed, _ = messages.create(owner, new_message(), T0)
        assert routed.device_id == phone[0].device_id
    pinned, _ = messages.create(owner, new_message(device_id=orphan[0].device_id), T0)
    assert pinned.device_id == orphan[0].device_id


def test_token_identities_are_the_current_tokens_of_devices_not_deleted(db: Database) -> None:
    """What the bridge's token cache loads at start (device_bridge.credentials)."""
    devices, messages = DeviceRepository(db), MessageRepository(db)
    owner = _owner(db)
    kept, deleted = [], []
    for target in (kept, kept, deleted):
        code, _ = devices.create_pairing_code(owner, "phone", TTL, T0)
        redeemed = devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        if target is kept and not kept:  # re-issued: only the later token counts
            redeemed = devices.redeem_pairing_code(code, T0)
            assert redeemed is not None
        target.append(redeemed)
    messages.delete_device(owner, deleted[0][0].device_id, T0)
    loaded = {h: i for h, i in devices.token_identities(100_000) if i.owner_id == owner}
    assert loaded == {hash_secret(token): identity for identity, token in kept}
    assert len(devices.token_identities(1)) == 1
