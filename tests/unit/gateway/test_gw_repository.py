"""gateway.messages.repository.MessageRepository over a real SQLite file.

The stateful test is RELIABILITY 4: random sends, session opens (with the recipients the
phone holds), dispatches, accepts (some with the receipt lost), late/duplicated/out-of-order
receipts (SENT / DELIVERED / FAILED, retryable failures included), session drops, stale
closes, cancels and expiry. The repository runs unpaced (every limit 0) so that dispatch is
decided by order, `room`, schedules and retry backoffs only; pacing has its own tests
(test_gw_scheduler.py, test_gw_pacing.py). After every step:

(a) every recipient's history in the event log is forward-only (`may_move`); a retry (a
    retryable FAILED answered with PENDING at attempt + 1) restarts that recipient's
    history, and the number of restarts is its attempt - 1;
(b) every recipient is accepted-or-later / final, or PENDING, or DISPATCHED on the
    currently open session of its device (nothing is stuck on a closed session);
(c) a recipient the server recorded as ACCEPTED never goes back below it at that attempt;
(d) the stored message state is `derive_message_state` of its recipients;
(e) each message id appears exactly once in `list`;
(f) a pinned or ever-dispatched message never changes device.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import text as sa_text

from gateway.config import SchedulerSettings
from gateway.devices.records import SimRecord
from gateway.devices.repository import DeviceRepository
from gateway.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from gateway.messages.records import DispatchBatch, HeldRecipient, MessageFilter, NewMessage, ReceiptUpdate
from gateway.messages.repository import MessageRepository
from gateway.messages.retry import RETRYABLE
from gateway.storage.engine import Database
from gateway.types import FINAL_STATES, UNSENT_STATES, State, derive_message_state, may_move
from tests.helpers.accounts import create_owner

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
P, D, A, S = State.PENDING, State.DISPATCHED, State.ACCEPTED, State.SENT
DL, F, E, C = State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED
# What a recipient the server saw ACCEPTED may never be again at that attempt (EXPIRED may
# follow ACCEPTED: valid_until passed before it was sent, and the phone is told to drop it).
NOT_HELD = frozenset({P, D, C})
ALL = MessageFilter()
# No pacing at all; short retry backoffs so that retries come due within a run.
UNPACED = SchedulerSettings(
    sim_parts_per_minute=0, sim_min_interval=0, phone_parts_per_minute=0, max_attempts=3, retry_base=2, retry_max=10
)


# ---- helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class RSnap:
    """One recipient as stored."""

    state: State
    session_id: str
    attempt: int
    not_before: datetime | None


@dataclass(frozen=True)
class Snap:
    """One message as stored (raw row fields the records do not expose)."""

    id: str
    state: State
    device_id: str | None
    pinned: bool
    ever_dispatched: bool
    drop_pending: bool
    valid_until: datetime | None
    priority: int
    with_delivery_report: bool
    recipients: tuple[RSnap, ...]

    @property
    def states(self) -> tuple[State, ...]:
        return tuple(r.state for r in self.recipients)


def _time(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw).replace(tzinfo=UTC)


def snapshot(db: Database) -> dict[str, Snap]:
    """Plain SQL on the driver (no ORM, no statement compilation): this runs every step."""
    recipients: dict[str, list[RSnap]] = defaultdict(list)
    out = {}
    with db.engine.connect() as conn:
        for mid, state, session, attempt, not_before in conn.exec_driver_sql(
            "SELECT message_id, state, session_id, attempt, not_before FROM recipient ORDER BY message_id, idx"
        ):
            recipients[mid].append(RSnap(State(state), session, attempt, _time(not_before)))
        rows = conn.exec_driver_sql(
            "SELECT id, state, device_id, pinned, ever_dispatched, drop_pending, valid_until, priority,"
            " with_delivery_report FROM message"
        )
        for mid, state, device, pinned, ever, drop, vu, priority, report in rows:
            out[mid] = Snap(
                mid, State(state), device, bool(pinned), bool(ever), bool(drop), _time(vu), priority, bool(report),
                tuple(recipients[mid]),
            )
    return out


def ids(batch: DispatchBatch) -> list[str]:
    """The messages of a dispatch round's Delivers, in order."""
    return [u.message.id for u in batch.units]


_keys = itertools.count(1)


def new_message(
    n: int = 1,
    *,
    key: str | None = None,
    text: str = "hi",
    device_id: str = "",
    priority: int = 0,
    valid_until: datetime | None = None,
    with_delivery_report: bool = True,
    sim_number: int = 0,
    parts: int = 1,
    schedule_at: datetime | None = None,
    numbers: Sequence[str] | None = None,
) -> NewMessage:
    k = key or f"key-{next(_keys)}"
    phones = tuple(numbers) if numbers is not None else tuple(f"+1415555{i:04d}" for i in range(n))
    return NewMessage(
        phone_numbers=phones,
        text=text,
        data=None,
        port=0,
        device_id=device_id,
        sim_number=sim_number,
        priority=priority,
        valid_until=valid_until,
        with_delivery_report=with_delivery_report,
        is_encrypted=False,
        idempotency_key=k,
        content_hash=f"hash:{text}:{phones}:{device_id}:{priority}:{valid_until}:{with_delivery_report}:{sim_number}",
        parts=parts,
        encoding="GSM_7",
        schedule_at=schedule_at,
    )


class World:
    """A database with one owner and its paired devices (or a copy of a template World)."""

    def __init__(
        self,
        path: Path,
        devices: int = 2,
        *,
        template: World | None = None,
        scheduler: SchedulerSettings = UNPACED,
        rng: random.Random | None = None,
    ) -> None:
        file = path / "smsgw.db"
        if template is not None:
            shutil.copyfile(template.file, file)
        self.file = file
        self.db = Database(f"sqlite:///{file}", sqlite_synchronous="NORMAL")
        self.devices = DeviceRepository(self.db)
        self.repo = MessageRepository(self.db, scheduler, rng=rng or random.Random(4))
        if template is not None:
            self.owner, self.device_ids = template.owner, list(template.device_ids)
            return
        self.db.create_all()
        self.owner = create_owner(self.db, "owner", T0)
        self.device_ids = [self.pair() for _ in range(devices)]

    def freeze(self) -> World:
        """Close all connections (checkpointing the WAL) so the file can be copied."""
        self.db.close()
        return self

    def pair(self, owner: str | None = None) -> str:
        code, _ = self.devices.create_pairing_code(owner or self.owner, "phone", timedelta(minutes=5), T0)
        redeemed = self.devices.redeem_pairing_code(code, T0)
        assert redeemed is not None
        # A phone that once connected with its token, so routing may pick it while offline
        # (an orphan of a lost Welcome it would not: test_gw_pairing.py).
        with self.db.engine.begin() as conn:
            conn.execute(
                sa_text("UPDATE device SET connected_with_token_at = :t WHERE id = :id"),
                {"t": T0, "id": redeemed[0].device_id},
            )
        return redeemed[0].device_id

    def held(self, items: Iterable[str | HeldRecipient]) -> list[HeldRecipient]:
        """A message id stands for every recipient of it at its current attempt."""
        out: list[HeldRecipient] = []
        with self.db.engine.connect() as conn:
            for item in items:
                if isinstance(item, HeldRecipient):
                    out.append(item)
                    continue
                rows = conn.exec_driver_sql(
                    "SELECT idx, attempt FROM recipient WHERE message_id = ? ORDER BY idx", (item,)
                ).all()
                out.extend(HeldRecipient(item, idx, attempt) for idx, attempt in rows or [(0, 1)])
        return out

    def online(
        self,
        device: str,
        session: str,
        held: Sequence[str | HeldRecipient] = (),
        now: datetime = T0,
        sims: Sequence[int] = (),
    ) -> None:
        self.devices.set_online(device, session, token_hash=None, app_version="t", sims=tuple(SimRecord(x) for x in sims), now=now)
        self.repo.open_session(self.owner, device, session, self.held(held), now)

    def state(self, message_id: str) -> State:
        return self.repo.get(self.owner, message_id).state


