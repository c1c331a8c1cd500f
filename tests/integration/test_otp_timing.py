"""How long a code check takes must not say anything about the code (issue 20: "timing of a
wrong vs right code check shows no measurable difference beyond noise").

What is measured, in-process (no network: its jitter would hide everything), with a real
SQLite database and the service's own comparison (`OtpKeys.matches` inside
`OtpRepository.check`, exactly the lambda OtpService.check passes):

1. `OtpKeys.matches` alone: the right code, a wrong code equal to it but for the last digit,
   and a wrong code differing in the first digit.
2. The whole check path on pending verifications: wrong codes close to the right one
   against wrong codes far from it (both DENIED, both write one attempt).
3. The whole check path with the right code against a wrong code where the answer is the
   same (the verification was canceled, or its time is up): the code is compared whatever
   the state, so the time must not tell whether the code was right.

Not compared: the right code against a wrong code on a *pending* verification. There the
answers differ (APPROVED vs DENIED) and so does the work: an approval changes the row's
status (three indexes) and stores its `otp:approved` webhook in the same transaction, which
measures ~0.1 ms slower without a webhook and ~0.4 ms with one. That time says nothing the
answer does not already say, and no code comparison is involved in it.

How the comparison avoids false failures: the samples of the groups are taken interleaved
in a random order, so drift (CPU frequency, another process on the machine, the database
growing, the garbage collector) lands on every group alike and adds noise, never a bias.
Then only robust statistics are compared, never an absolute time:

- the difference of the medians must stay within half the pooled interquartile range. With
  n samples per group the median's standard error is about 1.25 * IQR / (1.35 * sqrt(n)),
  so for n = 300 the difference's standard error is ~0.075 IQR and the bound is ~6.5 of
  them;
- the Mann-Whitney probability P(a < b) must stay within 0.5 +- 0.15, ~6 standard errors
  (sqrt((2n + 1) / (12 n^2)) = 0.024) from the 0.5 of two equal distributions.

Either fails by chance with a probability far below 1e-6; they fail when one group is
consistently slower by a good part of the spread, i.e. on a real difference. A comparison
that fails is measured once more on fresh samples, and the test fails only if it fails
again: a real difference persists, a burst of load from elsewhere on the machine does not.
(Checked by hand: a Python early-exit comparison instead of `hmac.compare_digest`, ~1 us,
and ~40 us of extra work on a right code in `OtpRepository.check`, each fail it.)
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ulid import ULID

from gateway.config import OtpSettings
from gateway.otp.keys import OtpKeys, new_code
from gateway.otp.machine import CheckResult, Status
from gateway.otp.repository import OtpRepository, prefix_of
from gateway.storage.engine import Database
from gateway.storage.models import OtpVerificationRow
from tests.helpers.accounts import create_owner

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
KEYS = OtpKeys("k" * 40)
N = 300  # samples per group
MEDIAN_BOUND = 0.5  # of the pooled IQR
AUC_BOUND = 0.15  # around 0.5


# ---- the statistics ----------------------------------------------------------------------------


def _iqr(xs: list[int]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def _auc(a: list[int], b: list[int]) -> float:
    """Mann-Whitney: P(a < b) + P(a == b) / 2, from the ranks of the pooled samples."""
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    rank_sum_a = sum(r for r, (_, g) in zip(ranks, pooled, strict=True) if g == 0)
    u_a = rank_sum_a - len(a) * (len(a) + 1) / 2  # pairs where a > b
    return 1 - u_a / (len(a) * len(b))


def assert_same_distribution(samples: dict[str, list[int]], a: str, b: str) -> None:
    xa, xb = samples[a], samples[b]
    diff = statistics.median(xa) - statistics.median(xb)
    spread = _iqr(xa + xb)
    auc = _auc(xa, xb)
    what = (f"{a}: median {statistics.median(xa) / 1000:.1f} us (IQR {_iqr(xa) / 1000:.1f}); "
            f"{b}: median {statistics.median(xb) / 1000:.1f} us (IQR {_iqr(xb) / 1000:.1f}); "
            f"pooled IQR {spread / 1000:.1f} us; P({a} < {b}) = {auc:.3f}")
    assert abs(diff) <= MEDIAN_BOUND * spread, f"the medians differ beyond the noise: {what}"
    assert abs(auc - 0.5) <= AUC_BOUND, f"one is consistently slower: {what}"


def measure(trials: list[tuple[str, Callable[[], object]]], warm_up: Callable[[], object]) -> dict[str, list[int]]:
    """Run the trials in a random order (interleaving the groups), each timed alone."""
    random.shuffle(trials)
    out: dict[str, list[int]] = {}
    clock = time.perf_counter_ns
    for _ in range(20):  # the first calls pay for caches and compiled statements
        warm_up()
    gc.collect()
    gc.disable()
    try:
        for group, call in trials:
            started = clock()
            call()
            out.setdefault(group, []).append(clock() - started)
    finally:
        gc.enable()
    return out


def _near(code: str) -> str:
    """Wrong only in the last digit: a comparison that stopped at the first difference would take longest."""
    return code[:-1] + str((int(code[-1]) + 1) % 10)


def _far(code: str) -> str:
    """Wrong from the first digit."""
    return str((int(code[0]) + 1) % 10) + code[1:]


# ---- the database ------------------------------------------------------------------------------


class Store:
    def __init__(self, path: Path) -> None:
        # synchronous=OFF: an fsync's jitter is noise these tests need not carry.
        self.db = Database(f"sqlite:///{path}", sqlite_synchronous="OFF")
        self.db.migrate()
        self.owner = create_owner(self.db, "timing", T0)
        self.repo = OtpRepository(self.db, OtpSettings(
            secret="k" * 40, max_attempts=20, resend_cooldown=0, sends_per_number=10**6, sends_per_prefix=10**6,
            sends_per_owner_per_minute=10**6,
        ))
        self._numbers = iter(range(10**9))

    def add(self, codes: list[str], status: Status = Status.PENDING) -> list[str]:
        """Verifications of these codes, each to a number of its own, stored as StartVerification
        stores them (but in one transaction: the send limits are not what is measured)."""
        rows = []
        for code in codes:
            to = f"+1{next(self._numbers):010d}"
            vid = str(ULID.from_datetime(T0))
            rows.append(OtpVerificationRow(
                id=vid, owner_id=self.owner, to_number=to, prefix=prefix_of(to), code_hash=KEYS.code_hash(vid, code),
                code_length=len(code), status=int(status), max_attempts=20, sends=1, last_sent_at=T0,
                expires_at=T0 + timedelta(minutes=10), created_at=T0, updated_at=T0,
            ))
        with self.db.write() as s:
            s.add_all(rows)
        return [r.id for r in rows]

    def warm_up(self) -> Callable[[], object]:
        [vid] = self.add(["000000"], Status.CANCELED)
        return self.checker(vid, "000000", T0, CheckResult.CANCELED)

    def checker(self, vid: str, code: str, now: datetime, expect: CheckResult) -> Callable[[], object]:
        """One check as OtpService.check makes it (the comparison inside the transaction)."""
        def call() -> None:
            _, result = self.repo.check(self.owner, vid, "", lambda row: KEYS.matches(row.id, code, row.code_hash), now)
            assert result is expect
        return call


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("otp-timing") / "otp.db")
    yield s
    s.db.close()


# ---- the tests ---------------------------------------------------------------------------------

Trials = list[tuple[str, Callable[[], object]]]


def assert_same_timing(make_trials: Callable[[], Trials], warm_up: Callable[[], object], pairs: list[tuple[str, str]]) -> None:
    """Measure; should a comparison fail, measure again on fresh trials: a real difference
    fails both times, a burst of load on the machine during one measurement does not."""
    for attempt in (1, 2):
        samples = measure(make_trials(), warm_up)
        try:
            for a, b in pairs:
                assert_same_distribution(samples, a, b)
            return
        except AssertionError:
            if attempt == 2:
                raise


def test_the_comparison_takes_as_long_for_any_code() -> None:
    def trials() -> Trials:
        out: Trials = []
        for _ in range(N * 3):
            vid, code = str(ULID()), new_code(6)
            stored = KEYS.code_hash(vid, code)
            out += [
                ("right", lambda v=vid, c=code, h=stored: KEYS.matches(v, c, h)),
                ("near", lambda v=vid, c=_near(code), h=stored: KEYS.matches(v, c, h)),
                ("far", lambda v=vid, c=_far(code), h=stored: KEYS.matches(v, c, h)),
            ]
        return out

    warm = str(ULID())
    assert_same_timing(trials, lambda: KEYS.matches(warm, "000000", KEYS.code_hash(warm, "000000")),
                       [("right", "near"), ("right", "far"), ("near", "far")])


def _db_trials(store: Store, groups: dict[str, Callable[[str], str]], status: Status, now: datetime,
               answer: CheckResult) -> Callable[[], Trials]:
    """N fresh verifications per group, stored in a shuffled order (no group gets the first
    pages of the table), each checked once with `groups[group](its code)`."""
    def trials() -> Trials:
        planned = [(group, new_code(6)) for group in groups for _ in range(N)]
        random.shuffle(planned)
        ids = store.add([code for _, code in planned], status)
        return [(group, store.checker(vid, groups[group](code), now, answer))
                for vid, (group, code) in zip(ids, planned, strict=True)]
    return trials


def test_a_wrong_code_takes_as_long_however_close_it_is(store: Store) -> None:
    """Checks of pending verifications (DENIED, one attempt written each), each on its own
    verification so that every check finds the same state."""
    trials = _db_trials(store, {"near": _near, "far": _far}, Status.PENDING, T0, CheckResult.DENIED)
    assert_same_timing(trials, store.warm_up(), [("near", "far")])


@pytest.mark.parametrize("ended", ["canceled", "expired"])
def test_right_and_wrong_codes_take_as_long_when_the_answer_is_the_same(store: Store, ended: str) -> None:
    """The right code of a canceled (or timed out) verification gets the same answer as a
    wrong one, and must take as long: the code is compared whatever the state."""
    if ended == "expired":
        trials = _db_trials(store, {"right": str, "wrong": _near}, Status.PENDING, T0 + timedelta(minutes=20), CheckResult.EXPIRED)
    else:
        trials = _db_trials(store, {"right": str, "wrong": _near}, Status.CANCELED, T0, CheckResult.CANCELED)
    assert_same_timing(trials, store.warm_up(), [("right", "wrong")])
