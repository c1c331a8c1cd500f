"""gateway.messages.repository.MessageRepository over a real SQLite file.

The stateful test is RELIABILITY 4: random sends, session opens (with the phone's held
ids), dispatches, accepts (some with the receipt lost), late/duplicated/out-of-order
receipts, session drops, stale closes, cancels and expiry. After every step:

(a) every recipient's history in the event log is forward-only (`may_move`);
(b) every message is accepted-or-later / final, or PENDING, or DISPATCHED on the
    currently open session of its device (nothing is stuck on a closed session);
(c) a message the server recorded as ACCEPTED never goes back below it;
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.devices.repository import DeviceRepository
from gateway.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from gateway.messages.records import MessageFilter, NewMessage, ReceiptUpdate
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.types import FINAL_STATES, State, derive_message_state, may_move
from tests.helpers.accounts import create_owner

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
P, D, A, S = State.PENDING, State.DISPATCHED, State.ACCEPTED, State.SENT
DL, F, E, C = State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED
NOT_HELD = frozenset({P, D, E, C})  # what a message the server saw ACCEPTED may never be again
ALL = MessageFilter()


# ---- helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snap:
    """One message as stored (raw row fields the records do not expose)."""

    id: str
    state: State
    device_id: str | None
    session_id: str
    pinned: bool
    ever_dispatched: bool
    valid_until: datetime | None
    priority: int
    with_delivery_report: bool
    recipients: tuple[State, ...]


def snapshot(db: Database) -> dict[str, Snap]:
    """Plain SQL on the driver (no ORM, no statement compilation): this runs every step."""
    recipients: dict[str, list[State]] = defaultdict(list)
    out = {}
    with db.engine.connect() as conn:
        for mid, state in conn.exec_driver_sql("SELECT message_id, state FROM recipient ORDER BY message_id, idx"):
            recipients[mid].append(State(state))
        rows = conn.exec_driver_sql(
            "SELECT id, state, device_id, session_id, pinned, ever_dispatched, valid_until, priority,"
            " with_delivery_report FROM message"
        )
        for mid, state, device, session, pinned, ever, vu, priority, report in rows:
            valid_until = None if vu is None else datetime.fromisoformat(vu).replace(tzinfo=UTC)
            out[mid] = Snap(
                mid, State(state), device, session, bool(pinned), bool(ever), valid_until, priority, bool(report),
                tuple(recipients[mid]),
            )
    return out


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
) -> NewMessage:
    k = key or f"key-{next(_keys)}"
    numbers = tuple(f"+1415555{i:04d}" for i in range(n))
    return NewMessage(
        phone_numbers=numbers,
        text=text,
        data=None,
        port=0,
        device_id=device_id,
        sim_number=0,
        priority=priority,
        valid_until=valid_until,
        with_delivery_report=with_delivery_report,
        is_encrypted=False,
        idempotency_key=k,
        content_hash=f"hash:{text}:{n}:{device_id}:{priority}:{valid_until}:{with_delivery_report}",
        parts=1,
        encoding="GSM_7",
    )


class World:
    """A database with one owner and its paired devices (or a copy of a template World)."""

    def __init__(self, path: Path, devices: int = 2, *, template: World | None = None) -> None:
        file = path / "smsgw.db"
        if template is not None:
            shutil.copyfile(template.file, file)
        self.file = file
        self.db = Database(f"sqlite:///{file}", sqlite_synchronous="NORMAL")
        self.devices = DeviceRepository(self.db)
        self.repo = MessageRepository(self.db)
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
        return redeemed[0].device_id

    def online(self, device: str, session: str, held: Sequence[str] = (), now: datetime = T0) -> None:
        self.devices.set_online(device, session, app_version="t", sims=(), now=now)
        self.repo.open_session(self.owner, device, session, held, now)

    def state(self, message_id: str) -> State:
        return self.repo.get(self.owner, message_id).state


class EventLogChecker:
    """(a): every recipient history starts PENDING, moves only as `may_move` allows, and
    ends in the recipient's stored state. Reads the log incrementally, by cursor."""

    def __init__(self, repo: MessageRepository, owner: str) -> None:
        self.repo, self.owner = repo, owner
        self.last = 0
        self.history: dict[tuple[str, int], list[State]] = defaultdict(list)
        self.message_state: dict[str, State] = {}

    def check(self, snaps: dict[str, Snap]) -> None:
        events = self.repo.events_after(self.owner, self.last, limit=1_000_000)
        for e in events:
            assert e.id > self.last, "event ids must increase"
            self.last = e.id
            states = self.history[(e.message_id, e.recipient_index)]
            if not states:
                assert e.state == P, (e, "first state must be PENDING")
            else:
                assert may_move(states[-1], e.state), (
                    f"{e.message_id}[{e.recipient_index}] moved {states[-1].name} -> {e.state.name}: {states}"
                )
            states.append(e.state)
            self.message_state[e.message_id] = e.message_state
        for mid, snap in snaps.items():
            for idx, state in enumerate(snap.recipients):
                states = self.history.get((mid, idx))
                assert states, f"{mid}[{idx}] has no event"
                assert states[-1] == state, (mid, idx, states, snap.recipients)
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
        self.in_flight: dict[str, set[str]] = {d: set() for d in self.devs}  # delivered, not yet accepted by the phone
        self.phone_held: dict[str, set[str]] = {d: set() for d in self.devs}
        self.server_accepted: set[str] = set()
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

    def online(self, device: str, session: str, held: list[str], now: datetime) -> None:
        self.device_repo.set_online(device, session, app_version="t", sims=(), now=now)
        self.repo.open_session(self.owner, device, session, held, now)

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
        if any(self.dispatched_to.get(m) in online for m in self.server_accepted):
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
        if before.state in (P, D):
            record, device = self.repo.cancel(self.owner, mid, now)
            assert record.state == C
            assert all(r.state == C for r in record.recipients)
            # The device is named whenever a phone may hold the message (it gets a Drop).
            assert device == (before.device_id if before.ever_dispatched else None)
        elif before.state == C:
            record, device = self.repo.cancel(self.owner, mid, now)
            assert (record.state, device) == (C, before.device_id if before.ever_dispatched else None)
        else:
            with pytest.raises(FailedPrecondition):
                self.repo.cancel(self.owner, mid, now)
            assert self.snaps()[mid] == before

    def expire_due(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        before = self.snaps()
        due = {m.id for m in before.values() if m.state in (P, D) and m.valid_until is not None and m.valid_until <= self.now}
        devices = self.repo.expire_due(self.now)
        assert devices == {before[m].device_id for m in due if before[m].ever_dispatched}
        after = self.snaps()
        for mid, m in after.items():
            if mid in due:
                assert m.state == E and set(m.recipients) == {E}
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
        self.online(device, sid, held, self.tick())
        self.session[device] = sid
        self.in_flight[device] = set()
        after = self.snaps()
        for mid, m in before.items():
            if mid in held and m.device_id == device and m.state in (P, D):
                assert after[mid].state == A, (mid, m, after[mid])
                self.server_accepted.add(mid)
            elif m.device_id == device and m.state == D:
                # Dispatched on an older session and not held: back to PENDING, re-sendable.
                assert after[mid].state == P, (mid, m, after[mid])
            elif (
                m.state == P and not m.pinned and not m.ever_dispatched and m.device_id != device
                and (m.device_id is None or self.session[m.device_id] is None)
            ):
                # Waiting for no phone in particular (unrouted, or routed to an offline phone
                # that never got it): the phone that connects adopts it.
                assert after[mid] == dataclasses.replace(m, device_id=device), (mid, m, after[mid])
            else:
                assert after[mid] == m

    def dispatch(self, device: str, limit: int) -> None:
        sid = self.session[device]
        assert sid is not None
        now = self.tick()
        before = self.snaps()
        pending = sorted(
            (m for m in before.values() if m.device_id == device and m.state == P), key=lambda m: (-m.priority, m.id)
        )
        live = [m.id for m in pending if m.valid_until is None or m.valid_until > now]
        out = self.repo.dispatch(device, sid, limit, now)
        ids = [r.id for r in out]
        # Priority then FIFO; due ones are expired and never take a slot from a live one.
        assert ids == live[:limit]
        after = self.snaps()
        for r in out:
            assert r.state == D and r.device_id == device
            assert after[r.id].session_id == sid and after[r.id].ever_dispatched
            self.dispatched_to[r.id] = device
        for m in pending:
            if m.id not in live:
                assert after[m.id].state == E
        self.in_flight[device] |= set(ids)

    def phone_accepts(self, data: st.DataObject) -> None:
        """The phone stores some delivered messages and answers ACCEPTED. The delivered ones
        may have been cancelled or expired since (the Drop did not reach it yet). With
        `lost` the receipt never reaches storage (its session is about to die); the phone
        holds the messages anyway and lists them in a later Hello."""
        device = data.draw(st.sampled_from([d for d in self.open_devices() if self.in_flight[d]]))
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.in_flight[device])), min_size=1, unique=True))
        lost, repeat = data.draw(st.booleans(), label="lost"), data.draw(st.booleans(), label="repeat")
        self.in_flight[device] -= set(chosen)
        self.phone_held[device] |= set(chosen)
        if lost:
            return
        before = self.snaps()
        receipts = [ReceiptUpdate(mid, A, 0) for mid in chosen]
        changed = self.repo.apply_receipts(device, receipts * (2 if repeat else 1), self.tick())
        after = self.snaps()
        expected = 0
        for mid in chosen:
            if before[mid].state in (P, D):
                assert after[mid].state == A, (before[mid], after[mid])
                expected += sum(1 for s in before[mid].recipients if may_move(s, A))
                self.server_accepted.add(mid)
            else:
                assert after[mid] == before[mid]
        assert changed == expected
        assert self.repo.apply_receipts(device, receipts, self.tick()) == 0  # a repeat changes nothing

    def phone_reports(self, data: st.DataObject) -> None:
        """SENT / DELIVERED / FAILED for recipients of accepted messages, in any order,
        repeated; from the wrong device they change nothing."""
        mid = data.draw(st.sampled_from(sorted(m for m in self.server_accepted if self.dispatched_to[m] in self.open_devices())))
        device = self.dispatched_to[mid]
        before = self.snaps()
        n = len(before[mid].recipients)
        receipts = data.draw(
            st.lists(
                st.builds(
                    ReceiptUpdate,
                    st.just(mid),
                    st.sampled_from([S, DL, F]),
                    st.integers(0, n),  # n is out of range: ignored
                    st.sampled_from(["", "carrier says no"]),
                ),
                min_size=1,
                max_size=5,
            )
        )
        if data.draw(st.integers(0, 4), label="wrong device") == 0:
            other = next(d for d in self.devs if d != device)
            assert self.repo.apply_receipts(other, receipts, self.tick()) == 0
            assert self.snaps() == before
            return
        expect = list(before[mid].recipients)
        moves = 0
        for r in receipts:
            if r.recipient_index < n and may_move(expect[r.recipient_index], r.state):
                expect[r.recipient_index] = r.state
                moves += 1
        assert self.repo.apply_receipts(device, receipts, self.tick()) == moves
        assert self.snaps()[mid].recipients == tuple(expect)

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
            if m.device_id == device and m.state == D and m.session_id == sid:
                assert mid_state[mid].state == P
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
        out = self.repo.dispatch(device, sid, data.draw(st.integers(1, 3), label="limit"), now)
        for r in out:
            self.dispatched_to[r.id] = device
        if out:
            self.phone_held[device] |= set(data.draw(st.lists(st.sampled_from([r.id for r in out]), unique=True)))
        self.repo.close_session(device, sid, now)
        after = self.snaps()
        for r in out:
            assert after[r.id].state == P and after[r.id].ever_dispatched

    # -- invariants --

    @invariant()
    def consistent(self) -> None:
        snaps = self.snaps()
        assert set(snaps) == set(self.sent)
        # (a)
        self.events.check(snaps)
        for mid, m in snaps.items():
            # (b)
            if m.state == D or D in m.recipients:
                assert m.device_id is not None and m.session_id == self.session[m.device_id], (
                    f"{mid} is DISPATCHED on session {m.session_id!r}, but the open one is "
                    f"{self.session.get(m.device_id or '')!r}: stuck, never re-sent"
                )
            assert m.state in (P, D) or m.state in FINAL_STATES or m.state in (A, S)
            # (c)
            if mid in self.server_accepted:
                assert m.state not in NOT_HELD, (mid, m)
                assert not set(m.recipients) & NOT_HELD, (mid, m)
            # (d)
            assert m.state == derive_message_state(list(m.recipients), m.with_delivery_report), m
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
        ids = [r.id for r in listed]
        assert len(ids) == len(set(ids)) == len(snaps)
        assert ids == sorted(ids, reverse=True)
        for r in listed:
            assert r.state == snaps[r.id].state
            assert r.state == derive_message_state([x.state for x in r.recipients], r.with_delivery_report)


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
    assert record.state == C and device is None
    assert repo.cancel(owner, pending.id, T0)[1] is None  # cancelling twice is fine

    dispatched, _ = repo.create(owner, new_message(device_id=dev), T0)
    accepted, _ = repo.create(owner, new_message(2, device_id=dev), T0)
    world.online(dev, "s1")
    assert {r.id for r in repo.dispatch(dev, "s1", 10, T0)} == {dispatched.id, accepted.id}
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
    assert got.state == F and got.recipients[1].error == "no credit"
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
    assert len(repo.dispatch(dev, "s1", 10, T0)) == 3
    repo.apply_receipts(dev, [ReceiptUpdate(a.id, A, 0)], T0)
    # The phone also stored b, but the session died before its receipt was stored.
    repo.close_session(dev, "s1", T0)
    assert [world.state(x.id) for x in (a, b, c)] == [A, P, P]
    world.online(dev, "s2", held=[b.id])
    assert [world.state(x.id) for x in (a, b, c)] == [A, A, P]
    assert [r.id for r in repo.dispatch(dev, "s2", 10, T0)] == [c.id]
    # A new session that replaces s2 without s2 closing first still frees c.
    world.online(dev, "s3")
    assert world.state(c.id) == P
    repo.close_session(dev, "s2", T0)  # the late close of the replaced session
    assert [r.id for r in repo.dispatch(dev, "s3", 10, T0)] == [c.id]
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
        assert [r.id for r in world.repo.dispatch(dev, "s1", 5, T0)] == [m.id]
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
    assert repo.dispatch(dev, "s1", 0, T0) == []
    got = [r.id for r in repo.dispatch(dev, "s1", 2, T0)] + [r.id for r in repo.dispatch(dev, "s1", 5, T0)]
    mids = sorted([first.id, second.id])
    assert got == [high.id, *mids, low.id]
    assert repo.dispatch(dev, "s1", 5, T0) == []


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
    assert sorted(r.id for r in got) == sorted(m.id for m in live)


