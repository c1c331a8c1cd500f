"""Claim at create (gateway/messages/claims.py, `MessageRepository.create_claimed`) at the
repository level, over a real SQLite file.

A `Bridge` below plays one connected session the way device_bridge.session_task._Session
does: it publishes a `ClaimTarget` for its phone, runs `dispatch_round(..., target=target)`
and then clears `queue.busy`, keeps the queue on the target (`target.keep`), sends the
round's Delivers and the ones handed over (`take_handed`) and publishes the room left
(`target.sent`); the phone holds what it was sent until it accepts it. The queue kept in
memory is compared with a fresh load from storage as tests/unit/gateway/test_gw_queue_model.py
does (after applying the notification a send that was not claimed gives the session:
`notify_queued` -> the message is read again by the next round).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import SchedulerSettings
from gateway.messages.claims import ClaimTarget, ClaimTargets
from gateway.messages.queue import DeviceQueue
from gateway.messages.records import DispatchUnit, NewMessage, ReceiptUpdate
from gateway.messages.repository import _Adder
from gateway.types import State
from tests.unit.gateway.test_gw_queue_model import caught_up, live, load, plan_of, claims as plan_claims, window_sends
from tests.unit.gateway.test_gw_repository import UNPACED, World, new_message, snapshot

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
P, D, A = State.PENDING, State.DISPATCHED, State.ACCEPTED
SEC = timedelta(seconds=1)
PACED = SchedulerSettings()  # 24 parts/min, 2.5 s apart per SIM, 27 parts/min per phone
_WAIT = 10.0  # bound on every wait for the writer thread


# ---- the session, as the bridge runs it ----------------------------------------------------


class Bridge:
    """One connected session of `dev` with a window of `window` (see the module docstring)."""

    def __init__(self, world: World, dev: str, session_id: str = "s1", *, window: int = 3, sims: tuple[int, ...] = (1,)) -> None:
        self.world, self.repo, self.dev, self.session_id, self.window = world, world.repo, dev, session_id, window
        world.online(dev, session_id, sims=sims)
        self.wakes = 0
        self.target = ClaimTarget(dev, session_id, self._wake)
        self.holds: set[str] = set()  # Delivers the phone holds (not accepted yet)
        self.sent_ids: list[str] = []  # every Deliver the session sent, in order
        self.queue: DeviceQueue | None = None
        self.fresh: set[str] = set()  # notify_queued not consumed by a round yet
        self.reload = True  # the first round loads the queue
        self.by_create = self.by_round = 0  # Delivers claimed at create / by rounds
        self.target.sent(0, self.available)
        assert world.repo.claims is not None
        world.repo.claims.register(self.target)

    def _wake(self) -> None:
        self.wakes += 1

    @property
    def available(self) -> int:
        return self.window - len(self.holds)

    def round(self, now: datetime, *, before_keep: Callable[[], Any] | None = None) -> list[DispatchUnit]:
        """`_Session._dispatch`'s round; `before_keep` runs between the round's commit and
        the session's clearing `busy` / `target.keep` (a create the writer runs meanwhile)."""
        current = None if self.reload else self.queue
        fresh, self.fresh, self.reload = self.fresh, set(), False
        kept, batch = self.repo.dispatch_round(
            current, self.dev, self.session_id, self.available, now, set(self.holds), fresh, self.target
        )
        if before_keep is not None:
            before_keep()
        if kept is not None:
            kept.busy = False
        self.target.keep(kept)
        self.queue = kept
        self.by_round += len(batch.units)
        for unit in batch.units:
            self.deliver(unit)
        self.send_handed()
        self.target.sent(len(batch.units), self.available)
        return list(batch.units)

    def deliver(self, unit: DispatchUnit) -> None:
        mid = unit.message.id
        assert mid not in self.holds, f"{mid} sent twice while in flight"
        assert len(self.holds) < self.window, f"the window of {self.window} is full (send_deliver would raise)"
        self.holds.add(mid)
        self.sent_ids.append(mid)

    def send_handed(self) -> list[DispatchUnit]:
        units = self.target.take_handed()
        for unit in units:
            self.deliver(unit)
        self.target.sent(len(units), self.available)
        return units

    def accept(self, mid: str, now: datetime) -> None:
        """The phone's ACCEPTED receipt: stored, then the room it freed is published."""
        self.holds.discard(mid)
        self.repo.apply_receipts(self.dev, [ReceiptUpdate(mid, A, 0, recipient_indices=self.indices(mid))], now)
        self.target.sent(0, self.available)

    def indices(self, mid: str) -> tuple[int, ...]:
        return tuple(range(len(self.repo.get(self.world.owner, mid).recipients)))

    def send(self, new: NewMessage, now: datetime) -> tuple[str, bool]:
        """`MessageService._send`: create (maybe claimed); a message not claimed is named to the session."""
        record, created, claimed = self.repo.create_claimed(self.world.owner, new, now)
        assert created
        if record.device_id == self.dev and not claimed:
            self.fresh.add(record.id)
        self.by_create += claimed
        return record.id, claimed


