"""The simulated modem on its own (trio's MockClock), and the simulator's modem and SIM options.

The modem models what a real Android phone does, so server tests can prove the
scheduler never trips it: the per-app limit (30 parts in any sliding 60 s,
checked per send with its part count), failures on demand, and a log of every
part with its time and SIM.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from device_bridge.protocol import Delivery, FailureClass
from smsgw_agent import LimitDialog, ModemOptions, PartSent, SendResult, SimulatedModem, max_parts_in_window
from smsgw_agent.simulator import FAILURE_CLASSES, SimulatorOptions, _modem_options, _sims, run_simulator

NUMBER = "+15550000001"


def deliver(message_id: str = "m1", *, parts: int = 1, attempt: int = 1, sim: int = 0, index: int = 0) -> Delivery:
    return Delivery(message_id, (NUMBER,), text="x", parts=parts, attempt=attempt, sim_number=sim, recipient_indices=(index,))


@pytest.mark.trio
async def test_android_limit_is_a_sliding_window_that_keeps_a_part_exactly_one_window_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    modem = SimulatedModem(ModemOptions(send_delay=0, delivery_delay=0))
    start = trio.current_time()
    assert await modem.send(NUMBER, deliver("a", parts=20)) == SendResult(True, 20)
    await trio.sleep_until(start + 30)
    assert (await modem.send(NUMBER, deliver("b", parts=10))).ok
    assert modem.android_window_used() == 30
    # Full: one more part, of any send, raises the dialog; nothing goes out.
    refused = await modem.send(NUMBER, deliver("c", parts=1, attempt=3, sim=2, index=4))
    assert refused == SendResult(False, 0, FailureClass.LIMIT_EXCEEDED, "limit_exceeded")
    assert modem.dialogs == [LimitDialog(start + 30, 2, "c", 4, 3, 1)]
    assert len(modem.parts_log) == 30
    # Exactly 60 s after the first 20 Android still counts them (SmsUsageMonitor drops only older ones).
    await trio.sleep_until(start + 60)
    assert not (await modem.send(NUMBER, deliver("d"))).ok
    await trio.sleep_until(start + 60.001)
    assert (await modem.send(NUMBER, deliver("e", parts=20))).ok
    # The window is full again (b's 10 + e's 20): the next part is refused.
    assert not (await modem.send(NUMBER, deliver("f", parts=1))).ok
    assert [d.message_id for d in modem.dialogs] == ["c", "d", "f"]
    assert modem.sent == [("a", 0), ("b", 0), ("c", 4), ("d", 0), ("e", 0), ("f", 0)]
    assert modem.failed == [("c", 4), ("d", 0), ("f", 0)]
    assert len(modem.parts_log) == 50
    assert modem.max_parts_in_window(60.0) == 30


@pytest.mark.trio
async def test_android_limit_can_be_configured_or_switched_off(autojump_clock: object) -> None:
    off = SimulatedModem(ModemOptions(send_delay=0, android_limit_parts=0))
    for i in range(5):
        assert (await off.send(NUMBER, deliver(f"m{i}", parts=10))).ok
    assert off.dialogs == [] and len(off.parts_log) == 50
    small = SimulatedModem(ModemOptions(send_delay=0, android_limit_parts=3, android_limit_window=10.0))
    assert (await small.send(NUMBER, deliver("a", parts=3))).ok
    assert not (await small.send(NUMBER, deliver("b"))).ok
    await trio.sleep(10.5)
    assert (await small.send(NUMBER, deliver("c"))).ok
    # Radio failures still count against the limit, as in Android (checked before the radio).
    small.fail_next(FailureClass.NO_SERVICE)
    assert not (await small.send(NUMBER, deliver("d", parts=2))).ok
    assert small.android_window_used() == 3
    assert [d.message_id for d in small.dialogs] == ["b"]


@pytest.mark.trio
async def test_parts_go_out_one_send_delay_apart_with_callbacks_and_sim(autojump_clock: object) -> None:
    modem = SimulatedModem(ModemOptions(send_delay=0.5))
    start = trio.current_time()
    seen: list[tuple[int, float]] = []
    result = await modem.send(
        NUMBER, deliver("m1", parts=3, attempt=2, sim=2, index=7),
        on_part_sent=lambda k: seen.append((k, trio.current_time() - start)),
    )
    assert result == SendResult(True, 3)
    assert seen == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert modem.parts_log == [PartSent(start + 0.5 * k, 2, "m1", 7, 2, k, 3, start) for k in (1, 2, 3)]
    # Counted where the send started (Android's check), or where each part went out.
    assert modem.max_parts_in_window(0.1) == 3 and modem.max_parts_in_window(0.1, by="part") == 1
    with pytest.raises(ValueError):
        modem.max_parts_in_window(60.0, by="dispatch")
    assert modem.sent == [("m1", 7)]  # found by number: recipient_indices[k] of phone_numbers[k]
    # sim 0 is the phone's default (the first SIM); an explicit sim wins.
    await modem.send(NUMBER, deliver("m2"))
    await modem.send(NUMBER, deliver("m3", sim=1), sim=3)
    assert [p.sim for p in modem.parts_log[3:]] == [1, 3]


@pytest.mark.trio
async def test_fail_next_rules_apply_in_order_and_after_parts_is_capped(autojump_clock: object) -> None:
    modem = SimulatedModem(ModemOptions(send_delay=0.1))
    modem.fail_next(FailureClass.BLOCKED, phone_number="+15559999999")
    modem.fail_next(FailureClass.NO_SERVICE, 2, after_parts=1)
    modem.fail_next(FailureClass.DECRYPT_FAILED, after_parts=9)
    assert modem.pending_failures == 4
    parts: list[int] = []
    first = await modem.send(NUMBER, deliver("a", parts=3), on_part_sent=parts.append)
    assert first == SendResult(False, 1, FailureClass.NO_SERVICE, "no_service") and parts == [1]
    assert (await modem.send(NUMBER, deliver("b", parts=1))).parts_sent == 0  # one part: fails before it
    capped = await modem.send(NUMBER, deliver("c", parts=2))
    assert capped == SendResult(False, 1, FailureClass.DECRYPT_FAILED, "decrypt_failed")  # its last part fails
    assert (await modem.send(NUMBER, deliver("d"))).ok  # the BLOCKED rule is for another number
    assert modem.pending_failures == 1
    assert await modem.send("+15559999999", Delivery("e", ("+15559999999",), text="x")) == SendResult(
        False, 0, FailureClass.BLOCKED, "blocked"
    )
    assert [(p.message_id, p.part) for p in modem.parts_log] == [("a", 1), ("c", 1), ("d", 1)]
    assert modem.failed == [("a", 0), ("b", 0), ("c", 0), ("e", 0)]
    assert "+1555" not in repr(modem._rules) + repr(modem)
    with pytest.raises(ValueError):
        modem.fail_next(FailureClass.NO_SERVICE, 0)
    with pytest.raises(ValueError):
        modem.fail_next(FailureClass.NO_SERVICE, after_parts=-1)


@pytest.mark.trio
async def test_delivery_reports_per_part(autojump_clock: object) -> None:
    modem = SimulatedModem(ModemOptions(delivery_delay=2.0))
    start = trio.current_time()
    assert await modem.wait_delivery_report(NUMBER, deliver(parts=2), 0, part=2)
    assert trio.current_time() - start == 2.0
    silent = SimulatedModem(ModemOptions(delivery_reports=False))
    assert not await silent.wait_delivery_report(NUMBER, deliver(), 0)


def test_max_parts_in_window_uses_half_open_windows() -> None:
    assert max_parts_in_window([], 60) == 0
    assert max_parts_in_window([0, 1, 2], 60) == 3
    assert max_parts_in_window([0, 60, 120], 60) == 1  # (t - 60, t]
    assert max_parts_in_window([0, 59.9, 60, 61, 200], 60) == 3
    assert max_parts_in_window([5, 5, 5, 70], 60) == 3


def test_modem_options_checks() -> None:
    assert ModemOptions().android_limit_parts == 30 and ModemOptions().android_limit_window == 60.0
    assert ModemOptions(failure_class=3).failure_class is FailureClass.NO_SERVICE  # type: ignore[arg-type]
    for bad in (
        {"failure_rate": -0.1},
        {"send_delay": -1},
        {"failure_class": 99},
        {"android_limit_parts": -1},
        {"android_limit_window": 0},
    ):
        with pytest.raises(ValueError):
            ModemOptions(**bad)  # type: ignore[arg-type]


# --- the simulator's options ----------------------------------------------------


def options(**kwargs: object) -> SimulatorOptions:
    return SimulatorOptions(
        server="127.0.0.1:1", token="t", device_url="ws://127.0.0.1:1/device/v1", devices=1,
        state_file=Path("/nonexistent/simulator.json"), **kwargs,  # type: ignore[arg-type]
    )


def test_simulator_sims_and_failure_class() -> None:
    assert [s.slot for s in _sims(3)] == [1, 2, 3]
    modem = _modem_options(options(failure_rate=0.25, failure_class="no_service", android_limit=0, send_delay=0.2))
    assert (modem.failure_rate, modem.failure_class, modem.android_limit_parts, modem.send_delay) == (
        0.25, FailureClass.NO_SERVICE, 0, 0.2
    )
    assert _modem_options(options()).failure_class is FailureClass.GENERIC_FAILURE
    assert "radio_off" in FAILURE_CLASSES and "generic_failure" in FAILURE_CLASSES
    with pytest.raises(ValueError):
        run_simulator(options(failure_class="gremlins"))
    with pytest.raises(ValueError):
        run_simulator(options(sims=0))


def test_cli_simulate_takes_sims_failure_class_and_android_limit() -> None:
    from gateway.cli import _parser

    args = _parser().parse_args(
        ["simulate", "--sims", "2", "--failure-rate", "0.5", "--failure-class", "no_service", "--android-limit", "0"]
    )
    assert (args.sims, args.failure_rate, args.failure_class, args.android_limit) == (2, 0.5, "no_service", 0)
    defaults = _parser().parse_args(["simulate"])
    assert (defaults.sims, defaults.failure_class, defaults.android_limit) == (1, "generic_failure", 30)
    for name in FAILURE_CLASSES:  # the CLI takes every class the simulator knows
        assert _parser().parse_args(["simulate", "--failure-class", name]).failure_class == name