class EventLogChecker:
    """(a): every recipient history starts PENDING, moves only as `may_move` allows (a retry
    restarts it), and ends in the recipient's stored state. Reads the log incrementally."""

    def __init__(self, repo: MessageRepository, owner: str) -> None:
        self.repo, self.owner = repo, owner
        self.last = 0
        self.history: dict[tuple[str, int], list[State]] = defaultdict(list)
        self.restarts: dict[tuple[str, int], int] = defaultdict(int)
        self.message_state: dict[str, State] = {}

    def check(self, snaps: dict[str, Snap]) -> None:
        events = self.repo.events_after(self.owner, self.last, limit=1_000_000)
        for e in events:
            assert e.id > self.last, "event ids must increase"
            self.last = e.id
            key = (e.message_id, e.recipient_index)
            states = self.history[key]
            if not states:
                assert e.state == P, (e, "first state must be PENDING")
            elif e.state == P and e.error.startswith("retry ") and states[-1] in UNSENT_STATES:
                # The next attempt: its history starts again at PENDING.
                self.restarts[key] += 1
                states.clear()
            else:
                assert may_move(states[-1], e.state), (
                    f"{e.message_id}[{e.recipient_index}] moved {states[-1].name} -> {e.state.name}: {states}"
                )
            states.append(e.state)
            self.message_state[e.message_id] = e.message_state
        for mid, snap in snaps.items():
            for idx, r in enumerate(snap.recipients):
                states = self.history.get((mid, idx))
                assert states, f"{mid}[{idx}] has no event"
                assert states[-1] == r.state, (mid, idx, states, snap.recipients)
                assert self.restarts[(mid, idx)] == r.attempt - 1, (mid, idx, r)
            # The last event of a message carries its current derived state.
            assert self.message_state[mid] == snap.state, (mid, self.message_state[mid], snap)


# ---- the state machine --------------------------------------------------------------


class _Writes:
    """Wraps a repository: any call through it invalidates the machine's cached snapshot."""

    def __init__(self, target: object, machine: RepositoryMachine) -> None:
        self._target, self._machine = target, machine

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._machine.cached = None
            try:
                return method(*args, **kwargs)
            finally:
                self._machine.cached = None

        return call


Key = tuple[str, int, int]  # (message, recipient index, attempt): what a phone holds


