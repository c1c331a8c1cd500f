"""Domain types shared by the core and the bridge: ids, states and the forward-only state rule.

The state table is the one place that decides which recipient transitions are legal
(DESIGN.md "Message model"); everything that writes a state asks `may_move`. Forward only,
except that a phone's SENT / DELIVERED overrides the server's EXPIRED / CANCELLED.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import NewType

__all__ = [
    "MessageId",
    "DeviceId",
    "OwnerId",
    "State",
    "EventKind",
    "FINAL_STATES",
    "UNACCEPTED_STATES",
    "UNSENT_STATES",
    "PROVISIONAL_STATES",
    "PHONE_EVIDENCE",
    "may_move",
    "is_settled",
    "derive_message_state",
    "utcnow",
]

MessageId = NewType("MessageId", str)
DeviceId = NewType("DeviceId", str)
OwnerId = NewType("OwnerId", str)


class State(IntEnum):
    """Recipient (and derived message) state; values match `smsgw.v1.State`."""

    PENDING = 1
    DISPATCHED = 2
    ACCEPTED = 3
    SENT = 4
    DELIVERED = 5
    FAILED = 6
    EXPIRED = 7
    CANCELLED = 8


FINAL_STATES = frozenset({State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED})
# "Not yet held by a phone": the states a session death returns to PENDING and cancel may end.
UNACCEPTED_STATES = frozenset({State.PENDING, State.DISPATCHED})
# "Not yet sent": what valid_until can still expire.
UNSENT_STATES = frozenset({State.PENDING, State.DISPATCHED, State.ACCEPTED})
# Final states the server chose on its own (a clock, a client's cancel) while a phone may
# already hold the recipient: a guess about the air, not a report from it.
PROVISIONAL_STATES = frozenset({State.EXPIRED, State.CANCELLED})
# What only a phone reports, and only once the SMS went out: it overrides a provisional state.
PHONE_EVIDENCE = frozenset({State.SENT, State.DELIVERED})

# Rank along the forward path. PENDING and DISPATCHED share a rank: a dispatch to a
# session that dies before the phone accepts returns the message to PENDING, and
# that is not a step back in what the phone holds.
_RANK = {
    State.PENDING: 0,
    State.DISPATCHED: 0,
    State.ACCEPTED: 1,
    State.SENT: 2,
    State.DELIVERED: 3,
    State.FAILED: 3,
    State.EXPIRED: 3,
    State.CANCELLED: 3,
}


def may_move(old: State, new: State) -> bool:
    """Whether a recipient may go from `old` to `new`.

    The phone's truth wins over the server's guess: EXPIRED and CANCELLED (the server's
    verdicts, sent to the phone as a Drop it may get too late) yield to SENT or DELIVERED,
    which only a phone's receipt sets: the SMS went out, and what went out cannot be
    called back. Other final states never change (FAILED and DELIVERED are the phone's
    own word). Otherwise the move must go up in rank, except the PENDING <-> DISPATCHED
    pair (dispatch, and return after a lost session). CANCELLED is only reachable before
    a phone accepted the recipient, EXPIRED before it was sent (the phone is told to drop it).
    """
    if old in PROVISIONAL_STATES and new in PHONE_EVIDENCE:
        return True
    if old in FINAL_STATES or old == new:
        return False
    if new == State.CANCELLED:
        return old in UNACCEPTED_STATES
    if new == State.EXPIRED:
        return old in UNSENT_STATES
    if {old, new} == {State.PENDING, State.DISPATCHED}:
        return True
    return _RANK[new] > _RANK[old]


def is_settled(state: State, with_delivery_report: bool) -> bool:
    """Nothing more will happen: a final state, or SENT when no delivery report was asked."""
    return state in FINAL_STATES or (state == State.SENT and not with_delivery_report)


def derive_message_state(states: list[State], with_delivery_report: bool) -> State:
    """The message state shown to clients, from its recipients' states.

    While any recipient is still on its way, the message shows the least advanced
    such state. When all are done: their common state, else FAILED if any failed,
    else EXPIRED, else CANCELLED, else SENT (a mix of SENT and DELIVERED).
    """

    moving = [s for s in states if not is_settled(s, with_delivery_report)]
    if moving:
        return min(moving, key=lambda s: (_RANK[s], s))
    distinct = set(states)
    if len(distinct) == 1:
        return states[0]
    for s in (State.FAILED, State.EXPIRED, State.CANCELLED):
        if s in distinct:
            return s
    return State.SENT


class EventKind(StrEnum):
    """What an event-log row records (`EventRow.kind`)."""

    MESSAGE = "message"  # a recipient's state change
    INBOUND = "inbound"  # an inbound SMS was stored


def utcnow() -> datetime:
    """Aware UTC now (storage and the wire both use aware UTC)."""
    return datetime.now(UTC)