def make_world(tmp_path: Path, scheduler: SchedulerSettings = UNPACED, devices: int = 1) -> World:
    world = World(tmp_path, devices, scheduler=scheduler)
    world.repo.claims = ClaimTargets()
    return world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, PACED)
    try:
        yield w
    finally:
        w.db.close()


def ready_bridge(world: World, **kw: Any) -> Bridge:
    """A session whose first round ran (its queue is kept on its target)."""
    bridge = Bridge(world, world.device_ids[0], **kw)
    assert bridge.round(T0) == []
    assert bridge.target.queue is not None and len(bridge.target.queue) == 0
    return bridge


def events_of(world: World, mid: str) -> list[tuple[int, State]]:
    return [(e.recipient_index, e.state) for e in world.repo.events_after(world.owner, 0, limit=10_000, message_ids=[mid])]


def dispatch_log(world: World) -> list[tuple[str, str, int, int]]:
    with world.db.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT device_id, message_id, recipient_index, sim FROM dispatch_log ORDER BY id"
        ).all()]  # type: ignore[misc]


def assert_matches_storage(world: World, bridge: Bridge, now: datetime) -> None:
    """The kept queue, with the pending notifications read again, equals a fresh load:
    same messages in the same order, same recipients, same pacing history, same plans."""
    queue = bridge.target.queue
    assert queue is not None
    mem = caught_up(world.repo, queue, bridge.fresh)
    disk = load(world.repo, bridge.dev, now)
    assert disk is not None
    assert [m.id for m, _ in live(mem, now)] == [m.id for m, _ in live(disk, now)]
    for (mm, mrs), (dm, drs) in zip(live(mem, now), live(disk, now), strict=True):
        assert mm.state == dm.state
        assert [(r.idx, r.state, r.attempt, r.not_before) for r in mrs] == [
            (r.idx, r.state, r.attempt, r.not_before) for r in drs
        ]
    assert (mem.history is None) == (disk.history is None)
    if mem.history is not None:
        assert window_sends(mem, now) == window_sends(disk, now), "pacing history differs from storage"
    for room in (1, 4):
        assert plan_claims(plan_of(mem, room, now, bridge.holds)) == plan_claims(plan_of(disk, room, now, bridge.holds))


# ---- (a) a claim ---------------------------------------------------------------------------


def test_create_to_an_idle_phone_is_stored_dispatched_and_handed_after_the_commit(world: World) -> None:
    bridge = ready_bridge(world)
    target, dev = bridge.target, bridge.dev
    assert (target.free, target.pending) == (3, 0)

    record, created, claimed = world.repo.create_claimed(world.owner, new_message(device_id=dev), T0)
    assert created and claimed
    assert record.state == P  # answered as stored by create; the same commit dispatched it
    snap = snapshot(world.db)[record.id]
    assert snap.state == D and snap.ever_dispatched
    assert [(r.state, r.session_id, r.attempt) for r in snap.recipients] == [(D, "s1", 1)]
    assert dispatch_log(world) == [(dev, record.id, 0, 1)]
    assert events_of(world, record.id) == [(0, P), (0, D)]
    assert (target.free, target.pending) == (2, 1)
    assert bridge.wakes == 1
    [unit] = target.take_handed()
    assert (unit.message.id, unit.recipient_indices, unit.attempt, unit.sim) == (record.id, (0,), 1, 1)
    assert target.take_handed() == []
    # The queue stays empty and its history counts the send, as a fresh load's does.
    assert target.queue is not None and len(target.queue) == 0
    assert_matches_storage(world, bridge, T0)
    # The session sends it: the room is published again.
    bridge.deliver(unit)
    target.sent(1, bridge.available)
    assert (target.free, target.pending) == (2, 0)