class RepositoryMachine(RuleBasedStateMachine):
    # Set by the module fixture: a database file with the owner and devices, copied per example.
    template: World | None = None
    base: Path | None = None

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="smsgw-repo-", dir=self.base))
        self.world = World(self.tmp, template=self.template)
        self.cached: dict[str, Snap] | None = None
        self.repo: Any = _Writes(self.world.repo, self)
        self.device_repo: Any = _Writes(self.world.devices, self)
        self.owner = self.world.owner
        self.devs = self.world.device_ids
        self.events = EventLogChecker(self.world.repo, self.owner)
        self.now = T0
        self.created_since_list = True
        self.step_no = 0
        self.sessions = itertools.count(1)
        self.session: dict[str, str | None] = {d: None for d in self.devs}
        self.old_sessions: dict[str, list[str]] = {d: [] for d in self.devs}
        # The model of the phones and of what the server must remember.
        self.sent: dict[str, NewMessage] = {}  # id -> request (for idempotent replays)
        self.in_flight: dict[str, set[Key]] = {d: set() for d in self.devs}  # delivered, not yet accepted
        self.phone_held: dict[str, set[Key]] = {d: set() for d in self.devs}
        self.server_accepted: set[Key] = set()
        self.pinned: dict[str, str] = {}
        self.dispatched_to: dict[str, str] = {}

    def teardown(self) -> None:
        self.world.db.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def open_devices(self) -> list[str]:
        return [d for d in self.devs if self.session[d] is not None]

    def snaps(self) -> dict[str, Snap]:
        """The stored messages; cached until the next call through self.repo / self.device_repo."""
        if self.cached is None:
            self.cached = snapshot(self.world.db)
        return self.cached

    def online(self, device: str, session: str, held: list[HeldRecipient], now: datetime) -> None:
        self.device_repo.set_online(device, session, token_hash=None, app_version="t", sims=(), now=now)
        self.repo.open_session(self.owner, device, session, held, now)

    def reportable(self) -> list[str]:
        """Messages with a recipient the server saw ACCEPTED, or the phone holds, at its
        current attempt, on an open device (a phone may hold a recipient cancelled or expired
        while its Deliver was in flight, and send it before the Drop arrives)."""
        snaps, online = self.snaps(), self.open_devices()
        held = {k for d in online for k in self.phone_held[d] if self.dispatched_to.get(k[0]) == d}
        return sorted(
            {
                mid for mid, idx, att in self.server_accepted | held
                if self.dispatched_to.get(mid) in online and snaps[mid].recipients[idx].attempt == att
            }
        )

    # -- one rule, weighted actions --
    #
    # A single rule picks every action by weight from those possible now. Separate rules
    # would be picked evenly (and swarm testing switches some off per run), which left the
    # interesting interleavings (accept, lost receipts, reroutes) rare.

    def actions(self) -> dict[str, float]:
        """The actions possible now, with their weights."""
        online = self.open_devices()
        out: dict[str, float] = {}
        if any(self.in_flight[d] for d in online):
            out["accept"] = 6
        if self.reportable():
            out["report"] = 4
        if self.dispatchable():
            out["dispatch"] = 6
        if len(self.sent) < 12:  # a dozen messages per run is plenty to interleave
            out["send"] = 3
        if online:
            out["drop"] = 1
            out["reconnect"] = 0.5
        if len(online) < len(self.devs):
            out["connect"] = 3
        if any(self.old_sessions.values()):
            out["late_close"] = out["late_dispatch"] = 0.5
        if self.sent:
            out["cancel"] = 1
            out["replay"] = out["expire"] = 0.5
            out["wait"] = 0.5
        return out

    def dispatchable(self) -> list[str]:
        """Open devices with PENDING messages (dispatching to an empty queue proves little)."""
        snaps = self.snaps()
        return [d for d in self.open_devices() if any(m.device_id == d and m.state == P for m in snaps.values())]

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        actions = self.actions()
        # Hypothesis leans hard on the first entry of a sampled_from (and on small integers),
        # which starved the later actions; a drawn seed spreads the picks evenly and replays.
        self.step_no += 1
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
        rnd = random.Random(f"{seed}:{self.step_no}")  # Hypothesis often draws 0: mix in the step
        [action] = rnd.choices(list(actions), weights=list(actions.values()))
        note(f"action: {action}")
        online = self.open_devices()
        if action in ("send", "cancel", "replay", "expire"):
            self.created_since_list = True
        if action == "send":
            self.send(data)
        elif action == "cancel":
            snaps = self.snaps()
            live = sorted(m for m in self.sent if snaps[m].state not in FINAL_STATES)
            self.cancel(data.draw(st.sampled_from(live or sorted(self.sent)), label="message"))
        elif action == "replay":
            self.replay_send(data.draw(st.sampled_from(sorted(self.sent)), label="message"))
        elif action == "expire":
            self.expire_due(data.draw(st.integers(0, 15), label="seconds"))
        elif action == "wait":  # time passes: retry backoffs come due
            self.now += timedelta(seconds=data.draw(st.integers(1, 12), label="wait"))
        elif action == "connect":
            self.open_session(data.draw(st.sampled_from([d for d in self.devs if d not in online])), data)
        elif action == "reconnect":  # a new session replaces one that is still open
            self.open_session(data.draw(st.sampled_from(online)), data)
        elif action == "dispatch":
            self.dispatch(data.draw(st.sampled_from(self.dispatchable())), data.draw(st.integers(1, 4), label="limit"))
        elif action == "accept":
            self.phone_accepts(data)
        elif action == "report":
            self.phone_reports(data)
        elif action == "drop":
            self.phone_drops(data.draw(st.sampled_from(online)))
        elif action == "late_close":
            self.stale_close(data)
        else:
            self.late_dispatch(data)

    # -- client side --

    def send(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 3), label="recipients")
        pin = data.draw(st.sampled_from([None, 0, 1]), label="pin")
        priority = data.draw(st.integers(-1, 1), label="priority")
        ttl = data.draw(st.one_of(st.none(), st.integers(5, 60)), label="ttl")
        report = data.draw(st.booleans(), label="with_delivery_report")
        now = self.tick()
        before = self.snaps()
        device = "" if pin is None else self.devs[pin]
        valid_until = None if ttl is None else now + timedelta(seconds=ttl)
        new = new_message(n, device_id=device, priority=priority, valid_until=valid_until, with_delivery_report=report)
        record, created = self.repo.create(self.owner, new, now)
        assert created
        assert record.state == P and [r.state for r in record.recipients] == [P] * n
        assert [r.attempt for r in record.recipients] == [1] * n
        self.sent[record.id] = new
        if pin is not None:
            assert record.device_id == device
            self.pinned[record.id] = device
        else:
            # Least loaded (unaccepted messages) online device, else least loaded of all.
            loads = {d: sum(1 for m in before.values() if m.device_id == d and m.state in (P, D)) for d in self.devs}
            pool = self.open_devices() or self.devs
            assert record.device_id == min(pool, key=lambda d: (loads[d], d))

    def replay_send(self, mid: str) -> None:
        """A client retry: same key and content -> the same message, nothing new."""
        record, created = self.repo.create(self.owner, self.sent[mid], self.tick())
        assert (record.id, created) == (mid, False)
        with pytest.raises(AlreadyExists):
            self.repo.create(self.owner, replace(self.sent[mid], content_hash="other"), self.now)

    def cancel(self, mid: str) -> None:
        before = self.snaps()[mid]
        now = self.tick()
        if all(s in (P, D) for s in before.states):
            record, device = self.repo.cancel(self.owner, mid, now)
            assert record.state == C
            assert all(r.state == C for r in record.recipients)
            # The device it is routed to is named: its session drops it from its queue, and
            # a phone that may hold it gets a Drop.
            assert device == before.device_id
        elif before.state == C:
            record, device = self.repo.cancel(self.owner, mid, now)
            assert (record.state, device) == (C, before.device_id)
        else:
            with pytest.raises(FailedPrecondition):
                self.repo.cancel(self.owner, mid, now)
            assert self.snaps()[mid] == before

    def expire_due(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        before = self.snaps()
        due = {
            m.id for m in before.values()
            if m.state in UNSENT_STATES and m.valid_until is not None and m.valid_until <= self.now
        }
        devices = self.repo.expire_due(self.now)
        assert devices == {before[m].device_id for m in due if before[m].ever_dispatched}
        after = self.snaps()
        for mid, m in after.items():
            if mid in due:
                # Every recipient not yet sent (PENDING, DISPATCHED or ACCEPTED) expires.
                old = before[mid]
                assert m.states == tuple(E if s in UNSENT_STATES else s for s in old.states), (old, m)
                assert m.drop_pending == (old.drop_pending or old.ever_dispatched)
            else:
                assert m == before[mid]

    # -- phone side --

    @initialize(online=st.sampled_from([2, 2, 1, 0]), data=st.data())
    def start(self, online: int, data: st.DataObject) -> None:
        """Most runs start with phones connected, so the steps go to the interesting part."""
        for device in self.devs[:online]:
            self.open_session(device, data)

    def open_session(self, device: str, data: st.DataObject) -> None:
        # The phone lists what it holds without an acknowledged ACCEPTED; model it as all
        # or any part of what it holds (an acknowledged receipt lets it leave some out).
        everything = sorted(self.phone_held[device])
        held = data.draw(
            st.one_of(st.just(everything), st.lists(st.sampled_from(everything), unique=True))
            if everything else st.just([]),
            label="held",
        )
        before = self.snaps()
        sid = f"s{next(self.sessions)}"
        if self.session[device] is not None:
            self.old_sessions[device].append(self.session[device])  # replaced by the new session
        self.online(device, sid, [HeldRecipient(*k) for k in held], self.tick())
        self.session[device] = sid
        self.in_flight[device] = set()
        after = self.snaps()
        held_set = set(held)
        for mid, m in before.items():
            got = after[mid]
            if m.device_id == device:
                expect = []
                for idx, r in enumerate(m.recipients):
                    if (mid, idx, r.attempt) in held_set and r.state in (P, D):
                        expect.append(A)
                        self.server_accepted.add((mid, idx, r.attempt))
                    elif r.state == D:
                        # Dispatched on an older session and not held: back to PENDING, re-sendable.
                        expect.append(P)
                    else:
                        expect.append(r.state)
                assert got.states == tuple(expect), (mid, m, got)
                assert got.device_id == device
            elif (
                m.state == P and not m.pinned and not m.ever_dispatched
                and (m.device_id is None or self.session[m.device_id] is None)
            ):
                # Waiting for no phone in particular (unrouted, or routed to an offline phone
                # that never got it): the phone that connects adopts it.
                assert got == dataclasses.replace(m, device_id=device), (mid, m, got)
            else:
                assert got == m

    def expected_round(self, before: dict[str, Snap], device: str, limit: int, now: datetime) -> list[tuple[str, tuple[int, ...], int]]:
        """What an unpaced dispatch round claims: priority then FIFO, messages in flight
        skipped, per message the due PENDING recipients of one attempt, at most `limit` Delivers."""
        busy = {mid for mid, _, _ in self.in_flight[device]}
        out = []
        queue = sorted(
            (m for m in before.values() if m.device_id == device and m.state == P and m.id not in busy),
            key=lambda m: (-m.priority, m.id),
        )
        for m in queue:
            if m.valid_until is not None and m.valid_until <= now:
                continue  # expired first
            claimed: list[int] = []
            attempt = 0
            for idx, r in enumerate(m.recipients):
                if r.state != P or (r.not_before is not None and r.not_before > now):
                    continue
                if claimed and r.attempt != attempt:
                    break  # one Deliver per message per round, at one attempt
                attempt = r.attempt
                claimed.append(idx)
            if claimed:
                out.append((m.id, tuple(claimed), attempt))
        return out[:limit]

    def dispatch(self, device: str, limit: int) -> None:
        sid = self.session[device]
        assert sid is not None
        now = self.tick()
        before = self.snaps()
        expected = self.expected_round(before, device, limit, now)
        busy = sorted({mid for mid, _, _ in self.in_flight[device]})
        batch = self.repo.dispatch(device, sid, limit, now, busy)
        assert [(u.message.id, u.recipient_indices, u.attempt) for u in batch.units] == expected
        after = self.snaps()
        newly_expired = {
            m.id for m in before.values()
            if m.device_id == device and m.state in UNSENT_STATES and m.valid_until is not None and m.valid_until <= now
        }
        dropped = {m.id for m in before.values() if m.device_id == device and m.drop_pending}
        dropped |= {mid for mid in newly_expired if before[mid].ever_dispatched}
        assert batch.drops == {mid: E for mid in dropped}
        for mid in newly_expired:
            assert after[mid].states == tuple(E if s in UNSENT_STATES else s for s in before[mid].states)
        for u in batch.units:
            m = after[u.message.id]
            assert m.device_id == device and m.ever_dispatched and not m.drop_pending
            assert u.sim == 0  # unpaced: the phone's default SIM
            for idx in u.recipient_indices:
                assert m.recipients[idx].state == D and m.recipients[idx].session_id == sid
                assert u.message.recipients[idx].state == D
                self.in_flight[device].add((u.message.id, idx, u.attempt))
            self.dispatched_to[u.message.id] = device
        # A PENDING recipient not due yet is reported for when it is.
        gates = [
            r.not_before for m in after.values() if m.device_id == device and m.state == P
            for r in m.recipients if r.state == P and r.not_before is not None and r.not_before > now
        ]
        assert batch.wake_at == (min(gates) if gates else None)

    def phone_accepts(self, data: st.DataObject) -> None:
        """The phone stores some delivered recipients and answers ACCEPTED. The delivered ones
        may have been cancelled or expired since (the Drop did not reach it yet). With
        `lost` the receipt never reaches storage (its session is about to die); the phone
        holds them anyway and lists them in a later Hello."""
        device = data.draw(st.sampled_from([d for d in self.open_devices() if self.in_flight[d]]))
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.in_flight[device])), min_size=1, unique=True))
        lost, repeat = data.draw(st.booleans(), label="lost"), data.draw(st.booleans(), label="repeat")
        self.in_flight[device] -= set(chosen)
        self.phone_held[device] |= set(chosen)
        if lost:
            return
        before = self.snaps()
        grouped: dict[tuple[str, int], list[int]] = defaultdict(list)
        for mid, idx, att in chosen:
            grouped[(mid, att)].append(idx)
        receipts = [
            ReceiptUpdate(mid, A, 0, recipient_indices=tuple(sorted(idxs)), attempt=att)
            for (mid, att), idxs in sorted(grouped.items())
        ]
        changed = self.repo.apply_receipts(device, receipts * (2 if repeat else 1), self.tick())
        after = self.snaps()
        expected = 0
        for mid, idx, att in chosen:
            old, new = before[mid].recipients[idx], after[mid].recipients[idx]
            if old.attempt == att and old.state in (P, D):
                assert new.state == A, (old, new)
                expected += 1
                self.server_accepted.add((mid, idx, att))
            else:
                assert new == old
        assert changed == expected
        assert self.repo.apply_receipts(device, receipts, self.tick()) == 0  # a repeat changes nothing

    def phone_reports(self, data: st.DataObject) -> None:
        """SENT / DELIVERED / FAILED (final or retryable) for recipients of accepted messages,
        in any order, repeated, some naming an old attempt; from the wrong device they change
        nothing. A retryable failure returns the recipient to PENDING at attempt + 1."""
        mid = data.draw(st.sampled_from(self.reportable()), label="message")
        device = self.dispatched_to[mid]
        before = self.snaps()
        m = before[mid]
        n = len(m.recipients)
        max_att = max(r.attempt for r in m.recipients)
        receipts = data.draw(
            st.lists(
                st.builds(
                    ReceiptUpdate,
                    st.just(mid),
                    st.sampled_from([S, DL, F]),
                    st.integers(0, n),  # n is out of range: ignored
                    st.sampled_from(["", "carrier says no"]),
                    attempt=st.integers(0, max_att),  # 0 = current; below the current one: stale
                    failure_class=st.sampled_from(["", "no_service", "radio_off", "invalid_number"]),
                    parts_done=st.sampled_from([0, 0, 1]),
                ),
                min_size=1,
                max_size=5,
            ),
            label="receipts",
        )
        if data.draw(st.integers(0, 4), label="wrong device") == 0:
            other = next(d for d in self.devs if d != device)
            assert self.repo.apply_receipts(other, receipts, self.tick()) == 0
            assert self.snaps() == before
            return
        states = list(m.states)
        attempts = [r.attempt for r in m.recipients]
        moves = 0
        retried: set[int] = set()
        for r in receipts:
            i = r.recipient_index
            if i >= n or not (r.attempt == attempts[i] or (r.attempt == 0 and states[i] != P)):
                # Out of range, a stale report of an earlier attempt, or an "attempt 0" report
                # on a PENDING recipient (a retry waiting for its backoff: a replay must not claim it).
                continue
            if may_move(states[i], A):  # any report means the phone holds it
                states[i], moves = A, moves + 1
            if (
                r.state == F and r.failure_class in RETRYABLE and r.parts_done == 0
                and states[i] in UNSENT_STATES and attempts[i] < UNPACED.max_attempts
            ):
                states[i], attempts[i], moves = P, attempts[i] + 1, moves + 1
                retried.add(i)
            elif may_move(states[i], r.state):
                states[i], moves = r.state, moves + 1
        now = self.tick()
        assert self.repo.apply_receipts(device, receipts, now) == moves
        after = self.snaps()[mid]
        assert after.states == tuple(states)
        # The phone's truth wins (issue 14): a recipient it reported SENT / DELIVERED at its
        # current attempt is not left EXPIRED or CANCELLED, whatever the server decided before.
        for r in receipts:
            i = r.recipient_index
            if i < n and i not in retried and r.state in (S, DL):
                old = m.recipients[i]
                if r.attempt == old.attempt or (r.attempt == 0 and old.state != P):
                    assert after.states[i] not in (E, C), (r, old, after)
        assert [r.attempt for r in after.recipients] == attempts
        for i in retried:
            # Backoff: not before retry_base * 4**(attempt-2) +-20 % from now.
            r = after.recipients[i]
            assert r.not_before is not None and r.session_id == ""
            base = UNPACED.retry_base * 4 ** (r.attempt - 2)
            delay = (r.not_before - now).total_seconds()
            assert min(base, UNPACED.retry_max) * 0.8 - 1e-3 <= delay <= min(base, UNPACED.retry_max) * 1.2 + 1e-3
            # The phone reported the failure: it no longer holds that attempt.
            self.phone_held[device] = {k for k in self.phone_held[device] if k[:2] != (mid, i)}

    def phone_drops(self, device: str) -> None:
        """The session ends: close_session, set_offline, reroute (as the bridge's close_out)."""
        sid = self.session[device]
        assert sid is not None
        now = self.tick()
        before = self.snaps()
        self.repo.close_session(device, sid, now)
        assert self.device_repo.set_offline(device, sid, now)
        self.session[device] = None
        self.old_sessions[device].append(sid)
        self.in_flight[device] = set()
        mid_state = self.snaps()
        for mid, m in before.items():
            expect = tuple(P if r.state == D and r.session_id == sid else r.state for r in m.recipients)
            if m.device_id == device:
                assert mid_state[mid].states == expect, (m, mid_state[mid])
            else:
                assert mid_state[mid] == m
        rerouted = self.repo.reroute_from(self.owner, device)
        after = self.snaps()
        others = self.open_devices()
        movable = {
            mid for mid, m in mid_state.items()
            if m.device_id == device and m.state == P and not m.pinned and not m.ever_dispatched
        }
        if others and movable:
            assert rerouted == {others[0]}
        else:
            assert rerouted == set()
        for mid, m in after.items():
            if mid in movable and others:
                assert m.device_id == others[0] and m.state == P
            else:
                assert m == mid_state[mid]

    def stale_close(self, data: st.DataObject) -> None:
        """A replaced session's close_out runs late: it must not touch the newer session."""
        device = data.draw(st.sampled_from([d for d in self.devs if self.old_sessions[d]]))
        sid = data.draw(st.sampled_from(self.old_sessions[device]))
        before = self.snaps()
        self.repo.close_session(device, sid, self.tick())
        assert not self.device_repo.set_offline(device, sid, self.now)
        assert self.snaps() == before

    def late_dispatch(self, data: st.DataObject) -> None:
        """A replaced session's dispatch task finishes after the new session opened (its
        storage call was already running), then its close_out runs: what it claimed must
        come back to PENDING. The old phone may have stored some of it (receipt lost)."""
        device = data.draw(st.sampled_from([d for d in self.devs if self.old_sessions[d]]))
        sid = data.draw(st.sampled_from(self.old_sessions[device]))
        now = self.tick()
        batch = self.repo.dispatch(device, sid, data.draw(st.integers(1, 3), label="limit"), now)
        keys = [(u.message.id, idx, u.attempt) for u in batch.units for idx in u.recipient_indices]
        for u in batch.units:
            self.dispatched_to[u.message.id] = device
        if keys:
            self.phone_held[device] |= set(data.draw(st.lists(st.sampled_from(keys), unique=True), label="stored"))
        self.repo.close_session(device, sid, now)
        after = self.snaps()
        for mid, idx, _ in keys:
            assert after[mid].recipients[idx].state == P and after[mid].ever_dispatched

    # -- invariants --

    @invariant()
    def consistent(self) -> None:
        snaps = self.snaps()
        assert set(snaps) == set(self.sent)
        # (a)
        self.events.check(snaps)
        for mid, m in snaps.items():
            for idx, r in enumerate(m.recipients):
                # (b)
                if r.state == D:
                    assert m.device_id is not None and r.session_id == self.session[m.device_id], (
                        f"{mid}[{idx}] is DISPATCHED on session {r.session_id!r}, but the open one is "
                        f"{self.session.get(m.device_id or '')!r}: stuck, never re-sent"
                    )
                else:
                    assert r.session_id == "" or r.state != P, (mid, idx, r)
                # (c)
                if (mid, idx, r.attempt) in self.server_accepted:
                    assert r.state not in NOT_HELD, (mid, idx, m)
                assert 1 <= r.attempt <= UNPACED.max_attempts
            # (d)
            assert m.state == derive_message_state(list(m.states), m.with_delivery_report), m
            # (f)
            if mid in self.pinned:
                assert m.device_id == self.pinned[mid] and m.pinned
            if mid in self.dispatched_to:
                assert m.device_id == self.dispatched_to[mid] and m.ever_dispatched
            assert m.device_id in self.devs  # with devices present, nothing is left unrouted
        # (e) Only a create can add a row, so `list` (the costliest read) runs after client steps.
        if not self.created_since_list:
            return
        self.created_since_list = False
        listed = self.world.repo.list(self.owner, ALL, limit=10_000, before_id=None)
        got = [r.id for r in listed]
        assert len(got) == len(set(got)) == len(snaps)
        assert got == sorted(got, reverse=True)
        for r in listed:
            assert r.state == snaps[r.id].state
            assert r.state == derive_message_state([x.state for x in r.recipients], r.with_delivery_report)
            assert r.attempts == max(x.attempt for x in snaps[r.id].recipients)


