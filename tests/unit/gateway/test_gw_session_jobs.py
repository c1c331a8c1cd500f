"""gateway.devices.session_jobs: a phone session's open and close as one write job each
(issue 15 item 7), with the outcome of the separate steps they replace (set_online,
open_session, the first round's load; close_session, set_offline, reroute_from)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.devices.repository import Online
from gateway.devices.session_jobs import OpenedSession, close_device_session, open_device_session
from gateway.errors import InvalidArgument
from gateway.messages.records import HeldRecipient
from gateway.storage.models import Device
from gateway.types import State
from tests.unit.gateway.test_gw_repository import T0, World, ids, new_message

P, D, A, C, E = State.PENDING, State.DISPATCHED, State.ACCEPTED, State.CANCELLED, State.EXPIRED


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.db.close()


@pytest.fixture
def jobs(world: World, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every write job submitted from here on."""
    submitted: list[Any] = []
    group, group_future = world.db.group, world.db.group_future

    def counting(fn: Any) -> Any:
        submitted.append(fn)
        return group(fn)

    def counting_future(fn: Any) -> Any:
        submitted.append(fn)
        return group_future(fn)

    monkeypatch.setattr(world.db, "group", counting)
    monkeypatch.setattr(world.db, "group_future", counting_future)
    return submitted


def _open(world: World, device: str, session: str, held: list[str] = (), **kw: Any) -> OpenedSession:  # type: ignore[assignment]
    return open_device_session(
        world.devices, world.repo, owner_id=world.owner, device_id=device, session_id=session,
        token_hash=kw.pop("token_hash", None), app_version="t", sims=(), held=world.held(held), held_ids=set(held),
        now=kw.pop("now", T0), **kw,
    ).result()


def _close(world: World, device: str, session: str, *, last: bool = True) -> set[str]:
    return close_device_session(
        world.devices, world.repo, owner_id=world.owner, device_id=device, session_id=session, last=last, now=T0
    ).result()


def _device(world: World, device: str) -> Device:
    with world.db.read() as s:
        row = s.get(Device, device)
        assert row is not None
        return row


def test_open_is_one_job_requeues_accepts_adopts_and_loads_the_queue(world: World, jobs: list[Any]) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    a, _ = repo.create(owner, new_message(device_id=dev), T0)
    b, _ = repo.create(owner, new_message(device_id=dev), T0)
    world.online(dev, "s1")
    assert ids(repo.dispatch(dev, "s1", 10, T0)) == [a.id, b.id]
    jobs.clear()

    opened = _open(world, dev, "s2", held=[a.id])
    assert len(jobs) == 1
    assert opened.online is Online.ONLINE and opened.drops == {}
    assert (world.state(a.id), world.state(b.id)) == (A, P)  # held: ACCEPTED; the other back to PENDING
    assert _device(world, dev).session_id == "s2"
    assert opened.pacing == repo.pacing_of(dev)
    # The loaded queue plans what a fresh round would claim.
    assert opened.queue is not None
    plan = opened.queue.plan(10, T0, ())
    assert [c.message_id for c in plan.claims] == [b.id]
    assert ids(repo.dispatch_round(opened.queue, dev, "s2", 10, T0, ())[1]) == [b.id]


def test_open_adopts_unrouted_messages(tmp_path: Path) -> None:
    world = World(tmp_path, devices=0)
    try:
        m, _ = world.repo.create(world.owner, new_message(), T0)
        assert m.device_id is None
        dev = world.pair()
        opened = _open(world, dev, "s1")
        assert world.repo.get(world.owner, m.id).device_id == dev
        assert opened.queue is not None and [c.message_id for c in opened.queue.plan(5, T0, ()).claims] == [m.id]
    finally:
        world.db.close()


