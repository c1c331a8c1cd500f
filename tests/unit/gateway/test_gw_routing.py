"""Where an unpinned message goes: the least-loaded online phone of its owner, else the
least-loaded phone that ever connected with its token, else nowhere (stored unrouted); ties
by device id. A single create asks this of the database in one statement, a batch reads the
owner's devices and loads once and routes in Python (`_Router`): both must choose alike.

Checked against that rule over random fleets (online, offline, never connected, revoked;
messages waiting on each) on SQLite, and on one fleet on PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from gateway.devices.repository import DeviceRepository
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import T0, World, new_message
from tests.unit.gateway.test_gw_send_many import Store

_PHONES = 4

# Per phone: (online, ever connected with its token, revoked, messages waiting on it).
Fleet = list[tuple[bool, bool, bool, int]]
_phone = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.integers(0, 3))


def _expected(ids: list[str], fleet: Fleet) -> str | None:
    usable = [(d, online, proven, load) for d, (online, proven, revoked, load) in zip(ids, fleet) if not revoked]
    online = [(load, d) for d, on, _, load in usable if on]
    pool = online or [(load, d) for d, on, proven, load in usable if proven]
    return min(pool)[1] if pool else None


def _set_fleet(db: Database, ids: list[str], fleet: Fleet) -> None:
    with db.write() as s:
        for d, (online, proven, revoked, _) in zip(ids, fleet):
            s.execute(
                text("UPDATE device SET session_id = :sid, connected_with_token_at = :at, revoked = :rev WHERE id = :id"),
                {"sid": f"session-{d}" if online else "", "at": T0 if proven else None, "rev": revoked, "id": d},
            )


def _check(db: Database, repo: MessageRepository, owner: str, ids: list[str], fleet: Fleet) -> None:
    """A single create goes where the rule says; a one-item batch after it goes where the
    rule says once that message waits too."""
    for d, (_, _, _, load) in zip(ids, fleet):
        for _ in range(load):  # waiting (PENDING) before the revocations: they count as load
            repo.create(owner, new_message(1, device_id=d), T0)
    _set_fleet(db, ids, fleet)
    want = _expected(ids, fleet)
    one, _ = repo.create(owner, new_message(1), T0)
    [batch] = repo.create_many(owner, [new_message(1)], T0)
    assert batch.message is not None
    assert one.device_id == want, (fleet, ids)
    after = fleet if want is None else [(o, p, r, n + (d == want)) for d, (o, p, r, n) in zip(ids, fleet)]
    assert batch.message.device_id == _expected(ids, after), (fleet, ids)


@pytest.fixture(scope="module")
def template() -> Iterator[World]:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp), devices=_PHONES)
        world.db.close()
        yield world


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=st.lists(_phone, min_size=_PHONES, max_size=_PHONES))
def test_single_and_batch_creates_route_by_the_rule_sqlite(template: World, fleet: Fleet) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp), template=template)
        try:
            _check(world.db, world.repo, world.owner, sorted(world.device_ids), fleet)
        finally:
            world.db.close()


def test_single_and_batch_creates_route_by_the_rule_postgresql() -> None:
    fleets: list[Fleet] = [
        [(True, True, False, 2), (True, True, False, 1), (False, True, False, 0), (True, True, True, 0)],
        [(False, True, False, 2), (False, False, False, 0), (False, True, False, 1), (False, True, True, 0)],
        [(False, False, False, 0), (True, False, True, 0), (False, False, False, 3), (False, False, False, 0)],
    ]
    for fleet in fleets:
        with throwaway_database() as url:
            store = Store(url)  # one phone paired: pair the rest
            try:
                pairing = DeviceRepository(store.db)
                for _ in range(_PHONES - 1):
                    code, _ = pairing.create_pairing_code(store.owner, "phone", timedelta(minutes=5), T0)
                    assert pairing.redeem_pairing_code(code, T0) is not None
                with store.db.read() as s:
                    rows = s.execute(text("SELECT id FROM device WHERE owner_id = :o"), {"o": store.owner})
                    ids = sorted(d for (d,) in rows)
                _check(store.db, store.repo, store.owner, ids, fleet)
            finally:
                store.db.close()