def test_a_replayed_key_to_an_idle_phone_claims_nothing_twice(world: World) -> None:
    """The claim is made before the insert; a send whose key is stored already fails that
    insert: the claim is undone with the transaction and the answer is the stored message."""
    bridge = ready_bridge(world)
    target = bridge.target
    new = new_message(device_id=bridge.dev)
    first, created, claimed = world.repo.create_claimed(world.owner, new, T0)
    assert created and claimed
    [unit] = bridge.send_handed()
    assert (target.free, target.pending) == (2, 0)
    later = T0 + 3 * SEC  # past the SIM's interval: the phone may send again
    again, created, claimed = world.repo.create_claimed(world.owner, new, later)
    assert again.id == first.id and not created and not claimed
    assert (target.free, target.pending) == (2, 0) and target.take_handed() == []
    assert dispatch_log(world) == [(bridge.dev, first.id, 0, 1)]
    assert events_of(world, first.id) == [(0, P), (0, D)]
    assert target.queue is not None and target.queue.needs_reload  # its history counts the undone claim
    assert bridge.round(later) == [] and bridge.sent_ids == [first.id]  # the round reloads it
    assert_matches_storage(world, bridge, later)


def test_the_deliver_is_handed_only_after_the_commit(world: World) -> None:
    """Inside the transaction (a later job of the same group) nothing is handed yet."""
    bridge = ready_bridge(world)
    db, target = world.db, bridge.target
    seen: list[Any] = []

    def look(_s: Any) -> None:
        seen.append((list(target.handed), bridge.wakes, target.pending))

    out, _ = in_one_group(
        world,
        lambda: world.repo.create_claimed(world.owner, new_message(device_id=bridge.dev), T0),
        lambda: db.group(look),
    )
    record, created, claimed = out
    assert created and claimed
    assert seen == [([], 0, 1)], "claimed in the transaction, handed only after its commit"
    assert [u.message.id for u in target.take_handed()] == [record.id] and bridge.wakes == 1


def wait_jobs(world: World, n: int) -> None:
    """Until `n` jobs wait for the writer thread (bounded)."""
    committer = world.db._committer
    done = threading.Event()
    for _ in range(int(_WAIT / 0.005)):
        with committer._ready:
            if len(committer._jobs) >= n:
                done.set()
                break
        threading.Event().wait(0.005)
    assert done.is_set(), f"{n} jobs never queued"


# ---- (b) no claim ---------------------------------------------------------------------------


def _no_target(world: World, bridge: Bridge) -> dict[str, Any]:
    assert world.repo.claims is not None
    world.repo.claims.unregister(bridge.target)
    bridge.target.closed = False  # unregister closed it; only its absence from the registry counts here
    bridge.target.queue, bridge.target.free = bridge.queue, 3
    return {}


def _closed(world: World, bridge: Bridge) -> dict[str, Any]:
    bridge.target.closed = True  # queue and room left as they were: the flag alone refuses
    return {}


def _closed_for_real(world: World, bridge: Bridge) -> dict[str, Any]:
    assert world.repo.claims is not None
    world.repo.claims.unregister(bridge.target)  # ClaimTargets.unregister -> close()
    return {}


def _full(world: World, bridge: Bridge) -> dict[str, Any]:
    bridge.target.sent(0, 0)
    return {}


def _no_queue(world: World, bridge: Bridge) -> dict[str, Any]:
    bridge.target.keep(None)
    return {}


def _busy(world: World, bridge: Bridge) -> dict[str, Any]:
    assert bridge.target.queue is not None
    bridge.target.queue.busy = True
    return {}


def _needs_reload(world: World, bridge: Bridge) -> dict[str, Any]:
    assert bridge.target.queue is not None
    bridge.target.queue.needs_reload = True
    return {}


def _waiting(world: World, bridge: Bridge) -> dict[str, Any]:
    """A message waits in the queue: sent while the window was full, read by a round with no room."""
    bridge.target.sent(0, 0)
    first, claimed = bridge.send(new_message(device_id=bridge.dev), T0)
    assert not claimed
    assert bridge.round(T0) == []  # no room: it is read into the queue, not claimed
    assert bridge.target.queue is not None and first in bridge.target.queue
    bridge.target.sent(0, bridge.available)  # room again (a receipt freed it)
    assert bridge.target.free == 3
    return {"first": first}


