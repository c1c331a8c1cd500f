"""The dispatch scheduler (issue 4) at the repository level: order, SIM rotation, pacing
windows, caps, priority bypass, schedules, expiry, retries by failure class, multipart.

A real SQLite file (gateway.storage.engine.Database) and injected `now` datetimes: no
wall clock anywhere.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import SchedulerSettings
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound
from gateway.messages.pacing import PHONE_WINDOW, DevicePacing, SimLimits
from gateway.messages.records import DispatchBatch, HeldRecipient, ReceiptUpdate
from gateway.messages.repository import pacing_defaults
from gateway.storage.models import DispatchLogRow
from gateway.types import State
from tests.helpers.accounts import create_owner
from tests.unit.gateway.test_gw_repository import UNPACED, World, ids, new_message

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
P, D, A, S = State.PENDING, State.DISPATCHED, State.ACCEPTED, State.SENT
DL, F, E, C = State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED
PACED = SchedulerSettings()  # 24 parts/min, 2.5 s apart per SIM, 27 parts/min per phone
SEC = timedelta(seconds=1)
# Windows are closed like Android's, [now - span, now]: a send leaves one a tick after at + span.
TICK = timedelta(milliseconds=1)
MINUTE = timedelta(minutes=1) + TICK


def only_limits(**limits: int) -> SchedulerSettings:
    """Pacing with nothing but the named limits (everything else 0)."""
    base = {"sim_parts_per_minute": 0, "sim_min_interval": 0, "phone_parts_per_minute": 0}
    return SchedulerSettings(**{**base, **limits})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, scheduler=PACED)
    try:
        yield w
    finally:
        w.db.close()


def make_world(tmp_path: Path, scheduler: SchedulerSettings, devices: int = 1) -> World:
    return World(tmp_path, devices, scheduler=scheduler)


def sims_of(batch: DispatchBatch) -> list[tuple[str, int]]:
    return [(u.message.id, u.sim) for u in batch.units]


def states(world: World, mid: str) -> list[State]:
    return [r.state for r in world.repo.get(world.owner, mid).recipients]


# ---- order and SIM choice -----------------------------------------------------------------


def test_priority_then_fifo_never_lifo(world: World) -> None:
    """One SIM, one send per round (the 2.5 s interval): priority first, then creation order,
    also among messages created in the same millisecond."""
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1,))
    made = [
        repo.create(owner, new_message(device_id=dev, priority=p), T0)[0]
        for p in (0, -5, 0, 9, 0, 9, 0, 0, 0, 0)
    ]
    expected = [m.id for m in sorted(made, key=lambda m: -m.priority)]  # stable: FIFO within a priority
    assert [m.id for m in made] == sorted(m.id for m in made)  # ids follow creation
    got: list[str] = []
    now = T0
    for _ in range(len(made) + 3):
        batch = repo.dispatch(dev, "s1", 10, now)
        assert len(batch.units) <= 1
        got += ids(batch)
        if batch.wake_at is None:
            break
        now = batch.wake_at
    assert got == expected


def test_two_sims_rotate_by_earliest_free_slot_then_least_recently_used(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1, 2))
    a, b, c, d = (repo.create(owner, new_message(device_id=dev), T0)[0] for _ in range(4))
    first = repo.dispatch(dev, "s1", 10, T0)
    # Both free: SIM 1 (never used, lowest slot) then SIM 2 (SIM 1 must wait 2.5 s now).
    assert sims_of(first) == [(a.id, 1), (b.id, 2)]
    assert first.wake_at == T0 + timedelta(seconds=2.5)
    assert repo.get(owner, c.id).recipients[0].next_attempt_at == first.wake_at
    second = repo.dispatch(dev, "s1", 10, T0 + SEC)
    assert second.units == [] and second.wake_at == T0 + timedelta(seconds=2.5)
    # Both free again, both last used at T0: the lower slot first.
    third = repo.dispatch(dev, "s1", 10, T0 + timedelta(seconds=2.5))
    assert sims_of(third) == [(c.id, 1), (d.id, 2)]
    assert [r.sim for r in repo.get(owner, a.id).recipients] == [1]
    # Least recently used wins a tie of free SIMs: SIM 2 sent last.
    e, f = (repo.create(owner, new_message(device_id=dev), T0)[0] for _ in range(2))
    g = repo.create(owner, new_message(device_id=dev, sim_number=2), T0)[0]
    assert sims_of(repo.dispatch(dev, "s1", 1, T0 + timedelta(seconds=5))) == [(e.id, 1)]
    later = T0 + timedelta(seconds=6)
    assert sims_of(repo.dispatch(dev, "s1", 10, later)) == [(f.id, 2)]  # SIM 1 sent at 5 s, SIM 2 at 2.5 s
    # g is pinned to SIM 2: it waits for it though SIM 1 frees first.
    batch = repo.dispatch(dev, "s1", 10, T0 + timedelta(seconds=7.5))
    assert batch.units == [] and batch.wake_at == T0 + timedelta(seconds=8.5)
    assert sims_of(repo.dispatch(dev, "s1", 10, T0 + timedelta(seconds=8.5))) == [(g.id, 2)]


def test_pinned_sim_waits_without_blocking_the_other_sim(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1, 2))
    first = repo.create(owner, new_message(device_id=dev, sim_number=2), T0)[0]
    pinned = repo.create(owner, new_message(device_id=dev, sim_number=2), T0)[0]
    free = repo.create(owner, new_message(device_id=dev), T0)[0]
    batch = repo.dispatch(dev, "s1", 10, T0)
    assert sims_of(batch) == [(first.id, 2), (free.id, 1)]
    assert batch.wake_at == T0 + timedelta(seconds=2.5)
    assert sims_of(repo.dispatch(dev, "s1", 10, T0 + timedelta(seconds=2.5))) == [(pinned.id, 2)]


def test_sim_not_in_the_phone_fails(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1, 2))
    missing = repo.create(owner, new_message(2, device_id=dev, sim_number=3), T0)[0]
    ok = repo.create(owner, new_message(device_id=dev, sim_number=1), T0)[0]
    batch = repo.dispatch(dev, "s1", 10, T0)
    assert ids(batch) == [ok.id]
    got = repo.get(owner, missing.id)
    assert got.state == F
    assert all(r.error.startswith("sim_not_present") for r in got.recipients)
    assert got.last_error.startswith("sim_not_present")


# ---- pacing windows -----------------------------------------------------------------------


def _max_in_window(sends: list[tuple[datetime, int]], span: timedelta) -> int:
    """The most parts in any closed interval [t, t + span] (as Android counts)."""
    sends = sorted(sends)
    best = 0
    for i, (t, _) in enumerate(sends):
        best = max(best, sum(p for u, p in sends[i:] if u <= t + span))
    return best


def test_ten_minutes_of_rounds_never_exceed_the_windows(tmp_path: Path) -> None:
    """Mixed 1-4 part messages on two SIMs, dispatch rounds at random moments and at the
    reported wake-ups for 10 simulated minutes: no 60 s window of a SIM holds more than 24
    parts, two sends of a SIM are >= 2.5 s apart, the phone never passes 27 parts a minute,
    and the phone is kept reasonably busy."""
    world = make_world(tmp_path, PACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1", sims=(1, 2))
        rnd = random.Random(27)
        for i in range(160):
            pin = rnd.choice([0, 0, 0, 1, 2])
            repo.create(owner, new_message(device_id=dev, parts=rnd.randint(1, 4), sim_number=pin, priority=rnd.choice([0, 0, 1])), T0)
        sends: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
        now, end = T0, T0 + timedelta(minutes=10)
        rounds = 0
        while now < end:
            batch = repo.dispatch(dev, "s1", rnd.randint(1, 6), now)
            rounds += 1
            for u in batch.units:
                assert u.sim in (1, 2) and (u.message.sim_number in (0, u.sim))
                sends[u.sim].append((now, max(u.message.parts, 1) * len(u.recipient_indices)))
                # The phone takes and sends it at once: nothing stays in flight.
                repo.apply_receipts(dev, [ReceiptUpdate(u.message.id, S, i) for i in u.recipient_indices], now)
            step = timedelta(milliseconds=rnd.randint(100, 4000))
            if batch.wake_at is not None:
                assert batch.wake_at > now
                step = min(step, batch.wake_at - now)
            now += step
        assert rounds > 100
        for sim, got in sends.items():
            assert _max_in_window(got, timedelta(minutes=1)) <= 24, sim
            times = sorted(t for t, _ in got)
            assert all(b - a >= timedelta(seconds=2.5) for a, b in zip(times, times[1:], strict=False)), sim
        everything = [x for got in sends.values() for x in got]
        assert _max_in_window(everything, timedelta(minutes=1)) <= 27
        total = sum(p for _, p in everything)
        assert total >= 200, total  # 27/min over 10 min is 270: pacing waits, but not needlessly
        # The dispatch log holds what pacing counted.
        with world.db.read() as s:
            logged = sum(r.parts for r in s.exec(DispatchLogRow.__table__.select()).all())  # type: ignore[attr-defined]
        assert logged == total
    finally:
        world.db.close()


def test_waiting_recipients_show_next_attempt_and_the_round_its_wake_up(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1,))
    big = [repo.create(owner, new_message(device_id=dev, parts=4), T0)[0] for _ in range(8)]
    now, sent = T0, 0
    while True:
        batch = repo.dispatch(dev, "s1", 10, now)
        sent += len(batch.units)
        if batch.wake_at is None or batch.wake_at >= T0 + timedelta(seconds=60):
            break
        now = batch.wake_at
    assert sent == 6  # 6 x 4 parts = the 24 parts of a minute
    head = repo.get(owner, big[6].id)
    # The SIM's window frees at 60 s, the phone's (27 parts, counted over 62 s) just after 62 s.
    assert head.state == P and head.next_attempt_at == batch.wake_at == T0 + PHONE_WINDOW + TICK
    assert head.recipients[0].next_attempt_at == T0 + PHONE_WINDOW + TICK
    assert repo.get(owner, big[5].id).next_attempt_at is None  # dispatched: not waiting
    assert repo.dispatch(dev, "s1", 10, T0 + PHONE_WINDOW).units == []  # exactly at the edge: still counted
    assert ids(repo.dispatch(dev, "s1", 10, T0 + PHONE_WINDOW + TICK)) == [big[6].id]


def test_oversized_message_waits_for_an_empty_window_and_is_not_overtaken(tmp_path: Path) -> None:
    world = make_world(tmp_path, only_limits(sim_parts_per_minute=3))
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1", sims=(1,))
        one = repo.create(owner, new_message(device_id=dev), T0)[0]
        huge = repo.create(owner, new_message(device_id=dev, parts=5), T0)[0]
        small = repo.create(owner, new_message(device_id=dev), T0)[0]
        batch = repo.dispatch(dev, "s1", 10, T0)
        assert ids(batch) == [one.id] and batch.wake_at == T0 + MINUTE
        assert ids(repo.dispatch(dev, "s1", 10, T0 + MINUTE)) == [huge.id]
        assert ids(repo.dispatch(dev, "s1", 10, T0 + 2 * MINUTE)) == [small.id]
    finally:
        world.db.close()


def test_per_hour_and_per_day_caps(tmp_path: Path) -> None:
    world = make_world(tmp_path, only_limits(sim_parts_per_hour=5, sim_parts_per_day=7))
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1", sims=(1,))
        msgs = [repo.create(owner, new_message(device_id=dev), T0)[0] for _ in range(9)]
        first = repo.dispatch(dev, "s1", 3, T0)
        second = repo.dispatch(dev, "s1", 10, T0 + timedelta(minutes=10))
        assert ids(first) + ids(second) == [m.id for m in msgs[:5]]
        assert second.wake_at == T0 + timedelta(hours=1) + TICK  # the three sent at T0 leave the hour window
        assert repo.dispatch(dev, "s1", 10, T0 + timedelta(minutes=59)).units == []
        assert repo.dispatch(dev, "s1", 10, T0 + timedelta(hours=1)).units == []
        third = repo.dispatch(dev, "s1", 10, T0 + timedelta(hours=1) + TICK)
        assert ids(third) == [m.id for m in msgs[5:7]]  # the day cap: 7 in all
        assert third.wake_at == T0 + timedelta(days=1) + TICK
        assert repo.dispatch(dev, "s1", 10, T0 + timedelta(hours=5)).units == []
        # A day after the first three: four in the day window, room for the last two.
        assert ids(repo.dispatch(dev, "s1", 10, T0 + timedelta(days=1) + TICK)) == [msgs[7].id, msgs[8].id]
    finally:
        world.db.close()


def test_distinct_recipients_per_month_cap(tmp_path: Path) -> None:
    """Two distinct numbers a month: a third waits for the next month, but does not hold
    back messages to numbers already counted."""
    world = make_world(tmp_path, only_limits(sim_recipients_per_month=2))
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1", sims=(1,))
        a, b, c, a2, b2 = "+14155550001", "+14155550002", "+14155550003", "+14155550001", "+14155550002"
        m = [repo.create(owner, new_message(device_id=dev, numbers=[n]), T0)[0] for n in (a, b, c, a2)]
        batch = repo.dispatch(dev, "s1", 10, T0)
        assert ids(batch) == [m[0].id, m[1].id, m[3].id]
        next_month = datetime(2030, 2, 1, tzinfo=UTC)
        assert batch.wake_at == next_month
        assert repo.get(owner, m[2].id).next_attempt_at == next_month
        later = repo.create(owner, new_message(device_id=dev, numbers=[b2]), T0)[0]
        assert ids(repo.dispatch(dev, "s1", 10, T0 + timedelta(days=3))) == [later.id]
        assert ids(repo.dispatch(dev, "s1", 10, next_month)) == [m[2].id]
        # February counts c. One message to c, a second and a third new number: the third waits.
        mixed = repo.create(owner, new_message(device_id=dev, numbers=[c, "+14155550009", "+14155550010"]), next_month)[0]
        got = repo.dispatch(dev, "s1", 10, next_month + SEC)
        assert [(u.message.id, u.recipient_indices) for u in got.units] == [(mixed.id, (0, 1))]
        assert got.wake_at == datetime(2030, 3, 1, tzinfo=UTC)
        assert repo.get(owner, mixed.id).recipients[2].next_attempt_at == got.wake_at
    finally:
        world.db.close()


def test_month_cap_counts_per_sim_and_rotation_uses_the_sim_with_room(tmp_path: Path) -> None:
    world = make_world(tmp_path, only_limits(sim_recipients_per_month=1))
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1", sims=(1, 2))
        x = repo.create(owner, new_message(device_id=dev, numbers=["+14155550001"]), T0)[0]
        y = repo.create(owner, new_message(device_id=dev, numbers=["+14155550002"]), T0)[0]
        z = repo.create(owner, new_message(device_id=dev, numbers=["+14155550003"]), T0)[0]
        batch = repo.dispatch(dev, "s1", 10, T0)
        assert sims_of(batch) == [(x.id, 1), (y.id, 2)]
        assert repo.get(owner, z.id).state == P
    finally:
        world.db.close()


def test_priority_bypass_only_where_the_device_allows_it(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1,))
    normal = repo.create(owner, new_message(device_id=dev), T0)[0]
    urgent = repo.create(owner, new_message(device_id=dev, priority=100), T0)[0]
    urgent2 = repo.create(owner, new_message(device_id=dev, priority=100), T0)[0]
    # Not allowed (the default): priority only orders.
    assert ids(repo.dispatch(dev, "s1", 10, T0)) == [urgent.id]
    assert repo.dispatch(dev, "s1", 10, T0 + SEC).units == []
    # Allowed on this phone: >= 100 skips the SIM's interval and windows ...
    base = pacing_defaults(PACED)
    repo.set_device_pacing(owner, dev, DevicePacing(base.default, {}, 5, priority_bypass=True))
    assert ids(repo.dispatch(dev, "s1", 10, T0 + 2 * SEC)) == [urgent2.id]
    assert repo.dispatch(dev, "s1", 10, T0 + 3 * SEC).units == []  # priority 0: paced
    # ... but never the phone's cap (5 parts a minute here).
    big = repo.create(owner, new_message(device_id=dev, priority=150, parts=4), T0)[0]
    batch = repo.dispatch(dev, "s1", 10, T0 + 3 * SEC)
    assert batch.units == [] and batch.wake_at == T0 + PHONE_WINDOW + TICK  # counted over 62 s
    assert ids(repo.dispatch(dev, "s1", 10, T0 + PHONE_WINDOW + TICK)) == [big.id]
    assert ids(repo.dispatch(dev, "s1", 10, T0 + timedelta(seconds=65))) == [normal.id]  # 2.5 s after big


# ---- schedule, reschedule, cancel -----------------------------------------------------------


def test_schedule_at_holds_until_due_and_reschedule_moves_it(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1,))
    at = T0 + timedelta(minutes=5)
    m = repo.create(owner, new_message(device_id=dev, schedule_at=at, valid_until=T0 + timedelta(hours=1)), T0)[0]
    assert m.schedule_at == at and m.next_attempt_at == at
    batch = repo.dispatch(dev, "s1", 10, T0)
    assert batch.units == [] and batch.wake_at == at
    record, device = repo.reschedule(owner, m.id, T0 + timedelta(minutes=2), T0 + SEC)
    assert device == dev and record.next_attempt_at == T0 + timedelta(minutes=2)
    assert repo.dispatch(dev, "s1", 10, T0 + timedelta(minutes=1)).wake_at == T0 + timedelta(minutes=2)
    with pytest.raises(InvalidArgument):
        repo.reschedule(owner, m.id, T0 + timedelta(hours=2), T0 + SEC)  # after valid_until
    with pytest.raises(NotFound):
        repo.reschedule(create_owner(world.db, "other", T0), m.id, None, T0)
    record, _ = repo.reschedule(owner, m.id, None, T0 + timedelta(minutes=1))  # send now
    assert record.schedule_at is None and record.next_attempt_at is None
    assert ids(repo.dispatch(dev, "s1", 10, T0 + timedelta(minutes=1))) == [m.id]
    with pytest.raises(FailedPrecondition):
        repo.reschedule(owner, m.id, at, T0 + timedelta(minutes=1))  # dispatched: too late
    assert repo.get(owner, m.id).state == D


def test_cancel_a_scheduled_message(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1,))
    m = repo.create(owner, new_message(2, device_id=dev, schedule_at=T0 + timedelta(minutes=5)), T0)[0]
    record, device = repo.cancel(owner, m.id, T0 + SEC)
    assert record.state == C and device == dev  # its session takes it out of its queue
    assert repo.dispatch(dev, "s1", 10, T0 + timedelta(minutes=6)).units == []
    with pytest.raises(FailedPrecondition):
        repo.reschedule(owner, m.id, None, T0 + timedelta(minutes=6))


# ---- expiry ---------------------------------------------------------------------------------


def test_expiry_of_pending_dispatched_and_accepted_recipients(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        until = T0 + timedelta(minutes=1)
        dispatched = repo.create(owner, new_message(device_id=dev, valid_until=until, priority=2), T0)[0]
        accepted = repo.create(owner, new_message(device_id=dev, valid_until=until, priority=1), T0)[0]
        assert ids(repo.dispatch(dev, "s1", 2, T0)) == [dispatched.id, accepted.id]
        repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, A, 0)], T0)
        pending = repo.create(owner, new_message(device_id=dev, valid_until=until), T0)[0]
        # No expire_due ran: the dispatch round expires them itself, never sends them, and
        # tells the phone to drop the two it may hold.
        batch = repo.dispatch(dev, "s1", 10, until)
        assert batch.units == []
        assert batch.drops == {dispatched.id: E, accepted.id: E}
        assert [world.state(x.id) for x in (dispatched, accepted, pending)] == [E, E, E]
        assert repo.dispatch(dev, "s1", 10, until + SEC).drops == {}  # told once per session
        # The phone reconnects still holding two of them: they stay EXPIRED, and final_states
        # (the bridge's Drop after Hello) names them.
        world.online(dev, "s2", held=[dispatched.id, accepted.id], now=until + 2 * SEC)
        assert [world.state(x.id) for x in (dispatched, accepted)] == [E, E]
        assert repo.final_states(dev, [dispatched.id, accepted.id, pending.id]) == {
            dispatched.id: E, accepted.id: E, pending.id: E
        }
        assert repo.dispatch(dev, "s2", 10, until + 3 * SEC).units == []
        # A late ACCEPTED changes nothing (the phone obeys the Drop); a late SENT is the
        # phone's truth and moves the recipient on (test_gw_phone_truth.py).
        assert repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, S, 0), ReceiptUpdate(dispatched.id, A, 0)], until) == 1
        assert [world.state(x.id) for x in (dispatched, accepted)] == [E, S]
    finally:
        world.db.close()


def test_expired_while_waiting_for_pacing_is_never_sent(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    world.online(dev, "s1", sims=(1,))
    first = repo.create(owner, new_message(device_id=dev), T0)[0]
    short = repo.create(owner, new_message(device_id=dev, valid_until=T0 + SEC), T0)[0]
    assert ids(repo.dispatch(dev, "s1", 10, T0)) == [first.id]
    batch = repo.dispatch(dev, "s1", 10, T0 + timedelta(seconds=2.5))
    assert batch.units == [] and batch.drops == {}  # never dispatched: nothing to drop
    assert world.state(short.id) == E


# ---- retries by failure class ---------------------------------------------------------------


def _dispatched(world: World, parts: int = 1, n: int = 1) -> str:
    repo, dev = world.repo, world.device_ids[0]
    m = repo.create(world.owner, new_message(n, device_id=dev, parts=parts), T0)[0]
    assert m.id in ids(repo.dispatch(dev, "s1", 10, T0))
    repo.apply_receipts(dev, [ReceiptUpdate(m.id, A, 0)], T0)
    return m.id


@pytest.mark.parametrize("cls", ["limit_exceeded", "no_service", "radio_off"])
def test_retryable_failure_goes_back_to_pending_with_backoff(tmp_path: Path, cls: str) -> None:
    settings = SchedulerSettings(sim_parts_per_minute=0, sim_min_interval=0, phone_parts_per_minute=0, max_attempts=3, retry_base=30, retry_max=100)
    world = make_world(tmp_path, settings)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world)
        now = T0 + SEC
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, "radio said no", attempt=1, failure_class=cls)], now) == 1
        got = repo.get(owner, mid)
        r = got.recipients[0]
        assert (r.state, r.attempt, got.attempts) == (P, 2, 2)
        assert r.last_error == got.last_error == f"{cls}: radio said no" and r.error == ""
        assert r.next_attempt_at is not None
        assert 24 <= (r.next_attempt_at - now).total_seconds() <= 36  # 30 s +-20 %
        # A stale report of attempt 1 changes nothing; one for the current attempt would.
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, S, 0, attempt=1), ReceiptUpdate(mid, F, 0, attempt=1, failure_class="blocked")], now) == 0
        assert repo.get(owner, mid).recipients[0].state == P
        batch = repo.dispatch(dev, "s1", 10, now)
        assert batch.units == [] and batch.wake_at == r.next_attempt_at
        unit = repo.dispatch(dev, "s1", 10, r.next_attempt_at).units[0]
        assert (unit.message.id, unit.attempt, unit.recipient_indices) == (mid, 2, (0,))
        # Attempt 2 fails the same way: attempt 3, after 4 x the base (120 s, capped at 100).
        later = r.next_attempt_at + SEC
        repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, attempt=2, failure_class=cls)], later)
        r = repo.get(owner, mid).recipients[0]
        assert (r.state, r.attempt) == (P, 3)
        assert r.next_attempt_at is not None and 80 <= (r.next_attempt_at - later).total_seconds() <= 120
        assert repo.dispatch(dev, "s1", 10, r.next_attempt_at).units[0].attempt == 3
        # max_attempts reached: the third failure is final.
        repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, attempt=3, failure_class=cls)], r.next_attempt_at)
        got = repo.get(owner, mid)
        assert got.state == F and got.attempts == 3 and got.recipients[0].error == cls
        events = [(e.state, e.error) for e in repo.events_after(owner, 0, limit=100, message_ids=[mid])]
        assert [s for s, _ in events] == [P, D, A, P, D, A, P, D, A, F]
        assert events[3][1] == f"retry 2 of 3 after {cls}: radio said no"
    finally:
        world.db.close()


@pytest.mark.parametrize("cls", ["invalid_number", "blocked", "decrypt_failed", "generic_failure", ""])
def test_final_failure_classes_fail_at_once(tmp_path: Path, cls: str) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world)
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, failure_class=cls)], T0) == 1
        got = repo.get(owner, mid)
        assert got.state == F and got.attempts == 1
        assert got.recipients[0].error == (cls or "generic_failure")
        assert repo.dispatch(dev, "s1", 10, T0 + timedelta(hours=1)).units == []
    finally:
        world.db.close()


def test_failure_after_a_part_went_out_is_never_retried(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world, parts=3, n=2)
        receipts = [
            ReceiptUpdate(mid, F, 0, failure_class="no_service", parts_done=1),  # a part went out
            ReceiptUpdate(mid, S, 1),
            ReceiptUpdate(mid, F, 1, failure_class="no_service"),  # after SENT: final as well
        ]
        assert repo.apply_receipts(dev, receipts, T0) == 3
        got = repo.get(owner, mid)
        assert [(r.state, r.attempt) for r in got.recipients] == [(F, 1), (F, 1)]
        assert got.recipients[0].parts_sent == 1
        # A late FAILED for a failed recipient does not touch it.
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, "late", failure_class="blocked")], T0) == 0
        assert repo.get(owner, mid).recipients[0].last_error == got.recipients[0].last_error
    finally:
        world.db.close()


def test_retry_of_one_recipient_leaves_the_others_alone(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world, n=2)
        repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 1, failure_class="radio_off"), ReceiptUpdate(mid, S, 0)], T0)
        got = repo.get(owner, mid)
        assert [(r.state, r.attempt) for r in got.recipients] == [(S, 1), (P, 2)]
        assert got.state == P and got.next_attempt_at == got.recipients[1].next_attempt_at
        # The phone reconnects holding attempt 1 of recipient 1: stale, it stays PENDING.
        world.online(dev, "s2", held=[HeldRecipient(mid, 1, 1)], now=T0 + SEC)
        assert repo.get(owner, mid).recipients[1].state == P
        due = got.recipients[1].next_attempt_at
        assert due is not None
        unit = repo.dispatch(dev, "s2", 10, due).units[0]
        assert (unit.recipient_indices, unit.attempt) == ((1,), 2)
        # Held at the current attempt after a lost session: ACCEPTED.
        repo.close_session(dev, "s2", due)
        world.online(dev, "s3", held=[HeldRecipient(mid, 1, 2)], now=due)
        assert [r.state for r in repo.get(owner, mid).recipients] == [S, A]
    finally:
        world.db.close()


# ---- multipart ------------------------------------------------------------------------------


def test_multipart_one_event_per_recipient_state_and_visible_part_counts(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world, parts=3)

        def counts() -> tuple[State, int, int]:
            r = repo.get(owner, mid).recipients[0]
            return r.state, r.parts_sent, r.parts_delivered

        assert repo.get(owner, mid).parts == 3
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, S, 0, parts_done=1)], T0) == 0
        assert counts() == (A, 1, 0)
        # A delivery report of part 1 before part 2 is sent: parts_sent stays honest.
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, DL, 0, parts_done=1)], T0) == 0
        assert counts() == (A, 1, 1)
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, S, 0, parts_done=2)], T0) == 0
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, S, 0, parts_done=3)], T0) == 1
        assert counts() == (S, 3, 1)
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, S, 0, parts_done=3)], T0) == 0  # repeated
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, DL, 0, parts_done=2)], T0) == 0
        assert counts() == (S, 3, 2)
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, DL, 0, parts_done=3), ReceiptUpdate(mid, DL, 0, parts_done=1)], T0) == 1
        assert counts() == (DL, 3, 3)
        events = [e.state for e in repo.events_after(owner, 0, limit=100, message_ids=[mid])]
        assert events == [P, D, A, S, DL]
    finally:
        world.db.close()


def test_multipart_failed_part_fails_the_recipient(tmp_path: Path) -> None:
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world, parts=2)
        repo.apply_receipts(dev, [ReceiptUpdate(mid, S, 0, parts_done=1)], T0)
        repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, failure_class="generic_failure", parts_done=1)], T0)
        r = repo.get(owner, mid).recipients[0]
        assert (r.state, r.parts_sent, r.parts_delivered) == (F, 1, 0)
        events = [e.state for e in repo.events_after(owner, 0, limit=100, message_ids=[mid])]
        assert events == [P, D, A, F]
    finally:
        world.db.close()


# ---- device pacing overrides and the dispatch log ---------------------------------------------


def test_device_pacing_overrides(world: World) -> None:
    repo, owner, dev = world.repo, world.owner, world.device_ids[0]
    base = pacing_defaults(PACED)
    assert repo.pacing_of(dev) == base == repo.device_pacing(owner, dev)
    assert base.default == SimLimits(24, 2500, 0, 0, 0) and base.phone_parts_per_minute == 27
    custom = DevicePacing(SimLimits(10, 1000), {2: SimLimits(0, 0, 0, 0, 0)}, 20, priority_bypass=True)
    assert DevicePacing.from_json(custom.to_json(), base) == custom
    assert DevicePacing.from_json("{}", base) == base == DevicePacing.from_json("", base)
    assert repo.set_device_pacing(owner, dev, custom) == custom
    assert repo.pacing_of(dev) == custom == repo.device_pacing(owner, dev)
    with pytest.raises(NotFound):
        repo.set_device_pacing(create_owner(world.db, "other", T0), dev, custom)
    with pytest.raises(NotFound):
        repo.device_pacing(owner, "no-such-device")

    # The overrides take effect: SIM 2 is unpaced (up to the phone's 20), SIM 1 1 s apart.
    world.online(dev, "s1", sims=(1, 2))
    on2 = [repo.create(owner, new_message(device_id=dev, sim_number=2), T0)[0] for _ in range(3)]
    on1 = [repo.create(owner, new_message(device_id=dev, sim_number=1), T0)[0] for _ in range(2)]
    # One Deliver per message per round; SIM 2 has no interval.
    batch = repo.dispatch(dev, "s1", 10, T0)
    assert sims_of(batch) == [(on2[0].id, 2), (on2[1].id, 2), (on2[2].id, 2), (on1[0].id, 1)]
    assert batch.wake_at == T0 + SEC
    # A waiting recipient's pacing stamp is dropped when the settings change.
    assert repo.get(owner, on1[1].id).next_attempt_at == T0 + SEC
    assert repo.set_device_pacing(owner, dev, None) == base
    assert repo.get(owner, on1[1].id).next_attempt_at is None
    assert repo.pacing_of(dev) == base


def test_prune_dispatch_log(tmp_path: Path) -> None:
    world = make_world(tmp_path, PACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1", sims=(1,))
        for i in range(3):
            repo.create(owner, new_message(device_id=dev), T0)
        for i in range(3):
            assert len(repo.dispatch(dev, "s1", 10, T0 + i * MINUTE).units) == 1
        assert repo.prune_dispatch_log(T0) == 0
        assert repo.prune_dispatch_log(T0 + timedelta(seconds=90)) == 2
        assert repo.prune_dispatch_log(T0 + timedelta(seconds=90)) == 0
        with world.db.read() as s:
            left = s.exec(DispatchLogRow.__table__.select()).all()  # type: ignore[attr-defined]
        assert len(left) == 1
    finally:
        world.db.close()


def test_message_ids_grow_within_a_millisecond() -> None:
    """FIFO is by id: ids made in a burst must sort in creation order (python-ulid >= 4 makes
    them monotonic within a millisecond; with plain random ULIDs this fails)."""
    from ulid import ULID

    made = [str(ULID()) for _ in range(2000)]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_review_fixes_replays_partial_sends_and_reschedule_of_a_retry(tmp_path: Path) -> None:
    """A replayed "attempt 0" receipt never claims a retry waiting for its backoff; a failure
    reported after an earlier SENT of part 1 is final; a retry cannot be rescheduled."""
    world = make_world(tmp_path, UNPACED)
    try:
        repo, owner, dev = world.repo, world.owner, world.device_ids[0]
        world.online(dev, "s1")
        mid = _dispatched(world)
        assert repo.apply_receipts(dev, [ReceiptUpdate(mid, F, 0, failure_class="no_service")], T0) == 1
        assert repo.get(owner, mid).recipients[0].state == P
        # The phone lost the Ack and replays its receipts without an attempt: nothing moves.
        replay = [ReceiptUpdate(mid, A, 0), ReceiptUpdate(mid, A, 0, recipient_indices=(0,)),
                  ReceiptUpdate(mid, F, 0, failure_class="no_service")]
        assert repo.apply_receipts(dev, replay, T0 + SEC) == 0
        r = repo.get(owner, mid).recipients[0]
        assert (r.state, r.attempt) == (P, 2)
        with pytest.raises(FailedPrecondition):  # it was handed to a phone: the backoff stands
            repo.reschedule(owner, mid, None, T0 + SEC)

        multi = _dispatched(world, parts=3)
        repo.apply_receipts(dev, [ReceiptUpdate(multi, S, 0, attempt=1, parts_done=1)], T0)
        # This FAILED says parts_done 0, but part 1 went out already: final, never retried.
        repo.apply_receipts(dev, [ReceiptUpdate(multi, F, 0, attempt=1, failure_class="radio_off")], T0)
        got = repo.get(owner, multi).recipients[0]
        assert (got.state, got.attempt, got.parts_sent) == (F, 1, 1)
    finally:
        world.db.close()
