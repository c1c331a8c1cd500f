"""gateway.messages.pacing: properties of the sliding windows (pure logic, no database).

Whatever the limits and the moments the scheduler asks, sends taken at `ready_at` never put
more than a window's figure into any interval of its length, keep a SIM's sends
`min_interval` apart, and `ready_at` is never before `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.messages.pacing import (
    PHONE_WINDOW,
    DevicePacing,
    PacingHistory,
    Sent,
    SimLimits,
    history_span,
    month_start,
)

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)


def _max_in(sends: list[Sent], span: timedelta, sim: int | None = None) -> int:
    """The most parts in any closed interval [t, t + span] (of one SIM, or of all): the
    windows are closed, as Android's SmsUsageMonitor counts."""
    mine = sorted((s for s in sends if sim is None or s.sim == sim), key=lambda s: s.at)
    best = 0
    for i, s in enumerate(mine):
        best = max(best, sum(x.parts for x in mine[i:] if x.at <= s.at + span))
    return best


limits = st.builds(
    SimLimits,
    parts_per_minute=st.sampled_from([0, 4, 10, 24]),
    min_interval_ms=st.sampled_from([0, 500, 2500]),
    parts_per_hour=st.sampled_from([0, 12, 40]),
    parts_per_day=st.just(0),
    recipients_per_month=st.just(0),  # a wait for the next month: test_month_cap_and_history_span
)
pacings = st.builds(
    DevicePacing,
    default=limits,
    sims=st.dictionaries(st.sampled_from([1, 2]), limits, max_size=2),
    phone_parts_per_minute=st.sampled_from([0, 6, 27]),
    priority_bypass=st.booleans(),
)
asks = st.lists(
    st.tuples(
        st.integers(0, 20_000),  # ms after the previous ask
        st.sampled_from([1, 2]),  # SIM
        st.integers(1, 4),  # parts
        st.sampled_from(["+1", "+2", "+3", "+4"]),  # number
        st.booleans(),  # a priority message that may bypass
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(pacing=pacings, asks=asks)
def test_sends_at_ready_at_never_exceed_a_window(pacing: DevicePacing, asks: list) -> None:
    """Per-SIM overrides, the phone cap and priority bypass mixed: the phone's window holds
    over every send; each send that did not bypass found its SIM's windows and interval
    respected, counting the bypassing sends before it."""
    history = PacingHistory()
    sent: list[tuple[Sent, bool]] = []
    now = T0
    for gap, sim, parts, number, urgent in asks:
        now += timedelta(milliseconds=gap)
        bypass = urgent and pacing.priority_bypass
        ready = history.ready_at(pacing, sim, parts, number, now, bypass=bypass)
        assert ready >= now
        # Asked again at that moment it answers that moment: the earliest time, exactly.
        assert history.ready_at(pacing, sim, parts, number, ready, bypass=bypass) == ready
        now = ready
        s = Sent(now, sim, parts, number)
        history.record(s)
        sent.append((s, bypass))
    everything = [s for s, _ in sent]
    if pacing.phone_parts_per_minute:
        assert _max_in(everything, MINUTE) <= pacing.phone_parts_per_minute
    for i, (s, bypass) in enumerate(sent):
        if bypass:
            continue
        lim = pacing.for_sim(s.sim)
        mine = [x for x, _ in sent[: i + 1] if x.sim == s.sim]  # it and the sends before it
        for figure, span in ((lim.parts_per_minute, MINUTE), (lim.parts_per_hour, HOUR)):
            if figure:
                assert sum(x.parts for x in mine if x.at >= s.at - span) <= figure, (s, figure, span)
        earlier = [x.at for x in mine[:-1]]
        if lim.min_interval_ms and earlier:
            assert s.at - max(earlier) >= timedelta(milliseconds=lim.min_interval_ms)


@settings(max_examples=300, deadline=None)
@given(
    minute=st.integers(1, 30),
    hour=st.sampled_from([0, 20, 60]),
    interval=st.sampled_from([0, 1000, 2500]),
    phone=st.sampled_from([0, 5, 27]),
    asks=asks,
)
def test_paced_sends_respect_every_window_of_their_sim(minute: int, hour: int, interval: int, phone: int, asks: list) -> None:
    """No bypass: every limit holds for every SIM, in any interval, for parts <= the figure."""
    pacing = DevicePacing(SimLimits(minute, interval, hour, 0, 0), {}, phone, priority_bypass=False)
    history = PacingHistory()
    sent: list[Sent] = []
    now = T0
    for gap, sim, parts, number, _ in asks:
        now += timedelta(milliseconds=gap)
        ready = history.ready_at(pacing, sim, parts, number, now, bypass=False)
        assert ready >= now
        now = ready
        s = Sent(now, sim, parts, number)
        history.record(s)
        sent.append(s)
    for sim in (1, 2):
        mine = [s for s in sent if s.sim == sim]
        big = max((s.parts for s in mine), default=0)
        assert _max_in(mine, MINUTE) <= max(minute, big)
        if hour:
            assert _max_in(mine, HOUR) <= max(hour, big)
        times = [s.at for s in mine]
        assert all(b - a >= timedelta(milliseconds=interval) for a, b in zip(times, times[1:], strict=False))
    if phone:
        assert _max_in(sent, MINUTE) <= max(phone, max(s.parts for s in sent))


@settings(max_examples=200, deadline=None)
@given(
    loaded=st.lists(st.tuples(st.integers(0, 120_000), st.integers(1, 4)), max_size=30),
    parts=st.integers(1, 4),
    now_ms=st.integers(0, 200_000),
)
def test_ready_at_frees_exactly_when_the_window_has_room(loaded: list, parts: int, now_ms: int) -> None:
    """`ready_at` is the earliest moment >= now the (closed) window has room: at it the
    parts fit, a millisecond before it they did not (unless it is now)."""
    pacing = DevicePacing(SimLimits(10, 0, 0, 0, 0), {}, 0)
    base = [Sent(T0 + timedelta(milliseconds=ms), 1, p) for ms, p in sorted(loaded)]
    now = T0 + timedelta(milliseconds=now_ms)
    history = PacingHistory([s for s in base if s.at <= now])
    ready = history.ready_at(pacing, 1, parts, "", now, bypass=False)
    assert ready >= now

    def fits(t: datetime) -> bool:
        inside = sum(s.parts for s in base if s.at <= now and t - MINUTE <= s.at <= t)
        return inside + parts <= 10 or inside == 0

    assert fits(ready)
    if ready > now:
        assert not fits(ready - timedelta(milliseconds=1))


def test_month_cap_and_history_span() -> None:
    pacing = DevicePacing(SimLimits(0, 0, 0, 0, 2), {2: SimLimits(0, 90_000, 0, 5, 0)}, 0)
    history = PacingHistory([], {1: {"+1", "+2"}})
    assert history.month_full(pacing, 1, "+3") and not history.month_full(pacing, 1, "+1")
    assert not history.month_full(pacing, 2, "+3")  # no month cap on SIM 2
    end_of_month = datetime(2030, 1, 31, 23, 59, tzinfo=UTC)
    assert history.ready_at(pacing, 1, 1, "+3", T0, bypass=False) == datetime(2030, 2, 1, tzinfo=UTC)
    assert history.ready_at(pacing, 1, 1, "+3", end_of_month, bypass=False) == datetime(2030, 2, 1, tzinfo=UTC)
    december = DevicePacing(SimLimits(0, 0, 0, 0, 1), {}, 0)
    assert PacingHistory([], {1: {"+1"}}).ready_at(december, 1, 1, "+2", datetime(2030, 12, 5, tzinfo=UTC), bypass=False) == datetime(2031, 1, 1, tzinfo=UTC)
    assert history.ready_at(pacing, 1, 1, "+3", T0, bypass=True) == T0
    assert history.ready_at(pacing, 1, 1, "+2", T0, bypass=False) == T0
    assert month_start(T0) == datetime(2030, 1, 1, tzinfo=UTC)
    # The day window of SIM 2, and its 90 s interval (longer than the minute window).
    assert history_span(pacing) == timedelta(days=1)
    assert history_span(DevicePacing(SimLimits(0, 90_000), {}, 0)) == timedelta(seconds=90)
    assert history_span(DevicePacing()) == PHONE_WINDOW  # the phone-wide window with its jitter guard
    assert DevicePacing(SimLimits(0, 0, 0, 0, 0), {}, 0).unpaced and not DevicePacing().unpaced