@pytest.fixture(scope="module", autouse=True)
def _repository_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.mktemp("machine")
    template_dir = base / "template"
    template_dir.mkdir()
    RepositoryMachine.template = World(template_dir).freeze()
    RepositoryMachine.base = base
    yield
    RepositoryMachine.template = RepositoryMachine.base = None


TestRepositoryMachine = RepositoryMachine.TestCase
TestRepositoryMachine.settings = settings(
    max_examples=50,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# ---- example tests ------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.db.close()


def test_create_is_idempotent_by_key(world: World) -> None:
    repo, owner = world.repo, world.owner
    first, created = repo.create(owner, new_message(2, key="k"), T0)
    assert created
    again, created = repo.create(owner, new_message(2, key="k"), T0 + timedelta(seconds=5))
    assert (again.id, created) == (first.id, False)
    assert again.recipients == first.recipients
    with pytest.raises(AlreadyExists):
        repo.create(owner, new_message(2, key="k", text="different"), T0)
    assert [m.id for m in repo.list(owner, ALL, limit=10, before_id=None)] == [first.id]
    # The key is per owner.
    other_owner = create_owner(world.db, "other", T0)
    theirs, created = repo.create(other_owner, new_message(2, key="k"), T0)
    assert created and theirs.id != first.id
    assert theirs.device_id is None  # that owner has no device: stored unrouted


def test_concurrent_creates_with_one_key_make_one_message(world: World) -> None:
    """Gateway retries racing each other: one row, every caller gets it; a different body
    racing them gets AlreadyExists."""
    results: list[tuple[str, bool] | Exception] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def send(text: str) -> None:
        start.wait(5)
        try:
            record, created = world.repo.create(world.owner, new_message(key="race", text=text), T0)
            out: tuple[str, bool] | Exception = (record.id, created)
        except Exception as exc:  # collected and judged below
            out = exc
        with lock:
            results.append(out)

    threads = [threading.Thread(target=send, args=("same" if i < 7 else "other",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    oks = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(results) == 8
    listed = world.repo.list(world.owner, ALL, limit=10, before_id=None)
    assert len(listed) == 1
    if listed[0].text == "same":
        assert len(oks) == 7 and len({mid for mid, _ in oks}) == 1
        assert [type(e) for e in errors] == [AlreadyExists]
    else:  # the odd one won the race: every "same" retry is refused
        assert len(oks) == 1 and len(errors) == 7
        assert all(isinstance(e, AlreadyExists) for e in errors)
    assert sum(created for _, created in oks) == 1


def test_create_rejects_another_owners_device(world: World) -> None:
    other_owner = create_owner(world.db, "other", T0)
    foreign = world.pair(other_owner)
    with pytest.raises(InvalidArgument) as info:
        world.repo.create(world.owner, new_message(device_id=foreign), T0)
    assert info.value.violations[0][0] == "device_id"
    with pytest.raises(InvalidArgument):
        world.repo.create(world.owner, new_message(device_id="no-such-device"), T0)
    assert world.repo.list(world.owner, ALL, limit=10, before_id=None) == []


def test_get_and_cancel_other_owner_is_not_found(world: World) -> None:
    record, _ = world.repo.create(world.owner, new_message(), T0)
    other_owner = create_owner(world.db, "other", T0)
    with pytest.raises(NotFound):
        world.repo.get(other_owner, record.id)
    with pytest.raises(NotFound):
        world.repo.cancel(other_owner, record.id, T0)
    with pytest.raises(NotFound):
        world.repo.cancel(world.owner, "01NOSUCHMESSAGE0000000000", T0)
    assert world.state(record.id) == P


def test_cancel_pending_dispatched_and_after_accepted(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    pending, _ = repo.create(owner, new_message(2, device_id=dev), T0)
    record, device = repo.cancel(owner, pending.id, T0)
    assert record.state == C and device == dev  # its session takes it out of its queue
    assert repo.cancel(owner, pending.id, T0)[1] == dev  # cancelling twice is fine

    dispatched, _ = repo.create(owner, new_message(device_id=dev), T0)
    accepted, _ = repo.create(owner, new_message(2, device_id=dev), T0)
    world.online(dev, "s1")
    assert set(ids(repo.dispatch(dev, "s1", 10, T0))) == {dispatched.id, accepted.id}
    record, device = repo.cancel(owner, dispatched.id, T0)
    assert record.state == C and device == dev  # the session must send Drop

    assert repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, A, 0)], T0) == 2
    with pytest.raises(FailedPrecondition):
        repo.cancel(owner, accepted.id, T0)
    repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, S, 0)], T0)
    with pytest.raises(FailedPrecondition):
        repo.cancel(owner, accepted.id, T0)
    assert world.state(accepted.id) == A  # recipient 1 still only accepted
    # A late ACCEPTED for the cancelled message changes nothing.
    assert repo.apply_receipts(dev, [ReceiptUpdate(dispatched.id, A, 0)], T0) == 0
    assert world.state(dispatched.id) == C