def _scheduled(world: World, bridge: Bridge) -> dict[str, Any]:
    return {"schedule_at": T0 + 60 * SEC}


def _paced(world: World, bridge: Bridge) -> dict[str, Any]:
    """A send one second ago on the phone's only SIM: the next may go 2.5 s after it."""
    mid, claimed = bridge.send(new_message(device_id=bridge.dev), T0 - SEC)
    assert claimed
    bridge.send_handed()
    return {}


def _missing_sim(world: World, bridge: Bridge) -> dict[str, Any]:
    return {"sim_number": 2}  # the phone has SIM 1 only


NO_CLAIM = {
    "no target": _no_target,
    "target closed": _closed,
    "target unregistered (closed)": _closed_for_real,
    "no free room": _full,
    "no queue": _no_queue,
    "queue busy": _busy,
    "queue needs reload": _needs_reload,
    "a message waits before it (FIFO)": _waiting,
    "scheduled later": _scheduled,
    "pacing holds it": _paced,
    "pinned SIM missing": _missing_sim,
}


@pytest.mark.parametrize("case", list(NO_CLAIM))
def test_no_claim(tmp_path: Path, case: str) -> None:
    world = make_world(tmp_path, PACED)
    try:
        bridge = ready_bridge(world)
        target = bridge.target
        extra = NO_CLAIM[case](world, bridge)
        first = extra.pop("first", None)
        free, pending, wakes, logged = target.free, target.pending, bridge.wakes, dispatch_log(world)
        queue_before = [(m.id, [r.state for r in rs]) for m, rs in target.queue.entries()] if target.queue is not None else None
        flags_before = (target.queue.busy, target.queue.needs_reload) if target.queue is not None else None

        mid, claimed = bridge.send(new_message(device_id=bridge.dev, **extra), T0)

        assert not claimed
        snap = snapshot(world.db)[mid]
        assert snap.state == P and [r.state for r in snap.recipients] == [P] and not snap.ever_dispatched
        assert events_of(world, mid) == [(0, P)]
        assert dispatch_log(world) == logged
        assert (target.free, target.pending) == (free, pending)
        assert target.take_handed() == [] and bridge.wakes == wakes
        if target.queue is not None:
            # The queue is as it was (the new message only joins it through the next round)...
            assert [(m.id, [r.state for r in rs]) for m, rs in target.queue.entries()] == queue_before
            assert (target.queue.busy, target.queue.needs_reload) == flags_before
            # ...and, with the session told of the message, equals a fresh load.
            assert_matches_storage(world, bridge, T0)
        if first is not None:
            # FIFO: the next round sends the older one first.
            units = bridge.round(T0)
            assert [u.message.id for u in units][:1] == [first]
    finally:
        world.db.close()


def test_a_partly_paced_multi_recipient_message_is_not_claimed_and_the_queue_reloads(tmp_path: Path) -> None:
    """Two parts a minute on the SIM: two of three recipients could go now. A claim at create
    takes a message whole or not at all; the history counted the two, so the queue reloads."""
    world = make_world(tmp_path, SchedulerSettings(sim_parts_per_minute=2, sim_min_interval=0, phone_parts_per_minute=0))
    try:
        bridge = ready_bridge(world)
        mid, claimed = bridge.send(new_message(3, device_id=bridge.dev), T0)
        assert not claimed
        assert snapshot(world.db)[mid].states == (P, P, P) and dispatch_log(world) == []
        assert (bridge.target.free, bridge.target.pending) == (3, 0) and bridge.target.take_handed() == []
        assert bridge.target.queue is not None and bridge.target.queue.needs_reload and len(bridge.target.queue) == 0
        # The next round reloads (its history without the claim that was not made) and sends two.
        bridge.reload = True  # what `needs_reload` makes _round do anyway
        [unit] = bridge.round(T0)
        assert (unit.message.id, unit.recipient_indices) == (mid, (0, 1))
    finally:
        world.db.close()


# ---- (c) several recipients -----------------------------------------------------------------


def test_a_multi_recipient_message_is_claimed_whole(tmp_path: Path) -> None:
    """Unpaced (the default SIM interval of 2.5 s would hold the second recipient back)."""
    world = make_world(tmp_path, UNPACED)
    try:
        _claimed_whole(world)
    finally:
        world.db.close()


