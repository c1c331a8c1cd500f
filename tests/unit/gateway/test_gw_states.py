"""gateway.types: the forward-only recipient state rule and the derived message state.

DESIGN.md "Message model": PENDING -> DISPATCHED -> ACCEPTED -> SENT -> DELIVERED, or
FAILED / EXPIRED (before send) / CANCELLED; transitions only move forward, a late or
repeated receipt never moves a state back. EXPIRED is reachable until a phone reports SENT
(issue 4: a phone holding an expired recipient is told to drop it); CANCELLED only before a
phone accepted. (A retry after a retryable failure is a new attempt, not a move: see
test_gw_scheduler.) The phone's truth wins over the server's guess (issue 14): EXPIRED and
CANCELLED, chosen by the server while a phone may hold the recipient, yield to a SENT or
DELIVERED the phone reports; FAILED and DELIVERED, the phone's own word, never change.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.types import FINAL_STATES, PROVISIONAL_STATES, UNACCEPTED_STATES, State, derive_message_state, may_move

P, D, A, S = State.PENDING, State.DISPATCHED, State.ACCEPTED, State.SENT
DL, F, E, C = State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED

# Written out by hand from the rule, not computed from the implementation's table.
ALLOWED: dict[State, set[State]] = {
    P: {D, A, S, DL, F, E, C},
    D: {P, A, S, DL, F, E, C},
    A: {S, DL, F, E},
    S: {DL, F},
    DL: set(),
    F: set(),
    E: {S, DL},  # the phone sent it after all (the Drop came too late)
    C: {S, DL},
}

# The rank along the forward path (PENDING and DISPATCHED share one).
RANK = {P: 0, D: 0, A: 1, S: 2, DL: 3, F: 3, E: 3, C: 3}


def test_table_covers_every_state() -> None:
    assert set(ALLOWED) == set(State)
    assert len(State) == 8
    assert FINAL_STATES == {DL, F, E, C}
    assert UNACCEPTED_STATES == {P, D}
    assert PROVISIONAL_STATES == {E, C}


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(State, State)), ids=lambda s: s.name
)
def test_may_move_table(old: State, new: State) -> None:
    assert may_move(old, new) is (new in ALLOWED[old])


@pytest.mark.parametrize("final", [DL, F])
def test_the_phones_final_states_never_change(final: State) -> None:
    assert not any(may_move(final, new) for new in State)


@pytest.mark.parametrize("provisional", [E, C])
def test_server_verdicts_yield_only_to_the_phone_sending(provisional: State) -> None:
    """EXPIRED / CANCELLED move only to SENT or DELIVERED (never back to the forward path:
    an ACCEPTED receipt for a dropped recipient, or a FAILED, leaves the verdict)."""
    assert {new for new in State if may_move(provisional, new)} == {S, DL}


def test_cancelled_only_before_a_phone_accepted() -> None:
    assert {old for old in State if may_move(old, C)} == {P, D}


def test_expired_only_before_a_phone_sent() -> None:
    assert {old for old in State if may_move(old, E)} == {P, D, A}


@given(st.lists(st.sampled_from(list(State)), max_size=40), st.sampled_from([P, D]))
@settings(max_examples=200, database=None)
def test_any_attempted_sequence_keeps_rank_non_decreasing(attempts: list[State], start: State) -> None:
    """Nothing moves backwards, except a provisional server verdict (EXPIRED / CANCELLED)
    overridden by the phone's evidence (SENT / DELIVERED), at most once per history."""
    history = [start]
    for new in attempts:
        if may_move(history[-1], new):
            history.append(new)
    overrides = 0
    for before, after in itertools.pairwise(history):
        if before in PROVISIONAL_STATES:
            assert after in (S, DL), history
            overrides += 1
            continue
        assert RANK[after] >= RANK[before], history
        # Equal rank only for the PENDING <-> DISPATCHED pair.
        if RANK[after] == RANK[before]:
            assert {before, after} == {P, D}, history
        assert before not in FINAL_STATES, history
    assert overrides <= 1, history
    # Once accepted, CANCELLED is unreachable; once sent, EXPIRED too.
    if A in history or S in history:
        first_accepted = min(i for i, s in enumerate(history) if s in (A, S))
        assert C not in history[first_accepted:], history
    if S in history:
        assert E not in history[history.index(S):], history


# ---- derive_message_state -----------------------------------------------------------


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.name)
@pytest.mark.parametrize("report", [True, False])
def test_derive_all_same(state: State, report: bool) -> None:
    assert derive_message_state([state], report) == state
    assert derive_message_state([state, state, state], report) == state


@pytest.mark.parametrize(
    ("states", "report", "expected"),
    [
        # Least advanced moving state wins (PENDING before DISPATCHED at equal rank).
        ([P, D], True, P),
        ([D, A], True, D),
        ([A, S], True, A),
        ([S, A, D], True, D),
        ([P, DL, F], True, P),
        ([A, DL], True, A),
        ([D, C], True, D),
        # With a delivery report SENT is still moving.
        ([S, DL], True, S),
        ([S, F], True, S),
        ([S, S], True, S),
        # Without one SENT counts as done.
        ([S, DL], False, S),
        ([S, F], False, F),
        ([S, E], False, E),
        ([S, C], False, C),
        ([A, S], False, A),
        ([S, S, DL], False, S),
        # All done, mixed: FAILED > EXPIRED > CANCELLED > SENT.
        ([DL, F], True, F),
        ([DL, E], True, E),
        ([DL, C], True, C),
        ([E, C], True, E),
        ([F, E, C, DL], True, F),
        ([C, DL, DL], True, C),
        ([E, DL], False, E),
        ([DL, DL, DL], True, DL),
    ],
)
def test_derive_mixes(states: list[State], report: bool, expected: State) -> None:
    assert derive_message_state(states, report) == expected


@given(st.lists(st.sampled_from(list(State)), min_size=1, max_size=6), st.booleans())
def test_derive_is_one_of_the_states_or_sent(states: list[State], report: bool) -> None:
    got = derive_message_state(states, report)
    assert got in states or got == S
    # Order of recipients does not matter.
    assert derive_message_state(list(reversed(states)), report) == got
    moving = [s for s in states if s not in FINAL_STATES and not (s == S and not report)]
    if moving:
        assert RANK[got] == min(RANK[s] for s in moving)