def test_receipts_forward_only_and_foreign_ones_ignored(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev, other = world.device_ids
    m, _ = repo.create(owner, new_message(2, device_id=dev), T0)
    world.online(dev, "s1")
    repo.dispatch(dev, "s1", 10, T0)
    assert repo.apply_receipts(other, [ReceiptUpdate(m.id, A, 0)], T0) == 0  # not routed there
    assert repo.apply_receipts(dev, [ReceiptUpdate(m.id, A, 0), ReceiptUpdate(m.id, A, 0)], T0) == 2
    receipts = [ReceiptUpdate(m.id, DL, 0), ReceiptUpdate(m.id, S, 0), ReceiptUpdate(m.id, S, 1),
                ReceiptUpdate(m.id, S, 7), ReceiptUpdate("no-such-id", S, 0)]
    assert repo.apply_receipts(dev, receipts, T0) == 2  # DELIVERED for 0, SENT for 1; the rest ignored
    got = repo.get(owner, m.id)
    assert [r.state for r in got.recipients] == [DL, S]
    assert got.state == S  # least advanced, still waiting for a delivery report
    assert repo.apply_receipts(dev, [ReceiptUpdate(m.id, F, 1, "no credit")], T0) == 1
    got = repo.get(owner, m.id)
    assert got.state == F and got.recipients[1].error == "generic_failure: no credit"
    assert got.recipients[1].last_error == got.last_error == "generic_failure: no credit"
    assert got.recipients[1].attempt == 1  # a final class: never retried
    assert repo.apply_receipts(dev, [ReceiptUpdate(m.id, DL, 1), ReceiptUpdate(m.id, A, 0)], T0) == 0


def test_sent_counts_as_done_without_delivery_report(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    m, _ = repo.create(owner, new_message(2, device_id=dev, with_delivery_report=False), T0)
    world.online(dev, "s1")
    repo.dispatch(dev, "s1", 10, T0)
    repo.apply_receipts(dev, [ReceiptUpdate(m.id, A, 0), ReceiptUpdate(m.id, S, 0)], T0)
    assert world.state(m.id) == A
    repo.apply_receipts(dev, [ReceiptUpdate(m.id, S, 1)], T0)
    assert world.state(m.id) == S
    repo.apply_receipts(dev, [ReceiptUpdate(m.id, DL, 1)], T0)
    assert world.state(m.id) == S  # SENT + DELIVERED, all done


def test_session_loss_returns_unaccepted_to_pending_and_held_ids_accept(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    a, _ = repo.create(owner, new_message(device_id=dev), T0)
    b, _ = repo.create(owner, new_message(device_id=dev), T0)
    c, _ = repo.create(owner, new_message(device_id=dev), T0)
    world.online(dev, "s1")
    assert len(repo.dispatch(dev, "s1", 10, T0).units) == 3
    repo.apply_receipts(dev, [ReceiptUpdate(a.id, A, 0)], T0)
    # The phone also stored b, but the session died before its receipt was stored.
    repo.close_session(dev, "s1", T0)
    assert [world.state(x.id) for x in (a, b, c)] == [A, P, P]
    world.online(dev, "s2", held=[b.id])
    assert [world.state(x.id) for x in (a, b, c)] == [A, A, P]
    assert ids(repo.dispatch(dev, "s2", 10, T0)) == [c.id]
    # A new session that replaces s2 without s2 closing first still frees c.
    world.online(dev, "s3")
    assert world.state(c.id) == P
    repo.close_session(dev, "s2", T0)  # the late close of the replaced session
    assert ids(repo.dispatch(dev, "s3", 10, T0)) == [c.id]
    events = [(e.message_id, e.state, e.error) for e in repo.events_after(owner, 0, limit=100, message_ids=[c.id])]
    assert events == [(c.id, P, ""), (c.id, D, ""), (c.id, P, "session_lost"), (c.id, D, ""),
                      (c.id, P, "session_lost"), (c.id, D, "")]


def test_held_ids_of_another_device_are_ignored(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev, other = world.device_ids
    m, _ = repo.create(owner, new_message(device_id=other), T0)
    world.online(dev, "s1", held=[m.id, "not-a-message"])
    assert world.state(m.id) == P


def test_open_session_routes_unrouted_messages(tmp_path: Path) -> None:
    world = World(tmp_path, devices=0)
    try:
        m, _ = world.repo.create(world.owner, new_message(), T0)
        assert m.device_id is None
        dev = world.pair()
        world.online(dev, "s1")
        assert world.repo.get(world.owner, m.id).device_id == dev
        assert ids(world.repo.dispatch(dev, "s1", 5, T0)) == [m.id]
    finally:
        world.db.close()


def test_routing_prefers_least_loaded_online_device(world: World) -> None:
    repo, owner = world.repo, world.owner
    d0, d1 = sorted(world.device_ids)
    # Nobody online: least loaded of all, ties by id.
    assert repo.create(owner, new_message(), T0)[0].device_id == d0
    assert repo.create(owner, new_message(), T0)[0].device_id == d1
    world.online(d1, "s1")
    for _ in range(3):
        assert repo.create(owner, new_message(), T0)[0].device_id == d1  # the only online one


def test_dispatch_order_and_limit(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    low, _ = repo.create(owner, new_message(device_id=dev, priority=-5), T0)
    first, _ = repo.create(owner, new_message(device_id=dev), T0)
    high, _ = repo.create(owner, new_message(device_id=dev, priority=9), T0)
    second, _ = repo.create(owner, new_message(device_id=dev), T0)
    world.online(dev, "s1")
    assert repo.dispatch(dev, "s1", 0, T0).units == []
    got = ids(repo.dispatch(dev, "s1", 2, T0)) + ids(repo.dispatch(dev, "s1", 5, T0))
    mids = sorted([first.id, second.id])
    assert got == [high.id, *mids, low.id]
    assert repo.dispatch(dev, "s1", 5, T0).units == []


def test_dispatch_skips_expired_and_still_fills_the_window(world: World) -> None:
    """The bridge asks for `window_available` messages once per wake-up; expired messages
    at the head of the queue must not use up that room, or the live ones behind them wait
    for an unrelated wake-up."""
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    expired = [
        repo.create(owner, new_message(device_id=dev, priority=5, valid_until=T0 + timedelta(seconds=1)), T0)[0]
        for _ in range(3)
    ]
    live = [repo.create(owner, new_message(device_id=dev), T0)[0] for _ in range(2)]
    world.online(dev, "s1")
    later = T0 + timedelta(seconds=10)
    got = repo.dispatch(dev, "s1", 3, later)
    assert all(world.state(m.id) == E for m in expired)
    assert sorted(ids(got)) == sorted(m.id for m in live)


def test_expire_due_moves_every_unsent_recipient_past_valid_until(world: World) -> None:
    """PENDING, DISPATCHED and ACCEPTED recipients expire (the phone holding them is told to
    drop them); a SENT one stays."""
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    soon = T0 + timedelta(seconds=30)
    world.online(dev, "s1")
    dispatched, _ = repo.create(owner, new_message(device_id=dev, valid_until=soon, priority=3), T0)
    accepted, _ = repo.create(owner, new_message(device_id=dev, valid_until=soon, priority=2), T0)
    half_sent, _ = repo.create(owner, new_message(2, device_id=dev, valid_until=soon, priority=1), T0)
    assert ids(repo.dispatch(dev, "s1", 3, T0)) == [dispatched.id, accepted.id, half_sent.id]
    repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, A, 0), ReceiptUpdate(half_sent.id, A, 0)], T0)
    repo.apply_receipts(dev, [ReceiptUpdate(half_sent.id, S, 0)], T0)
    pending, _ = repo.create(owner, new_message(2, device_id=dev, valid_until=soon), T0)
    future, _ = repo.create(owner, new_message(device_id=dev, valid_until=soon + timedelta(hours=1)), T0)
    forever, _ = repo.create(owner, new_message(device_id=dev), T0)
    unrouted_owner = create_owner(world.db, "nodevices", T0)
    unrouted, _ = repo.create(unrouted_owner, new_message(valid_until=soon), T0)

    assert repo.expire_due(soon - timedelta(seconds=1)) == set()
    assert repo.expire_due(soon) == {dev}  # the ones a phone may hold need a Drop
    assert world.state(dispatched.id) == E
    assert world.state(accepted.id) == E
    assert world.state(pending.id) == E
    assert [r.state for r in repo.get(owner, half_sent.id).recipients] == [S, E]
    assert [r.error for r in repo.get(owner, pending.id).recipients] == ["valid_until passed before it was sent"] * 2
    assert repo.get(unrouted_owner, unrouted.id).state == E
    assert world.state(future.id) == P
    assert world.state(forever.id) == P
    assert repo.final_states(dev, [dispatched.id, accepted.id, future.id, pending.id]) == {
        dispatched.id: E, accepted.id: E, pending.id: E
    }
    assert repo.final_states("other-device", [dispatched.id]) == {}  # scoped to the device
    assert repo.expire_due(soon) == set()  # nothing left to do
    # The next round tells the phone to drop what it may hold, once; the never-dispatched
    # `pending` needs no Drop.
    batch = repo.dispatch(dev, "s1", 5, soon)
    assert batch.drops == {dispatched.id: E, accepted.id: E, half_sent.id: E}
    assert ids(batch) == [future.id, forever.id]
    assert repo.dispatch(dev, "s1", 5, soon).drops == {}
    # A late ACCEPTED for an expired recipient changes nothing (the phone obeys the Drop); a
    # late SENT is the phone's truth: it went out (test_gw_phone_truth.py).
    assert repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, A, 0)], soon) == 0
    assert world.state(accepted.id) == E
    assert repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, S, 0)], soon) == 1
    assert world.state(accepted.id) == S


