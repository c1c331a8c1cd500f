"""The phone's reconnect delays (RELIABILITY 8)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from smsgw_agent import Backoff


def test_first_delay_is_uniform_below_five_seconds() -> None:
    backoff = Backoff(rng=random.Random(1))
    delays = []
    for _ in range(2_000):
        backoff.reset()
        delays.append(backoff.next_delay())
    assert all(0.0 <= d < 5.0 for d in delays)
    assert min(delays) < 0.1 and max(delays) > 4.9


def test_exponential_delays_stay_within_jitter_bounds_and_cap() -> None:
    for seed in range(50):
        backoff = Backoff(rng=random.Random(seed))
        assert 0.0 <= backoff.next_delay() < 5.0
        for n in range(30):
            nominal = min(1.0 * 1.6**n, 120.0)
            delay = backoff.next_delay()
            assert nominal * 0.8 - 1e-9 <= delay <= min(nominal * 1.2, 120.0) + 1e-9, (seed, n, delay)
            assert delay <= 120.0


def test_cap_holds_for_long_outages() -> None:
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(5_000)]  # 1.6**5000 overflows a float
    assert max(delays) <= 120.0
    assert min(delays[20:]) >= 120.0 * 0.8


def test_reset_starts_over_from_the_random_first_delay() -> None:
    backoff = Backoff(rng=random.Random(3))
    for _ in range(12):
        backoff.next_delay()
    assert backoff.attempt == 12
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() < 5.0
    second = backoff.next_delay()
    assert 0.8 <= second <= 1.2


def test_scale_multiplies_every_delay() -> None:
    plain = Backoff(rng=random.Random(5))
    scaled = Backoff(rng=random.Random(5), scale=0.01)
    for _ in range(40):
        assert scaled.next_delay() == pytest.approx(plain.next_delay() * 0.01)


def test_a_thousand_phones_started_together_spread_out() -> None:
    rng = random.Random(2024)
    generators = [Backoff(rng=random.Random(rng.getrandbits(64))) for _ in range(1_000)]
    first = [g.next_delay() for g in generators]
    assert all(0.0 <= d < 5.0 for d in first)
    buckets = Counter(int(d / 0.5) for d in first)
    assert len(buckets) == 10  # every half second of [0, 5) gets phones
    assert max(buckets.values()) <= 200  # no half second takes more than 20 %
    # The jittered retries after that do not line up either.
    second = [g.next_delay() for g in generators]
    assert all(0.8 <= d <= 1.2 for d in second)
    buckets = Counter(min(int((d - 0.8) / 0.04), 9) for d in second)
    assert len(buckets) == 10 and max(buckets.values()) <= 200


def test_default_generators_are_not_synchronised() -> None:
    first = [Backoff().next_delay() for _ in range(200)]
    assert len(set(first)) == 200


@pytest.mark.parametrize(
    "kwargs",
    [{"first_max": -1.0}, {"factor": 0.5}, {"jitter": 1.5}, {"cap": 0.5}, {"scale": -1.0}],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
