"""One phone's dispatch state in memory: its queue, its pacing history, and the scheduler's
choice of what goes next (DESIGN "Runtime shape": the bridge owns dispatch state; the
database is the log).

The choice (`plan`) is pure: it reads the queue and the history and says what to claim,
which recipients cannot go (a pinned SIM the phone lacks), what pacing holds back and
when to look again. The repository writes a plan in one transaction and puts the written
rows back (`put`); `MessageRepository.dispatch` builds a queue fresh from storage and runs
the same plan, so a queue kept in memory and a fresh load decide alike (a property test
holds them together).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.messages.pacing import BYPASS_PRIORITY, DevicePacing, PacingHistory, Sent, history_span, month_start
from gateway.messages.rows import Msg, Rcp
from gateway.types import State

__all__ = ["DeviceQueue", "Plan", "Claim"]

_PENDING = int(State.PENDING)


@dataclass(slots=True)
class Claim:
    """Recipients of one message to dispatch at one attempt from one SIM (one Deliver)."""

    message_id: str
    attempt: int
    sim: int
    indices: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    """What one dispatch round decided (see `DeviceQueue.plan`)."""

    claims: list[Claim] = field(default_factory=list)
    missing_sim: list[tuple[str, int]] = field(default_factory=list)  # (message, recipient): its pinned SIM is absent
    paced: list[Rcp] = field(default_factory=list)  # recipients whose paced_until changed (display)
    wake_at: datetime | None = None  # the earliest a held-back recipient may go
    expired: bool = False  # a queued message is past valid_until: expire the device's rows first


class DeviceQueue:
    """The PENDING messages routed to one phone, in priority-then-FIFO order, with the
    phone's pacing, SIM slots and dispatch history.

    Holds each message's row and all its recipients' rows as last written, so a plan needs
    no read. Used from one place at a time (the session's dispatch, through the writer).
    `busy` is set while a round that changes it runs and cleared by its caller after the
    commit: a round that finds it set (the one before failed midway and its transaction
    rolled back, so memory may be ahead of storage) reloads the queue. `needs_reload`:
    a round found storage changed behind the queue's back.
    """

    def __init__(
        self,
        device_id: str,
        pacing: DevicePacing,
        slots: tuple[int, ...],
        history: PacingHistory | None,
        messages: Iterable[tuple[Msg, list[Rcp]]] = (),
        *,
        now: datetime | None = None,
    ) -> None:
        self.device_id = device_id
        self.pacing = pacing
        self.slots = slots
        self.history = history
        self.busy = False
        self.needs_reload = False
        # The month the history's distinct-recipient counts are of (they restart each month).
        self._month = month_start(now) if now is not None else None
        self._entries: dict[str, tuple[Msg, list[Rcp]]] = {}
        self._order: list[tuple[int, str]] = []  # (-priority, id): priority first, then FIFO (ULIDs)
        for msg, rcps in messages:
            self.put(msg, rcps)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    def entries(self) -> list[tuple[Msg, list[Rcp]]]:
        """The queue in dispatch order (for tests and the model check)."""
        return [self._entries[message_id] for _, message_id in self._order]

    def put(self, msg: Msg, rcps: list[Rcp]) -> None:
        """Hold a message as it is stored now: queued while it is PENDING on this phone with
        a PENDING recipient, else dropped from the queue."""
        queued = (
            msg.device_id == self.device_id
            and msg.state == _PENDING
            and any(r.state == _PENDING for r in rcps)
        )
        old = self._entries.get(msg.id)
        if old is not None and old[0].priority != msg.priority:
            self._unorder(old[0])
            old = None
        if not queued:
            if msg.id in self._entries:
                self.remove(msg.id)
            return
        if old is None:
            insort(self._order, (-msg.priority, msg.id))
        self._entries[msg.id] = (msg, rcps)

    def remove(self, message_id: str) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            self._unorder(entry[0])

    def _unorder(self, msg: Msg) -> None:
        key = (-msg.priority, msg.id)
        i = bisect_left(self._order, key)
        if i < len(self._order) and self._order[i] == key:
            del self._order[i]

    def get(self, message_id: str) -> tuple[Msg, list[Rcp]] | None:
        return self._entries.get(message_id)

    def next_gate(self, now: datetime) -> datetime | None:
        """When the next scheduled or backed-off recipient comes due."""
        gates = [
            r.not_before
            for msg, rcps in self._entries.values()
            for r in rcps
            if r.state == _PENDING and r.not_before is not None and r.not_before > now
        ]
        return min(gates, default=None)

    def plan(self, room: int, now: datetime, in_flight: Collection[str] = (), *, window: int | None = None) -> Plan:
        """What to dispatch now: at most `room` Delivers, at most one per message and none
        for a message in flight, in priority-then-FIFO order among the recipients that are
        due (`window`: look at most at this many due messages, default max(room * 4, 64)).

        Pacing (gateway.messages.pacing) picks each recipient's SIM: the pinned one, else
        the one free soonest (least recently used on a tie: SIM rotation). A recipient its
        SIMs may not send yet closes them for this round, so nothing overtakes it on them;
        except one held back only by the distinct-recipients-per-month cap (a number new
        this month on SIMs that reached it): it waits for the next month without stopping
        the messages behind it to numbers already counted. Claims are recorded in the
        history as they are made (the next choice counts them).
        """
        plan = Plan()
        if room <= 0:
            return plan
        window = max(room * 4, 64) if window is None else window
        history, pacing, slots = self.history, self.pacing, self.slots
        if history is not None:
            # A session lasts days: forget what every window has left, start a new month's counts.
            history.forget_before(now - history_span(pacing))
            if self._month != month_start(now):
                self._month = month_start(now)
                history.start_month()
        closed: set[int] = set()
        claims: dict[str, Claim] = {}
        seen = 0
        for _, message_id in self._order:
            if seen >= window:
                break
            msg, rcps = self._entries[message_id]
            if msg.valid_until is not None and msg.valid_until <= now:
                plan.expired = True
                continue
            if not any(r.state == _PENDING and (r.not_before is None or r.not_before <= now) for r in rcps):
                continue
            seen += 1
            if message_id in in_flight or (message_id not in claims and len(claims) >= room):
                continue
            for r in rcps:
                if r.state != _PENDING or (r.not_before is not None and r.not_before > now):
                    continue
                if msg.sim_number and msg.sim_number not in slots:
                    plan.missing_sim.append((message_id, r.idx))
                    continue
                options = [x for x in ((msg.sim_number,) if msg.sim_number else slots) if x not in closed]
                if not options:
                    break
                sim, ready = self._pick_sim(options, msg, r, now)
                claim = claims.get(message_id)
                if claim is not None and (claim.attempt, claim.sim) != (r.attempt, sim):
                    closed.add(sim)  # it goes next round; nothing later overtakes it on that SIM
                    break  # one Deliver per message per round
                if ready > now:
                    plan.wake_at = min(plan.wake_at or ready, ready)
                    if r.paced_until != ready:
                        r.paced_until = ready
                        plan.paced.append(r)
                    if history is not None and self._month_capped(options, msg, r):
                        continue  # it cannot go this month: the numbers already counted may
                    closed.update(options)  # FIFO per SIM: nothing later overtakes it there
                    break
                if history is not None:
                    history.record(Sent(now, sim, max(msg.parts, 1), r.phone_number))
                if claim is None:
                    claim = claims[message_id] = Claim(message_id, r.attempt, sim)
                claim.indices.append(r.idx)
        plan.claims = list(claims.values())
        return plan

    def _pick_sim(self, options: list[int], msg: Msg, r: Rcp, now: datetime) -> tuple[int, datetime]:
        """The SIM free soonest among `options` (least recently used on a tie) and when."""
        history, pacing = self.history, self.pacing
        if history is None:
            # Unpaced: a pinned SIM, else the phone's default SIM (0).
            return msg.sim_number, now
        bypass = pacing.priority_bypass and msg.priority >= BYPASS_PRIORITY
        parts = max(msg.parts, 1)
        timed = [(history.ready_at(pacing, x, parts, r.phone_number, now, bypass=bypass), history.last_at(x), x) for x in options]
        ready, _, sim = min(timed)
        return sim, ready

    def _month_capped(self, options: list[int], msg: Msg, r: Rcp) -> bool:
        """Whether only the distinct-recipients-per-month cap keeps `r` off every SIM it may use."""
        pacing, history = self.pacing, self.history
        assert history is not None
        if pacing.priority_bypass and msg.priority >= BYPASS_PRIORITY:
            return False
        return all(history.month_full(pacing, x, r.phone_number) for x in options)