def test_expire_due_drains_every_due_message_in_batches(world: World) -> None:
    repo, owner = world.repo, world.owner
    ids = [repo.create(owner, new_message(valid_until=T0 + timedelta(seconds=1)), T0)[0].id for _ in range(5)]
    later = T0 + timedelta(minutes=1)
    repo.expire_due(later, batch=2)  # three transactions of at most 2 rows
    assert {world.state(i) for i in ids} == {E}


def test_reroute_from_never_moves_dispatched_or_pinned(world: World) -> None:
    repo, owner = world.repo, world.owner
    d0, d1 = world.device_ids
    pinned, _ = repo.create(owner, new_message(device_id=d0), T0)
    world.online(d0, "s1")
    was_dispatched, _ = repo.create(owner, new_message(), T0)
    assert was_dispatched.device_id == d0
    assert ids(repo.dispatch(d0, "s1", 1, T0)) == [pinned.id]
    assert ids(repo.dispatch(d0, "s1", 1, T0)) == [was_dispatched.id]
    free = [repo.create(owner, new_message(), T0)[0] for _ in range(2)]
    assert {m.device_id for m in free} == {d0}
    repo.close_session(d0, "s1", T0)  # pinned and was_dispatched back to PENDING

    # The other device is offline: nothing moves (a PENDING message is better kept where it is).
    assert world.devices.set_offline(d0, "s1", T0)
    assert repo.reroute_from(owner, d0) == set()
    assert {repo.get(owner, m.id).device_id for m in [pinned, was_dispatched, *free]} == {d0}

    # d1 connecting adopts what waits on the offline d0 and was never dispatched there.
    world.online(d1, "s2")
    assert repo.get(owner, pinned.id).device_id == d0
    assert repo.get(owner, was_dispatched.id).device_id == d0
    assert {repo.get(owner, m.id).device_id for m in free} == {d1}
    assert repo.reroute_from(owner, d0) == set()  # nothing left to move

    # reroute_from itself: d0 goes offline while d1 is online -> its free messages move.
    world.online(d0, "s3")
    more = repo.create(owner, new_message(device_id=""), T0)[0]
    if more.device_id != d0:  # least-loaded routing may pick d0 or d1
        more = repo.create(owner, new_message(device_id=""), T0)[0]
    assert more.device_id == d0
    repo.close_session(d0, "s3", T0)
    assert world.devices.set_offline(d0, "s3", T0)
    assert repo.reroute_from(owner, d0) == {d1}
    assert repo.get(owner, more.id).device_id == d1
    assert repo.get(owner, pinned.id).device_id == d0