def _claimed_whole(world: World) -> None:
    bridge = ready_bridge(world)
    mid, claimed = bridge.send(new_message(3, device_id=bridge.dev), T0)
    assert claimed
    snap = snapshot(world.db)[mid]
    assert snap.state == D and [(r.state, r.session_id) for r in snap.recipients] == [(D, "s1")] * 3
    assert sorted(dispatch_log(world)) == [(bridge.dev, mid, i, 0) for i in range(3)]  # unpaced: the default SIM
    history = events_of(world, mid)
    for i in range(3):
        assert [s for idx, s in history if idx == i] == [P, D]
    assert [s for _, s in history][:3] == [P, P, P]  # stored, then dispatched
    assert (bridge.target.free, bridge.target.pending) == (2, 1)  # one Deliver, one slot
    [unit] = bridge.target.take_handed()
    assert (unit.message.id, unit.recipient_indices) == (mid, (0, 1, 2))
    assert_matches_storage(world, bridge, T0)


# ---- (d) a rolled-back group ----------------------------------------------------------------


class Boom(Exception):
    pass


def in_one_group(world: World, *jobs: Callable[[], Any]) -> list[Any]:
    """Run `jobs` (each submits one write job and waits for it) so that their write jobs share
    one group, in this order: a held job keeps the writer busy until all are queued. Returns
    what each job returned, or the exception it raised."""
    gate, started = threading.Event(), threading.Event()
    results: list[Any] = [None] * len(jobs)

    def hold(_s: Any) -> None:
        started.set()
        assert gate.wait(_WAIT)

    def run(i: int, job: Callable[[], Any]) -> None:
        try:
            results[i] = job()
        except Exception as exc:  # noqa: BLE001 — returned to the caller
            results[i] = exc

    blocker = threading.Thread(target=world.db.group, args=(hold,))
    blocker.start()
    assert started.wait(_WAIT)
    threads = [blocker]
    for i, job in enumerate(jobs):
        thread = threading.Thread(target=run, args=(i, job))
        thread.start()
        threads.append(thread)
        wait_jobs(world, i + 1)
    gate.set()
    for t in threads:
        t.join(_WAIT)
        assert not t.is_alive()
    return results


def in_a_failing_group(world: World, job: Callable[[], Any]) -> Any:
    """Run `job` (which submits one write job) so that its write job shares a group with a
    job that raises. Returns what `job` returned; the failing job must have failed alone (Boom)."""

    def fail(_s: Any) -> None:
        raise Boom

    out, failed = in_one_group(world, job, lambda: world.db.group(fail))
    assert isinstance(failed, Boom), failed
    if isinstance(out, BaseException):
        raise out
    return out


def test_a_claim_whose_transaction_rolls_back_gives_the_room_back(world: World) -> None:
    """`Database.write` with a body that claims, then raises."""
    bridge = ready_bridge(world)
    target, repo = bridge.target, world.repo
    before = snapshot(world.db)
    new = new_message(device_id=bridge.dev)
    with pytest.raises(Boom):
        with world.db.write() as s:
            adder = _Adder(s, world.owner, 0, T0)
            added = adder.add(new)
            claim = repo._claim_at_create(s, adder, added, T0)  # as create does: before the insert
            assert claim is not None
            adder.write()
            claim.flush()
            assert (target.free, target.pending) == (2, 1)
            raise Boom
    assert (target.free, target.pending) == (3, 0)
    assert target.queue is not None and target.queue.needs_reload
    assert target.take_handed() == [] and bridge.wakes == 0
    assert snapshot(world.db) == before and dispatch_log(world) == []
    # The key is free: the send stored again is not claimed (the queue reloads first), and the round sends it.
    mid, claimed = bridge.send(new, T0)
    assert not claimed and snapshot(world.db)[mid].state == P
    [unit] = bridge.round(T0)
    assert unit.message.id == mid and bridge.sent_ids == [mid]


