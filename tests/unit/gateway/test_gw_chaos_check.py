"""The chaos checker catches each class of violation, from hand-made histories.

Each test starts from a small history that keeps every promise (the checker finds nothing),
breaks one promise the way a buggy server would, and expects exactly that check to fail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.bench.chaos_check import (
    ACCEPTED, CANCELLED, DELIVERED, DISPATCHED, EXPIRED, FAILED, PENDING, SENT, check, may_follow,
)
from gateway.bench.chaos_history import (
    FAIL, INFO, OK, Call, FinalMessage, FinalRecipient, History, ModemSend, Nemesis, PhoneFrame, WatchEvent,
)

_PATH = (PENDING, DISPATCHED, ACCEPTED, SENT, DELIVERED)


def _good() -> History:
    """Two messages: m1 sent once (its first call's answer was lost: info, then ok), m2 retried
    after a NO_SERVICE failure with no part sent (attempt 2 went out)."""
    h = History()
    h.calls = [
        Call("send", "k1", "", INFO, "UNAVAILABLE", 1),
        Call("send", "k1", "m1", OK, "", 1),
        Call("send", "k2", "m2", OK, "", 1),
    ]
    states = [("m1", s, "") for s in _PATH]
    states += [("m2", s, "") for s in (PENDING, DISPATCHED, ACCEPTED)]
    states += [("m2", PENDING, "retry 2 of 4 after no_service")]
    states += [("m2", s, "") for s in _PATH[1:]]
    h.log = [WatchEvent(n, mid, 0, state, error) for n, (mid, state, error) in enumerate(states, start=1)]
    h.watch = list(h.log)
    h.frames = [
        PhoneFrame("p0", "welcome"),
        PhoneFrame("p0", "deliver", "m1", (0,), 1),
        PhoneFrame("p0", "deliver", "m1", (0,), 1),  # a duplicate Deliver after a reconnect: same id
        PhoneFrame("p1", "deliver", "m2", (0,), 1),
        PhoneFrame("p1", "deliver", "m2", (0,), 2),
    ]
    h.modem = [
        ModemSend("p0", "m1", 0, 1, 1, 1),
        ModemSend("p1", "m2", 0, 1, 1, 0, "NO_SERVICE"),
        ModemSend("p1", "m2", 0, 2, 1, 1),
    ]
    h.final = [
        FinalMessage("m1", "k1", DELIVERED, (FinalRecipient(DELIVERED, 1, 1),)),
        FinalMessage("m2", "k2", DELIVERED, (FinalRecipient(DELIVERED, 2, 1),)),
    ]
    h.nemeses = [Nemesis("kill9", 0.0, 1.0)]
    return h


def _checks(h: History) -> set[str]:
    return {p.check for p in check(h)}


def test_a_history_keeping_every_promise_passes() -> None:
    assert check(_good()) == []


def test_a_duplicate_sms_is_caught() -> None:
    h = _good()
    h.modem.append(ModemSend("p0", "m1", 0, 1, 1, 1))  # the phone sent m1 again
    assert _checks(h) == {"no_sms_twice"}


def test_the_same_recipient_sent_by_two_phones_is_a_duplicate() -> None:
    h = _good()
    h.frames.append(PhoneFrame("p1", "deliver", "m1", (0,), 1))
    h.modem.append(ModemSend("p1", "m1", 0, 1, 1, 1))
    assert _checks(h) == {"no_sms_twice"}


def test_a_partly_sent_attempt_then_another_is_a_duplicate() -> None:
    h = _good()
    h.modem[1] = ModemSend("p1", "m2", 0, 1, 2, 1, "NO_SERVICE")  # part 1 of 2 went out, then a retry
    h.modem[2] = ModemSend("p1", "m2", 0, 2, 2, 2)
    assert "no_sms_twice" in _checks(h)


def test_a_lost_message_is_caught() -> None:
    h = _good()
    h.final = h.final[:1]  # m2 was acknowledged, then vanished
    h.log = [e for e in h.log if e.message_id != "m2"]
    h.watch = list(h.log)
    assert _checks(h) == {"no_loss"}


def test_two_messages_for_one_key_are_caught() -> None:
    h = _good()
    h.final.append(FinalMessage("m3", "k1", CANCELLED, (FinalRecipient(CANCELLED, 1, 0),)))
    h.log.append(WatchEvent(20, "m3", 0, CANCELLED))
    h.watch = list(h.log)
    assert _checks(h) == {"one_message_per_key"}


def test_two_answers_for_one_key_are_caught() -> None:
    h = _good()
    h.calls.append(Call("send", "k1", "m9", OK, "", 1))  # a retry of k1 answered with another id
    assert _checks(h) == {"one_message_per_key"}


def test_a_refused_send_that_was_stored_is_caught() -> None:
    h = _good()
    h.calls = [c for c in h.calls if c.key != "k2"] + [Call("send", "k2", "", FAIL, "INVALID_ARGUMENT", 1)]
    assert _checks(h) == {"one_message_per_key"}


def test_a_backward_move_is_caught() -> None:
    h = _good()
    h.log.append(WatchEvent(30, "m1", 0, SENT))  # DELIVERED -> SENT
    h.watch = list(h.log)
    problems = check(h)
    assert {p.check for p in problems} >= {"forward_only"}
    assert any("DELIVERED -> SENT" in p.detail for p in problems)


def test_a_return_to_pending_that_is_not_a_retry_is_caught() -> None:
    h = _good()
    m2 = [e for e in h.log if e.message_id == "m2"]
    retry = next(e for e in m2 if e.error)
    h.log[h.log.index(retry)] = replace(retry, error="")  # ACCEPTED -> PENDING with no retry
    h.watch = list(h.log)
    assert _checks(h) == {"forward_only"}


def test_a_missed_watch_event_is_caught() -> None:
    h = _good()
    del h.watch[3]
    problems = check(h)
    assert {p.check for p in problems} == {"watch_exactly_once"}
    assert "never reached the watch" in problems[0].detail


def test_a_watch_event_delivered_twice_is_caught() -> None:
    h = _good()
    h.watch.insert(5, h.watch[4])  # a resume replayed event 5
    assert _checks(h) == {"watch_exactly_once"}


def test_a_watch_that_ended_early_is_caught() -> None:
    h = _good()
    h.watch_complete = False
    assert _checks(h) == {"watch_exactly_once"}


def test_a_final_state_the_log_never_showed_is_caught() -> None:
    h = _good()
    h.log = [e for e in h.log if not (e.message_id == "m1" and e.state == DELIVERED)]
    h.watch = list(h.log)
    h.final[0] = replace(h.final[0], recipients=(FinalRecipient(DELIVERED, 1, 1),))
    assert _checks(h) == {"watch_exactly_once"}


def test_delivered_without_a_send_is_caught() -> None:
    h = _good()
    h.modem = [s for s in h.modem if s.message_id != "m1"]
    assert _checks(h) == {"state_matches_modem"}


def test_a_sent_sms_reported_cancelled_is_caught() -> None:
    h = _good()
    h.log = [e for e in h.log if e.message_id == "m1" and e.state in (PENDING, DISPATCHED)]
    h.log.append(WatchEvent(40, "m1", 0, CANCELLED))
    h.log += [e for e in _good().log if e.message_id == "m2"]
    h.log.sort(key=lambda e: e.event_id)
    h.watch = list(h.log)
    h.final[0] = FinalMessage("m1", "k1", CANCELLED, (FinalRecipient(CANCELLED, 1, 0),))
    assert _checks(h) == {"state_matches_modem"}  # the modem sent m1


def test_the_phones_truth_after_a_cancel_passes() -> None:
    h = _good()
    m1 = [WatchEvent(1, "m1", 0, PENDING), WatchEvent(2, "m1", 0, DISPATCHED), WatchEvent(3, "m1", 0, CANCELLED),
          WatchEvent(4, "m1", 0, SENT), WatchEvent(5, "m1", 0, DELIVERED)]
    h.log = m1 + [replace(e, event_id=e.event_id + 10) for e in h.log if e.message_id == "m2"]
    h.watch = list(h.log)
    assert check(h) == []


def test_an_unsettled_recipient_is_caught() -> None:
    h = _good()
    h.log = [e for e in h.log if not (e.message_id == "m1" and e.state in (SENT, DELIVERED))]
    h.watch = list(h.log)
    h.modem = [s for s in h.modem if s.message_id != "m1"]
    h.final[0] = FinalMessage("m1", "k1", ACCEPTED, (FinalRecipient(ACCEPTED, 1, 0),))
    assert _checks(h) == {"settled"}


def test_a_send_no_deliver_asked_for_is_caught() -> None:
    h = _good()
    h.frames = [f for f in h.frames if f.message_id != "m1"]
    assert _checks(h) == {"reached_a_phone"}


@pytest.mark.parametrize(
    ("old", "new", "error", "allowed"),
    [
        (PENDING, DISPATCHED, "", True),
        (DISPATCHED, PENDING, "session_lost", True),
        (ACCEPTED, PENDING, "", False),
        (ACCEPTED, PENDING, "retry 2 of 4 after no_service", True),
        (SENT, PENDING, "retry 2 of 4 after no_service", False),
        (ACCEPTED, CANCELLED, "", False),
        (DISPATCHED, CANCELLED, "", True),
        (ACCEPTED, EXPIRED, "", True),
        (SENT, EXPIRED, "", False),
        (EXPIRED, DELIVERED, "", True),
        (CANCELLED, SENT, "", True),
        (FAILED, SENT, "", False),
        (DELIVERED, FAILED, "", False),
        (SENT, SENT, "", False),
        (SENT, FAILED, "", True),
    ],
)
def test_the_lifecycle_rules(old: int, new: int, error: str, allowed: bool) -> None:
    assert may_follow(old, new, error) is allowed


def test_a_history_survives_save_and_load(tmp_path: Path) -> None:
    h = _good()
    h.watch_complete = False
    h.save(tmp_path / "h.jsonl")
    assert History.load(tmp_path / "h.jsonl") == h


@pytest.mark.parametrize(("final", "ok"), [(FAILED, True), (CANCELLED, True), (DELIVERED, False), (ACCEPTED, False)])
def test_a_partly_sent_failure_leaves_failed_or_the_servers_verdict(final: int, ok: bool) -> None:
    h = _good()
    h.modem = [s for s in h.modem if s.message_id != "m1"] + [ModemSend("p0", "m1", 0, 1, 2, 1, "GENERIC_FAILURE")]
    h.log = [e for e in h.log if e.message_id != "m1"]
    h.log += [WatchEvent(50, "m1", 0, PENDING), WatchEvent(51, "m1", 0, DISPATCHED), WatchEvent(52, "m1", 0, final)]
    h.watch = list(h.log)
    h.final[0] = FinalMessage("m1", "k1", final, (FinalRecipient(final, 1, 1),))
    assert ("state_matches_modem" not in _checks(h)) is ok
