"""The checker of RELIABILITY 1 and 29: judges a chaos run from its history alone.

It encodes the message lifecycle of docs/design.md on its own (not by calling the server's
`may_move`), so a rewrite that bends the rules in both places is still caught:

- ranks PENDING = DISPATCHED < ACCEPTED < SENT < DELIVERED = FAILED = EXPIRED = CANCELLED;
- PENDING <-> DISPATCHED both ways (dispatch, and a lost session's return);
- a retryable failure returns to PENDING as the next attempt (the event's error says
  "retry N of M ..."), from any state before SENT;
- final states never change, except EXPIRED/CANCELLED (the server's verdicts) yielding to
  SENT/DELIVERED (the phone's truth: the SMS went out);
- CANCELLED only before a phone accepted; EXPIRED only before SENT.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.bench.chaos_history import OK, FAIL, History, WatchEvent

__all__ = ["Problem", "CHECKS", "check", "may_follow", "summary"]

PENDING, DISPATCHED, ACCEPTED, SENT, DELIVERED, FAILED, EXPIRED, CANCELLED = range(1, 9)
NAMES = {1: "PENDING", 2: "DISPATCHED", 3: "ACCEPTED", 4: "SENT", 5: "DELIVERED", 6: "FAILED",
         7: "EXPIRED", 8: "CANCELLED"}
_RANK = {PENDING: 0, DISPATCHED: 0, ACCEPTED: 1, SENT: 2, DELIVERED: 3, FAILED: 3, EXPIRED: 3, CANCELLED: 3}
FINAL = frozenset({DELIVERED, FAILED, EXPIRED, CANCELLED})
_WENT_OUT = frozenset({SENT, DELIVERED})

CHECKS = (
    "one_message_per_key",  # each idempotency key made exactly one message, answered by one id
    "no_loss",  # every acknowledged send is stored
    "settled",  # every recipient ended in a final state
    "state_matches_modem",  # the final state says what the modem did
    "forward_only",  # no recipient state moved back, in the log or on the watch
    "watch_exactly_once",  # the watch saw every logged change once, and nothing else
    "no_sms_twice",  # no recipient went out twice
    "reached_a_phone",  # what a modem sent, a phone was handed in a Deliver
)


@dataclass(frozen=True, slots=True)
class Problem:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


def may_follow(old: int, new: int, error: str = "") -> bool:
    """Whether a recipient's logged state `new` may follow `old` (the rules above)."""
    if old in (EXPIRED, CANCELLED) and new in _WENT_OUT:
        return True
    if old in FINAL or old == new and new != PENDING:
        return False
    if new == PENDING:
        if error.startswith("retry "):
            return old in (PENDING, DISPATCHED, ACCEPTED)
        return old == DISPATCHED
    if new == CANCELLED:
        return old in (PENDING, DISPATCHED)
    if new == EXPIRED:
        return old in (PENDING, DISPATCHED, ACCEPTED)
    if {old, new} == {PENDING, DISPATCHED}:
        return True
    return _RANK[new] > _RANK[old]


def _name(state: int) -> str:
    return NAMES.get(state, str(state))


def check(h: History) -> list[Problem]:
    """Every problem the history shows; empty when the run kept every promise."""
    problems: list[Problem] = []
    problems += _keys(h)
    problems += _settled_and_modem(h)
    problems += _forward(h.log, "log") + _forward(list({e.event_id: e for e in h.watch}.values()), "watch")
    problems += _watch(h)
    problems += _sms(h)
    problems += _reached(h)
    return problems