def test_a_group_that_fails_after_a_claim_is_rerun_without_it(world: World) -> None:
    """A create that claims and a failing job in one group: the group rolls back (the claim's
    room comes back, the queue is marked for reload), then each job runs alone: the create is
    stored PENDING, not claimed, nothing is handed; the failing job alone fails."""
    bridge = ready_bridge(world)
    target = bridge.target
    record, created, claimed = in_a_failing_group(
        world, lambda: world.repo.create_claimed(world.owner, new_message(device_id=bridge.dev), T0)
    )
    assert created and not claimed
    assert (target.free, target.pending) == (3, 0)
    assert target.queue is not None and target.queue.needs_reload
    assert target.take_handed() == [] and bridge.wakes == 0
    snap = snapshot(world.db)[record.id]
    assert snap.states == (P,) and not snap.ever_dispatched and dispatch_log(world) == []
    assert events_of(world, record.id) == [(0, P)]
    # The session was told of it (not claimed): its next round reloads and sends it, once.
    bridge.fresh.add(record.id)
    [unit] = bridge.round(T0)
    assert unit.message.id == record.id
    assert (target.free, target.pending) == (2, 0) and bridge.holds == {record.id}


def test_a_round_in_a_group_that_fails_counts_its_claims_once(tmp_path: Path) -> None:
    """A round with a target and a failing job in one group: the round's claims are given
    back on the rollback and taken again when it runs alone."""
    world = make_world(tmp_path, UNPACED)
    try:
        _round_rolled_back(world)
    finally:
        world.db.close()


def _round_rolled_back(world: World) -> None:
    bridge = ready_bridge(world)
    target = bridge.target
    target.sent(0, 0)
    waiting = [bridge.send(new_message(device_id=bridge.dev), T0)[0] for _ in range(2)]
    target.sent(0, bridge.available)
    kept, batch = in_a_failing_group(
        world, lambda: bridge.repo.dispatch_round(bridge.queue, bridge.dev, "s1", 3, T0, set(), set(waiting), target)
    )
    assert sorted(u.message.id for u in batch.units) == sorted(waiting)
    assert (target.free, target.pending) == (1, 2), "claims of the rolled-back attempt counted again"
    assert all(snapshot(world.db)[m].states == (D,) for m in waiting)
    assert len(dispatch_log(world)) == 2


# ---- (e) rounds and creates share the window ------------------------------------------------


def outstanding(world: World, bridge: Bridge) -> int:
    """Messages DISPATCHED on the session in storage: claimed and not accepted yet."""
    return sum(1 for m in snapshot(world.db).values() if any(r.state == D and r.session_id == bridge.session_id for r in m.recipients))


def check_window(world: World, bridge: Bridge) -> None:
    t = bridge.target
    assert t.pending >= 0 and t.free >= 0
    assert t.pending + len(bridge.holds) <= bridge.window, (t.pending, bridge.holds)
    assert outstanding(world, bridge) <= bridge.window
    assert t.free + t.pending + len(bridge.holds) <= bridge.window