def test_events_after_cursor_and_filter(world: World) -> None:
    repo, owner = world.repo, world.owner
    a, _ = repo.create(owner, new_message(2), T0)
    b, _ = repo.create(owner, new_message(), T0)
    repo.cancel(owner, a.id, T0)
    events = repo.events_after(owner, 0, limit=100)
    assert [(e.message_id, e.recipient_index, e.state) for e in events] == [
        (a.id, 0, P), (a.id, 1, P), (b.id, 0, P), (a.id, 0, C), (a.id, 1, C)
    ]
    assert [e.phone_number for e in events[:2]] == ["+14155550000", "+14155550001"]
    assert events[-1].message_state == C and events[-1].error == "cancelled by client"
    assert repo.events_after(owner, events[2].id, limit=100) == events[3:]
    assert repo.events_after(owner, 0, limit=2) == events[:2]
    assert [e.message_id for e in repo.events_after(owner, 0, limit=100, message_ids=[b.id])] == [b.id]
    assert repo.events_after(create_owner(world.db, "x", T0), 0, limit=100) == []
    assert repo.last_event_id() == events[-1].id


def test_list_filters_and_cursor(world: World) -> None:
    repo, owner = world.repo, world.owner
    d0, d1 = world.device_ids
    ids = [repo.create(owner, new_message(device_id=d0 if i % 2 else d1), T0)[0].id for i in range(5)]
    repo.cancel(owner, ids[0], T0)
    newest_first = sorted(ids, reverse=True)
    assert [m.id for m in repo.list(owner, ALL, limit=10, before_id=None)] == newest_first
    page = repo.list(owner, ALL, limit=2, before_id=None)
    rest = repo.list(owner, ALL, limit=10, before_id=page[-1].id)
    assert [m.id for m in page + rest] == newest_first
    assert [m.id for m in repo.list(owner, MessageFilter(state=C), limit=10, before_id=None)] == [ids[0]]
    on_d0 = repo.list(owner, MessageFilter(device_id=d0), limit=10, before_id=None)
    assert sorted(m.id for m in on_d0) == sorted(ids[1::2])