def _keys(h: History) -> Iterable[Problem]:
    answered: dict[str, set[str]] = defaultdict(set)
    refused: set[str] = set()
    for call in h.calls:
        if call.op != "send":
            continue
        if call.outcome == OK:
            answered[call.key].add(call.message_id)
        elif call.outcome == FAIL:
            refused.add(call.key)
    tried = {c.key for c in h.calls if c.op == "send"}
    stored: dict[str, list[str]] = defaultdict(list)
    for m in h.final:
        stored[m.idempotency_key].append(m.id)
    ids = Counter(m.id for m in h.final)
    for mid, n in ids.items():
        if n > 1:
            yield Problem("one_message_per_key", f"message {mid} listed {n} times")
    for key, mids in stored.items():
        if len(mids) > 1:
            yield Problem("one_message_per_key", f"key {key}: {len(mids)} messages {sorted(mids)}")
        if key not in tried:
            yield Problem("one_message_per_key", f"message {mids[0]} has key {key!r} no client sent")
    for key, mids in answered.items():
        if len(mids) > 1:
            yield Problem("one_message_per_key", f"key {key}: answered with {len(mids)} ids {sorted(mids)}")
        if key not in stored:
            yield Problem("no_loss", f"key {key}: acknowledged as {sorted(mids)[0]}, not stored")
        elif not mids & set(stored[key]):
            yield Problem("one_message_per_key", f"key {key}: answered {sorted(mids)}, stored {stored[key]}")
    for key in refused - answered.keys():
        if key in stored:
            yield Problem("one_message_per_key", f"key {key}: refused, yet stored as {stored[key]}")


def _sends(h: History) -> dict[tuple[str, int], list[tuple[int, int, int, str]]]:
    """(message, recipient) -> [(attempt, parts, parts_sent, failure)] over every modem."""
    out: dict[tuple[str, int], list[tuple[int, int, int, str]]] = defaultdict(list)
    for s in h.modem:
        out[(s.message_id, s.recipient_index)].append((s.attempt, s.parts, s.parts_sent, s.failure))
    return out


def _settled_and_modem(h: History) -> Iterable[Problem]:
    sends = _sends(h)
    known = set()
    for m in h.final:
        for index, r in enumerate(m.recipients):
            key = (m.id, index)
            known.add(key)
            where = f"{m.id}[{index}]"
            if r.state not in FINAL:
                yield Problem("settled", f"{where} ended {_name(r.state)} (attempt {r.attempt})")
            attempts = sends.get(key, [])
            whole = [a for a in attempts if not a[3] and a[2] >= a[1]]
            partial = [a for a in attempts if a[2] > 0 and a not in whole]
            if whole and r.state not in _WENT_OUT:
                yield Problem("state_matches_modem", f"{where}: the modem sent it (attempt {whole[0][0]}), it ended {_name(r.state)}")
            if not whole and r.state in _WENT_OUT:
                yield Problem("state_matches_modem", f"{where}: ended {_name(r.state)}, no modem sent all its parts")
            # A FAILED receipt leaves the server's own verdicts (EXPIRED, CANCELLED) standing.
            if partial and not whole and r.state not in (FAILED, EXPIRED, CANCELLED):
                yield Problem("state_matches_modem", f"{where}: parts went out and it failed, it ended {_name(r.state)}")
            if r.state == FAILED and not any(a[3] for a in attempts):
                yield Problem("state_matches_modem", f"{where}: ended FAILED, no modem failed it")
    for key in sorted(sends.keys() - known):
        yield Problem("no_loss", f"{key[0]}[{key[1]}]: a modem sent it, no message lists it")


def _by_recipient(events: Iterable[WatchEvent]) -> dict[tuple[str, int], list[WatchEvent]]:
    out: dict[tuple[str, int], list[WatchEvent]] = defaultdict(list)
    for e in events:
        out[(e.message_id, e.recipient_index)].append(e)
    return out


def _forward(events: list[WatchEvent], source: str) -> list[Problem]:
    problems = []
    for (mid, index), seq in _by_recipient(sorted(events, key=lambda e: e.event_id)).items():
        for old, new in zip(seq, seq[1:], strict=False):
            if not may_follow(old.state, new.state, new.error):
                problems.append(Problem("forward_only", f"{source} {mid}[{index}]: {_name(old.state)} -> "
                                        f"{_name(new.state)} (events {old.event_id}, {new.event_id}, {new.error!r})"))
    return problems