def test_rounds_and_creates_together_never_exceed_the_window(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        bridge = ready_bridge(world, window=3)
        now = T0
        # Fill the window with claims at create; the fourth waits.
        got = [bridge.send(new_message(device_id=bridge.dev), now) for _ in range(4)]
        assert [c for _, c in got] == [True, True, True, False]
        check_window(world, bridge)
        assert (bridge.target.free, bridge.target.pending) == (0, 3)
        # A round before the session sent them: no room.
        assert bridge.round(now) == []
        check_window(world, bridge)
        assert bridge.holds == {m for m, _ in got[:3]} and bridge.target.free == 0
        # One accepted: the round and a create race for the one slot.
        bridge.accept(got[0][0], now)
        assert bridge.target.free == 1
        late, claimed = bridge.send(new_message(device_id=bridge.dev), now)
        assert not claimed  # the fourth waits in the queue: FIFO
        [unit] = bridge.round(now)
        assert unit.message.id == got[3][0]
        check_window(world, bridge)
        # A create lands between a round's commit and the session's keeping its queue.
        bridge.accept(got[1][0], now)
        bridge.accept(got[2][0], now)
        extra: list[tuple[str, bool]] = []
        bridge.round(now, before_keep=lambda: extra.append(bridge.send(new_message(device_id=bridge.dev), now)))
        check_window(world, bridge)
        bridge.send_handed()
        check_window(world, bridge)

        # Then a seeded random interleaving of sends, rounds (with a create right after the
        # commit sometimes), Delivers handed over, accepts and reloads.
        rnd = random.Random(15)
        for step in range(300):
            action = rnd.choice(["send", "send", "round", "round_race", "handed", "accept", "accept", "reload", "busy_send", "drain"])
            if action == "send":
                bridge.send(new_message(device_id=bridge.dev, priority=rnd.choice([0, 0, 5])), now)
            elif action == "busy_send" and bridge.target.queue is not None:
                bridge.target.queue.busy = True  # a round is under way in the writer
                bridge.send(new_message(device_id=bridge.dev), now)
                bridge.target.queue.busy = False
            elif action == "round":
                bridge.round(now)
            elif action == "round_race":
                bridge.round(now, before_keep=lambda: bridge.send(new_message(device_id=bridge.dev), now))
            elif action == "handed":
                bridge.send_handed()
            elif action == "accept" and bridge.holds:
                bridge.accept(rnd.choice(sorted(bridge.holds)), now)
                if rnd.random() < 0.7:
                    bridge.round(now)  # the receipt freed room the last round lacked: poke
            elif action == "reload":
                bridge.reload = True
            elif action == "drain":  # the phone catches up: it accepts all it holds, rounds send the rest
                for _ in range(3):
                    bridge.send_handed()
                    for mid in sorted(bridge.holds):
                        bridge.accept(mid, now)
                    bridge.round(now)
            check_window(world, bridge)
            now += timedelta(milliseconds=10)
        assert bridge.by_create >= 12 and bridge.by_round >= 12, (bridge.by_create, bridge.by_round)
        # Drain: everything is sent once, and nothing is left.
        for _ in range(200):
            bridge.send_handed()
            for mid in sorted(bridge.holds):
                bridge.accept(mid, now)
            bridge.reload = True
            bridge.round(now)
            check_window(world, bridge)
            if not bridge.holds and bridge.target.pending == 0 and not bridge.target.handed:
                if all(m.state != P for m in snapshot(world.db).values()):
                    break
        snaps = snapshot(world.db)
        assert all(m.states == tuple(A for _ in m.recipients) for m in snaps.values()), "something never went out"
        assert len(bridge.sent_ids) == len(set(bridge.sent_ids)) == len(snaps), "a message was sent twice"
    finally:
        world.db.close()


# ---- memory behind storage ---------------------------------------------------------------------


def test_a_send_after_one_stored_during_a_round_does_not_overtake_it(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)  # unpaced: only the order decides
    try:
        _overtaken(world)
    finally:
        world.db.close()


def _overtaken(world: World) -> None:
    bridge = ready_bridge(world)
    # The writer is busy; the session's round and then a SendMessage (A) queue for it, in one group:
    # the round marks the queue busy, so A is stored PENDING (not claimed) and named to the session.
    (kept, batch), (a, _, a_claimed) = in_one_group(
        world,
        lambda: bridge.repo.dispatch_round(bridge.queue, bridge.dev, "s1", 3, T0, set(), set(), bridge.target),
        lambda: world.repo.create_claimed(world.owner, new_message(device_id=bridge.dev), T0),
    )
    assert not a_claimed
    bridge.fresh.add(a.id)  # notify_queued
    assert batch.units == []
    assert kept is not None
    kept.busy = False  # the session clears busy and keeps its queue; its next round has not run yet
    bridge.target.keep(kept)
    # B, sent a moment later, while A waits in storage for the session's next round.
    t1 = T0 + 3 * SEC
    b, b_claimed = bridge.send(new_message(device_id=bridge.dev), t1)
    # The session wakes: it sends what was handed over first, then runs its round.
    bridge.send_handed()
    bridge.round(t1)
    order = ["A" if m == a.id else "B" if m == b else m for m in bridge.sent_ids]
    assert order == ["A", "B"], f"sent {order}: B (claimed at create: {b_claimed}) overtook A"


def test_a_create_during_a_reload_round_respects_pacing(world: World) -> None:
    bridge = ready_bridge(world)
    # A message reaches the phone's storage without passing through its memory (a reroute or an
    # adoption, after which the session is woken with a reload).
    world.repo.claims, claims = None, world.repo.claims
    a = world.repo.create(world.owner, new_message(device_id=bridge.dev), T0)[0]
    world.repo.claims = claims
    bridge.reload = True
    t1 = T0 + 10 * SEC
    late: list[tuple[str, bool]] = []
    [unit] = bridge.round(t1, before_keep=lambda: late.append(bridge.send(new_message(device_id=bridge.dev), t1 + SEC)))
    assert unit.message.id == a.id
    [(b, b_claimed)] = late
    # A went at t1 on SIM 1; the interval is 2.5 s, so B (t1 + 1 s) must wait.
    assert not b_claimed, "B claimed 1 s after A on the same SIM (min interval 2.5 s)"
