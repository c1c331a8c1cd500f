"""The dispatch scheduler end to end on trio's virtual clock (tests/helpers/virtual_bridge.py):
the real bridge and scheduler over SQLite and over PostgreSQL, the reference phone with its simulated modem, which
enforces Android's 30-parts-per-60-s limit. Minutes of pacing pass in a fraction of a second and
every time read here is exact; no assertion is made on wall-clock time."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import trio
from sqlalchemy import text

from device_bridge.protocol import FailureClass
from gateway.config import SchedulerSettings
from gateway.types import FINAL_STATES, State
from smsgw_agent import PhoneAgent
from tests.helpers.memory_net import VirtualTime, run_virtual
from tests.helpers.postgres import BACKENDS, backend_env
from tests.helpers.virtual_bridge import T0, World, connected, text_of_parts

DEFAULTS = SchedulerSettings()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """This suite runs on SQLite ("": a file under tmp_path) and on PostgreSQL."""
    with backend_env(request.param) as env:
        yield env.get("SMSGW_DATABASE__URL", "")


POLL = 5.0  # virtual seconds between looks at the database


def _count_settled(world: World, ids: list[str]) -> int:
    with world.db.engine.connect() as conn:
        states = dict(conn.execute(text("SELECT id, state FROM message")).all())
    return sum(1 for mid in ids if State(states[mid]) in FINAL_STATES)


async def _until_settled(world: World, ids: list[str], limit: float) -> float:
    """Wait (virtual time, at most `limit` s) until every message is final; returns when."""
    with trio.fail_after(limit):
        while await trio.to_thread.run_sync(_count_settled, world, ids) < len(ids):
            await trio.sleep(POLL)
    return trio.current_time()


def _most_parts_in_a_minute(sends: list[tuple[float, int]]) -> int:
    """The most parts in any closed 60 s window [t - 60, t] over (time, parts) sends."""
    sends = sorted(sends)
    return max((sum(n for u, n in sends if t - 60.0 - 1e-9 <= u <= t) for t, _ in sends), default=0)


def _events(world: World) -> list[tuple[str, int, State, float]]:
    """(message, recipient, state, virtual time) of every event, in order."""
    return [
        (e.message_id, e.recipient_index, e.state, (e.created_at - T0).total_seconds())
        for e in world.messages.events_after(world.owner_id, 0, limit=10**6)
    ]


def test_burst_of_200_mixed_parts_two_sims_paced_never_trips_android_in_priority_fifo_order(tmp_path: Path, database_url: str) -> None:
    world = World(tmp_path, sims=2, url=database_url)  # the default pacing: 24 parts/min/SIM, 2.5 s apart, 27/min/phone
    rng = random.Random(20261201)
    specs = [(rng.randint(1, 4), rng.choice([0, 0, 0, 5, 10])) for _ in range(200)]
    report: dict[str, object] = {}

    async def main(vt: VirtualTime) -> None:
        ids = [world.send([f"+1555020{i:04d}"], text_of_parts(parts), priority=prio) for i, (parts, prio) in enumerate(specs)]
        agent = world.phone()
        async with connected(world, agent):
            report["done_at"] = await _until_settled(world, ids, 4 * 3600)
            await vt.settle()
        report["ids"], report["agent"] = ids, agent

    try:
        run_virtual(main, real_limit=60.0)
        ids: list[str] = report["ids"]  # type: ignore[assignment]
        agent: PhoneAgent = report["agent"]  # type: ignore[assignment]
        modem = agent.modem
        records = {mid: world.messages.get(world.owner_id, mid) for mid in ids}
        events = _events(world)
    finally:
        world.close()

    # All delivered, every part of every recipient sent and delivered.
    assert {r.state for r in records.values()} == {State.DELIVERED}
    for (parts, _), mid in zip(specs, ids, strict=True):
        (recipient,) = records[mid].recipients
        assert (records[mid].parts, recipient.parts_sent, recipient.parts_delivered, recipient.attempt) == (parts, parts, parts, 1)

    # The modem never hit Android's dialog and never saw more than the limits in any 60 s.
    assert modem.dialogs == []
    assert len(modem.parts_log) == sum(parts for parts, _ in specs)
    # Per send (a recipient's parts, counted when it starts, as Android's SmsUsageMonitor
    # counts them), in closed 60 s windows: a send exactly 60 s old still counts.
    sends = [(p.started, p.sim, p.parts) for p in modem.parts_log if p.part == 1]
    per_sim = {sim: _most_parts_in_a_minute([(t, n) for t, s, n in sends if s == sim]) for sim in (1, 2)}
    assert all(0 < n <= DEFAULTS.sim_parts_per_minute for n in per_sim.values()), per_sim
    assert _most_parts_in_a_minute([(t, n) for t, _, n in sends]) <= DEFAULTS.phone_parts_per_minute < 30
    # >= 2.5 s between two sends of one SIM.
    for sim in (1, 2):
        times = [t for t, s, _ in sends if s == sim]
        assert min(b - a for a, b in pairwise(times)) >= DEFAULTS.sim_min_interval - 1e-6, sim
    # SIM rotation: both SIMs carried a fair share.
    per_sim_sends = Counter(s for _, s, _ in sends)
    assert min(per_sim_sends.values()) >= 60, per_sim_sends

    # Priority first, then FIFO: the order the phone was handed them, overall and per SIM.
    expected = [mid for _, mid in sorted(zip(specs, ids, strict=True), key=lambda x: (-x[0][1], ids.index(x[1])))]
    dispatched = [mid for mid, _, state, _ in events if state == State.DISPATCHED]
    assert dispatched == expected
    sim_of = {p.message_id: p.sim for p in modem.parts_log}
    for sim in (1, 2):
        assert [m for m in dispatched if sim_of[m] == sim] == [m for m in expected if sim_of[m] == sim]

    # Multipart: one SENT and one DELIVERED event per recipient, never one per part.
    per_state = Counter((mid, state) for mid, _, state, _ in events)
    for mid in ids:
        assert (per_state[(mid, State.SENT)], per_state[(mid, State.DELIVERED)]) == (1, 1), records[mid].parts
    # The paced phone needs at least 500-odd parts / 27 per minute.
    assert report["done_at"] >= 60 * (len(modem.parts_log) / DEFAULTS.phone_parts_per_minute - 1)  # type: ignore[operator]



def test_each_failure_class_takes_its_path(tmp_path: Path, database_url: str) -> None:
    world = World(tmp_path, sims=1, url=database_url)
    numbers = {name: f"+155503{i:05d}" for i, name in enumerate(
        ["no_service", "radio_off", "limit_exceeded", "invalid_number", "blocked", "decrypt_failed",
         "generic_failure", "always_no_service", "after_a_part"]
    )}
    report: dict[str, object] = {}

    async def main(vt: VirtualTime) -> None:
        agent = world.phone()
        modem = agent.modem
        for name in ("no_service", "radio_off", "limit_exceeded", "invalid_number", "blocked", "decrypt_failed",
                     "generic_failure"):
            modem.fail_next(FailureClass[name.upper()], phone_number=numbers[name])
        modem.fail_next(FailureClass.NO_SERVICE, count=10, phone_number=numbers["always_no_service"])
        modem.fail_next(FailureClass.NO_SERVICE, phone_number=numbers["after_a_part"], after_parts=1)
        ids = {
            name: world.send([number], text_of_parts(2 if name == "after_a_part" else 1))
            for name, number in numbers.items()
        }
        async with connected(world, agent):
            await _until_settled(world, list(ids.values()), 6 * 3600)
            await vt.settle()
        report["ids"], report["agent"] = ids, agent

    try:
        run_virtual(main, real_limit=60.0)
        ids: dict[str, str] = report["ids"]  # type: ignore[assignment]
        agent: PhoneAgent = report["agent"]  # type: ignore[assignment]
        got = {name: world.messages.get(world.owner_id, mid) for name, mid in ids.items()}
        events = _events(world)
    finally:
        world.close()

    starts: dict[str, list[float]] = defaultdict(list)
    for p in agent.modem.parts_log:
        if p.part == 1:
            starts[p.message_id].append(p.time)
    attempts_made = Counter(mid for mid, _ in agent.modem.sent)

    for name in ("no_service", "radio_off", "limit_exceeded"):  # retried, then delivered
        m = got[name]
        assert m.state == State.DELIVERED, name
        assert (m.attempts, m.recipients[0].attempt, attempts_made[m.id]) == (2, 2, 2), name
        assert m.last_error == name
        # The second attempt waited the backoff: retry_base (30 s) +-20 %.
        first, second = [t for mid, _, state, t in events if mid == m.id and state == State.DISPATCHED]
        assert second - first >= DEFAULTS.retry_base * 0.8, name
        assert len(starts[m.id]) == 1 and starts[m.id][0] > second  # only the retry put a part out
    for name in ("invalid_number", "blocked", "decrypt_failed", "generic_failure"):  # final at once
        m = got[name]
        assert m.state == State.FAILED and m.recipients[0].error == name and m.attempts == 1, name
        assert attempts_made[m.id] == 1
    always = got["always_no_service"]
    assert always.state == State.FAILED and always.recipients[0].error == "no_service"
    assert always.attempts == attempts_made[always.id] == DEFAULTS.max_attempts
    # A failure after a part went out is final: a retry would send that part twice.
    partial = got["after_a_part"]
    assert partial.state == State.FAILED and partial.attempts == 1 and attempts_made[partial.id] == 1
    assert partial.recipients[0].parts_sent == 1 and partial.parts == 2
    # Each retry is one PENDING event; a final failure one FAILED event.
    per_state = Counter((mid, state) for mid, _, state, _ in events)
    assert per_state[(got["no_service"].id, State.PENDING)] == 2  # created, then the retry
    assert per_state[(always.id, State.FAILED)] == 1
    assert agent.modem.dialogs == []


def test_scheduled_rescheduled_and_expiring_messages_follow_the_clock(tmp_path: Path, database_url: str) -> None:
    world = World(tmp_path, sims=1, url=database_url)
    report: dict[str, object] = {}

    async def main(vt: VirtualTime) -> None:
        at_ten = world.send(["+15550400001"], "at ten past", schedule_at=T0 + timedelta(minutes=10))
        moved = world.send(["+15550400002"], "moved earlier", schedule_at=T0 + timedelta(minutes=30))
        cancelled = world.send(["+15550400003"], "never", schedule_at=T0 + timedelta(minutes=5))
        # 60 messages that must go within a minute: one SIM sends 24 of them (2.5 s apart).
        hurried = [
            world.send([f"+155504{i:05d}"], "hurry", valid_until=T0 + timedelta(seconds=60)) for i in range(10, 70)
        ]
        agent = world.phone()
        async with connected(world, agent):
            await trio.sleep(60)
            world.messages.cancel(world.owner_id, cancelled, world.now())  # before its time
            await trio.sleep(8 * 60)
            shown = world.messages.get(world.owner_id, at_ten)
            report["at_nine_minutes"] = (shown.state, shown.next_attempt_at)
            world.messages.reschedule(world.owner_id, moved, T0 + timedelta(minutes=15), world.now())
            world.registry.wake([world.device_id])
            ids = [at_ten, moved, *hurried]
            await _until_settled(world, ids, 3600)
            await vt.settle()
        report.update(ids=dict(at_ten=at_ten, moved=moved, cancelled=cancelled), hurried=hurried, agent=agent)

    try:
        run_virtual(main, real_limit=60.0)
        agent: PhoneAgent = report["agent"]  # type: ignore[assignment]
        ids: dict[str, str] = report["ids"]  # type: ignore[assignment]
        hurried: list[str] = report["hurried"]  # type: ignore[assignment]
        got = {name: world.messages.get(world.owner_id, mid) for name, mid in ids.items()}
        hurried_got = [world.messages.get(world.owner_id, mid) for mid in hurried]
    finally:
        world.close()

    sent_at = {p.message_id: p.time for p in agent.modem.parts_log}
    state, next_at = report["at_nine_minutes"]  # type: ignore[misc]
    assert state == State.PENDING and next_at == T0 + timedelta(minutes=10)
    assert got["at_ten"].state == State.DELIVERED and 600 <= sent_at[ids["at_ten"]] < 610
    assert got["moved"].state == State.DELIVERED and 900 <= sent_at[ids["moved"]] < 910
    assert got["cancelled"].state == State.CANCELLED and ids["cancelled"] not in sent_at
    # Of the hurried ones, those sent went within the minute, in order; the rest EXPIRED unsent.
    sent = [m for m in hurried_got if m.state == State.DELIVERED]
    expired = [m for m in hurried_got if m.state == State.EXPIRED]
    assert len(sent) + len(expired) == 60
    assert 20 <= len(sent) <= DEFAULTS.sim_parts_per_minute
    assert [m.id for m in sent] == hurried[: len(sent)]
    assert all(sent_at[m.id] <= 60 for m in sent)
    assert not any(m.id in sent_at for m in expired)
    assert all(r.error == "valid_until passed before it was sent" for m in expired for r in m.recipients)


def test_an_idle_phone_opens_without_a_dispatch_round_and_a_later_send_goes_out(tmp_path: Path, database_url: str) -> None:
    """The open loads the phone's queue; when it is empty and nothing changed meanwhile, the
    session runs no first round (a write job that would claim nothing). A send after that
    still reaches the phone (its wake-up asks for a round)."""
    world = World(tmp_path, sims=1, url=database_url)
    rounds: list[int] = []
    round_future = world.messages.dispatch_round_future

    def counted(*args: object, **kwargs: object) -> object:
        rounds.append(len(rounds))
        return round_future(*args, **kwargs)  # type: ignore[arg-type]

    world.messages.dispatch_round_future = counted  # type: ignore[method-assign]
    report: dict[str, object] = {}

    async def main(vt: VirtualTime) -> None:
        agent = world.phone()
        async with connected(world, agent):
            with trio.fail_after(60):
                while not world.registry._by_device:
                    await trio.sleep(0.1)
            await vt.settle()
            report["rounds_before"] = len(rounds)
            mid = world.send(["+15550300001"], "hello")
            report["done_at"] = await _until_settled(world, [mid], 600)
            report["mid"] = mid

    try:
        run_virtual(main, real_limit=60.0)
        assert world.messages.get(world.owner_id, str(report["mid"])).state == State.DELIVERED
    finally:
        world.close()
    assert report["rounds_before"] == 0
    assert len(rounds) >= 1