def test_open_tells_what_to_drop_and_expires_first(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    cancelled, _ = repo.create(owner, new_message(device_id=dev), T0)
    expiring, _ = repo.create(owner, new_message(device_id=dev, valid_until=T0 + timedelta(minutes=1)), T0)
    world.online(dev, "s1")
    assert ids(repo.dispatch(dev, "s1", 10, T0)) == [cancelled.id, expiring.id]
    repo.close_session(dev, "s1", T0)
    repo.cancel(owner, cancelled.id, T0)
    # The phone holds the cancelled one (its ACCEPTED was lost); the other expires before the open.
    later = T0 + timedelta(minutes=2)
    opened = _open(world, dev, "s2", held=[cancelled.id], now=later)
    assert opened.drops == {cancelled.id: C, expiring.id: E}
    assert world.state(expiring.id) == E
    assert opened.queue is not None and opened.queue.plan(10, later, ()).claims == []
    # Told once: the next open has nothing to drop.
    assert _open(world, dev, "s3", now=later).drops == {}


def test_open_of_a_deleted_or_repaired_device_changes_nothing(world: World, jobs: list[Any]) -> None:
    repo, owner = world.repo, world.owner
    dev, other = world.device_ids
    with world.db.write() as s:
        row = s.get(Device, other)
        assert row is not None
        row.token_hash = "current"
        s.add(row)
    jobs.clear()
    opened = _open(world, other, "s1", token_hash="replaced-meanwhile")
    assert opened == OpenedSession(Online.TOKEN_REPLACED)
    assert _device(world, other).session_id == ""
    assert len(jobs) == 1
    repo.delete_device(owner, dev, T0)
    jobs.clear()
    assert _open(world, dev, "s1") == OpenedSession(Online.DELETED)
    assert _device(world, dev).session_id == ""
    assert len(jobs) == 1
    with pytest.raises(InvalidArgument):
        _open(world, "no-such-device", "s1")


def test_open_spends_the_pairing_code_only_with_the_token(world: World) -> None:
    dev = world.device_ids[0]
    with world.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE device SET connected_with_token_at = NULL WHERE id = ?", (dev,))
    _open(world, dev, "s1", with_token=False)
    assert _device(world, dev).connected_with_token_at is None
    _open(world, dev, "s2", with_token=True)
    assert _device(world, dev).connected_with_token_at == T0
    _open(world, dev, "s3", with_token=True, now=T0 + timedelta(hours=1))
    assert _device(world, dev).connected_with_token_at == T0  # the first one counts


def test_close_is_one_job_requeues_goes_offline_and_reroutes(world: World, jobs: list[Any]) -> None:
    repo, owner = world.repo, world.owner
    d0, d1 = world.device_ids
    _open(world, d0, "s1")
    sent, _ = repo.create(owner, new_message(device_id=d0), T0)
    assert ids(repo.dispatch(d0, "s1", 10, T0)) == [sent.id]
    free = repo.create(owner, new_message(), T0)[0]
    assert free.device_id == d0
    _open(world, d1, "s2")
    jobs.clear()

    assert _close(world, d0, "s1") == {d1}
    assert len(jobs) == 1
    assert world.state(sent.id) == P
    assert _device(world, d0).session_id == ""
    assert repo.get(owner, free.id).device_id == d1
    assert repo.get(owner, sent.id).device_id == d0  # pinned stays


def test_close_of_a_replaced_session_leaves_the_newer_one(world: World) -> None:
    repo, owner = world.repo, world.owner
    d0, _ = world.device_ids
    _open(world, d0, "s1")
    m, _ = repo.create(owner, new_message(device_id=d0), T0)
    assert ids(repo.dispatch(d0, "s1", 10, T0)) == [m.id]
    _open(world, d0, "s2", held=[m.id])
    # The late close of s1: nothing of s2 changes, nothing is rerouted.
    assert _close(world, d0, "s1", last=True) == set()
    assert _device(world, d0).session_id == "s2"
    assert world.state(m.id) == A
    assert _close(world, d0, "s2", last=False) == set()
    assert _device(world, d0).session_id == ""


def test_the_held_list_may_name_recipients_of_another_attempt(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    m, _ = repo.create(owner, new_message(2, device_id=dev), T0)
    _open(world, dev, "s1")
    assert ids(repo.dispatch(dev, "s1", 10, T0)) == [m.id]
    held = [HeldRecipient(m.id, 0, 1), HeldRecipient(m.id, 1, 7)]  # index 1 at an attempt never made
    open_device_session(
        world.devices, repo, owner_id=owner, device_id=dev, session_id="s2", token_hash=None, app_version="t",
        sims=(), held=held, held_ids={m.id}, now=T0,
    ).result()
    assert [r.state for r in repo.get(owner, m.id).recipients] == [A, P]