def test_delete_device_releases_per_recipient(world: World) -> None:
    """Deleting a phone: the unaccepted recipients of its unpinned messages go back to
    PENDING on another phone; those of pinned messages FAIL; accepted ones keep their state,
    including in a message that shows PENDING (another recipient waits for a retry)."""
    repo, owner = world.repo, world.owner
    d0, d1 = world.device_ids
    world.online(d0, "s1")
    free = repo.create(owner, new_message(2, device_id=""), T0)[0]
    pinned = repo.create(owner, new_message(2, device_id=d0), T0)[0]
    assert free.device_id == d0
    assert set(ids(repo.dispatch(d0, "s1", 10, T0))) == {free.id, pinned.id}
    repo.apply_receipts(
        d0,
        [
            ReceiptUpdate(free.id, A, 0, recipient_indices=(0,)),
            ReceiptUpdate(free.id, F, 0, failure_class="no_service"),  # recipient 0: retry later
            ReceiptUpdate(pinned.id, A, 0, recipient_indices=(0,)),
        ],
        T0,
    )
    assert [r.state for r in repo.get(owner, free.id).recipients] == [P, D]
    assert world.state(free.id) == P
    world.online(d1, "s2")
    rerouted, failed, wake = repo.delete_device(owner, d0, T0 + timedelta(seconds=1))
    assert (rerouted, failed) == (1, 1) and wake == {d0, d1}
    got = repo.get(owner, free.id)
    assert got.device_id == d1 and [r.state for r in got.recipients] == [P, P]
    assert [r.attempt for r in got.recipients] == [2, 1]
    got = repo.get(owner, pinned.id)
    assert [r.state for r in got.recipients] == [A, F] and got.recipients[1].error == "device deleted"
    snap = snapshot(world.db)
    assert all(r.session_id == "" for r in snap[free.id].recipients)