def _watch(h: History) -> Iterable[Problem]:
    if not h.watch_complete:
        yield Problem("watch_exactly_once", "the live watch ended before the run did")
    seen = Counter(e.event_id for e in h.watch)
    for event_id, n in sorted(seen.items()):
        if n > 1:
            yield Problem("watch_exactly_once", f"event {event_id} delivered {n} times")
    ids = [e.event_id for e in h.watch]
    for a, b in zip(ids, ids[1:], strict=False):
        if b < a:
            yield Problem("watch_exactly_once", f"event {b} after event {a}")
            break
    logged = {e.event_id: e for e in h.log}
    watched = {e.event_id: e for e in h.watch}
    for event_id in sorted(logged.keys() - watched.keys()):
        e = logged[event_id]
        yield Problem("watch_exactly_once", f"event {event_id} ({e.message_id}[{e.recipient_index}] -> "
                      f"{_name(e.state)}) is in the log, never reached the watch")
    for event_id in sorted(watched.keys() - logged.keys()):
        yield Problem("watch_exactly_once", f"event {event_id} reached the watch, is not in the log")
    for event_id in sorted(watched.keys() & logged.keys()):
        if watched[event_id] != logged[event_id]:
            yield Problem("watch_exactly_once", f"event {event_id}: watched {watched[event_id]}, logged {logged[event_id]}")
    # Every final state was reported: the log's last event of each recipient is its final state.
    last = {key: seq[-1] for key, seq in _by_recipient(sorted(h.log, key=lambda e: e.event_id)).items()}
    for m in h.final:
        for index, r in enumerate(m.recipients):
            e = last.get((m.id, index))
            if e is None:
                yield Problem("watch_exactly_once", f"{m.id}[{index}]: ended {_name(r.state)}, no change was ever logged")
            elif e.state != r.state:
                yield Problem("watch_exactly_once", f"{m.id}[{index}]: ended {_name(r.state)}, last logged {_name(e.state)}")


def _sms(h: History) -> Iterable[Problem]:
    for (mid, index), attempts in sorted(_sends(h).items()):
        out = [a for a in attempts if a[2] > 0]
        if len(out) > 1:
            yield Problem("no_sms_twice", f"{mid}[{index}] went out {len(out)} times (attempts {[a[0] for a in out]})")


def _reached(h: History) -> Iterable[Problem]:
    handed = {(f.phone, f.message_id, i, f.attempt) for f in h.frames if f.kind == "deliver" for i in f.recipient_indices}
    for s in h.modem:
        if (s.phone, s.message_id, s.recipient_index, s.attempt) not in handed:
            yield Problem("reached_a_phone", f"{s.message_id}[{s.recipient_index}] attempt {s.attempt}: "
                          f"sent by {s.phone}'s modem, never delivered to it")


def summary(h: History) -> dict[str, int]:
    """The run's counts, for the report."""
    outcomes = Counter(c.outcome for c in h.calls if c.op == "send")
    return {
        "keys": len({c.key for c in h.calls if c.op == "send"}),
        "send_calls": sum(outcomes.values()),
        "send_info": outcomes["info"],
        "cancel_calls": sum(c.op == "cancel" for c in h.calls),
        "messages": len(h.final),
        "recipients": sum(len(m.recipients) for m in h.final),
        "delivered": sum(r.state == DELIVERED for m in h.final for r in m.recipients),
        "failed": sum(r.state == FAILED for m in h.final for r in m.recipients),
        "cancelled": sum(r.state == CANCELLED for m in h.final for r in m.recipients),
        "phone_truth": sum(  # recipients that went EXPIRED/CANCELLED, then SENT/DELIVERED
            any(a.state in (EXPIRED, CANCELLED) and b.state in _WENT_OUT for a, b in zip(seq, seq[1:], strict=False))
            for seq in _by_recipient(sorted(h.log, key=lambda e: e.event_id)).values()
        ),
        "delivers": sum(f.kind == "deliver" for f in h.frames),
        "sessions": sum(f.kind == "welcome" for f in h.frames),
        "modem_attempts": len(h.modem),
        "events": len(h.log),
        "watch_events": len(h.watch),
        "nemeses": len(h.nemeses),
        **{f"nemesis_{k}": v for k, v in sorted(Counter(n.kind for n in h.nemeses).items())},
    }