def test_expire_due_only_moves_unaccepted_past_valid_until(world: World) -> None:
    repo, owner = world.repo, world.owner
    dev = world.device_ids[0]
    soon = T0 + timedelta(seconds=30)
    world.online(dev, "s1")
    dispatched, _ = repo.create(owner, new_message(device_id=dev, valid_until=soon, priority=3), T0)
    accepted, _ = repo.create(owner, new_message(device_id=dev, valid_until=soon, priority=2), T0)
    assert [r.id for r in repo.dispatch(dev, "s1", 2, T0)] == [dispatched.id, accepted.id]
    repo.apply_receipts(dev, [ReceiptUpdate(accepted.id, A, 0)], T0)
    pending, _ = repo.create(owner, new_message(2, device_id=dev, valid_until=soon), T0)
    future, _ = repo.create(owner, new_message(device_id=dev, valid_until=soon + timedelta(hours=1)), T0)
    forever, _ = repo.create(owner, new_message(device_id=dev), T0)
    unrouted_owner = create_owner(world.db, "nodevices", T0)
    unrouted, _ = repo.create(unrouted_owner, new_message(valid_until=soon), T0)

    assert repo.expire_due(soon - timedelta(seconds=1)) == set()
    assert repo.expire_due(soon) == {dev}  # only the DISPATCHED one needs a Drop
    assert world.state(dispatched.id) == E
    assert world.state(pending.id) == E
    assert [r.error for r in repo.get(owner, pending.id).recipients] == [
        "valid_until passed before a phone accepted it"
    ] * 2
    assert repo.get(unrouted_owner, unrouted.id).state == E
    assert world.state(accepted.id) == A
    assert world.state(future.id) == P
    assert world.state(forever.id) == P
    assert repo.final_states(dev, [dispatched.id, accepted.id, future.id]) == {dispatched.id: E}
    assert repo.final_states("other-device", [dispatched.id]) == {}  # scoped to the device
    assert repo.expire_due(soon) == set()  # nothing left to do


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
    assert [r.id for r in repo.dispatch(d0, "s1", 1, T0)] == [pinned.id]
    assert [r.id for r in repo.dispatch(d0, "s1", 1, T0)] == [was_dispatched.id]
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
