"""gateway/otp/repository.py on a real SQLite database (the migrations' schema), with codes
hashed and compared by `OtpKeys` as the service does (issue 20).

A hypothesis state machine runs sequences of StartVerification (new, resend while pending,
idempotent replay), checks with the right or a wrong code, cancels, the expiry sweep and an
advancing clock against a model of the rules, and checks after every step that:

- a verification is approved at most once (and its `otp:approved` webhook stored once), never
  after its expiry or its last attempt, never after a cancel;
- a resend keeps the one valid code: the stored code hash never changes, the code of the
  resent request never approves, and a number has at most one pending verification (the
  next start for a number ends its pending one past expiry, with its `otp:expired`);
- every send limit (cooldown, per number, per prefix, per owner) and the pumping guard refuse
  exactly when the model says, with `Blocked` naming the right reason and a positive
  retry_after.

Focused tests follow for each limit, the pumping guard (trips on a prefix nobody converts
after the minimum volume, not on a healthy one), and unit tests of keys.py and sms.py.
"""

from __future__ import annotations

import atexit
import itertools
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, MultipleResults, RuleBasedStateMachine, initialize, invariant, multiple, rule
from sqlmodel import select
from ulid import ULID

from gateway.config import OtpSettings, WebhookSettings
from gateway.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from gateway.otp.keys import SEALED_PREFIX, OtpKeys, new_code, opened_otp
from gateway.otp.machine import CheckResult, Status
from gateway.otp.repository import Blocked, OtpRepository, Started, prefix_of
from gateway.otp.sms import DEFAULT_TEMPLATE, check_template, render
from gateway.storage.engine import Database
from gateway.storage.models import OtpVerificationRow, WebhookDeliveryRow
from gateway.webhooks.records import WebhookEvent
from gateway.webhooks.repository import WebhookRepository
from tests.helpers.accounts import create_owner

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "s" * 40
KEYS = OtpKeys(SECRET)
NUMBERS = ("+15550100001", "+15550100002", "+15550200003")  # the first two share a prefix
OWNERS = ("alice", "bob")


# ---- one migrated database, copied for every example ---------------------------------------


@dataclass
class _Template:
    path: Path
    owners: dict[str, str]


_TEMPLATE: _Template | None = None
_COPIES = itertools.count()


def _template() -> _Template:
    """A migrated SQLite database with two accounts, each with a webhook for otp:approved and
    otp:expired (so the outbox shows every approval and expiry), made once per session."""
    global _TEMPLATE
    if _TEMPLATE is None:
        root = Path(tempfile.mkdtemp(prefix="otp-repo-"))
        atexit.register(shutil.rmtree, root, True)
        db = Database(f"sqlite:///{root / 'template.db'}", sqlite_synchronous="OFF")
        db.migrate()
        owners = {name: create_owner(db, name, T0) for name in OWNERS}
        hooks = WebhookRepository(db, WebhookSettings())
        for owner in owners.values():
            hooks.create(owner, "https://example.com/hook", [WebhookEvent.OTP_APPROVED, WebhookEvent.OTP_EXPIRED], "", "whsec", T0)
        db.close()  # the last connection checkpoints the WAL into the file
        _TEMPLATE = _Template(root / "template.db", owners)
    return _TEMPLATE


def fresh_database() -> tuple[Database, dict[str, str]]:
    t = _template()
    path = t.path.with_name(f"copy-{next(_COPIES)}.db")
    shutil.copyfile(t.path, path)
    return Database(f"sqlite:///{path}", sqlite_synchronous="OFF"), t.owners


def close_database(db: Database) -> None:
    db.close()
    path = Path(str(db.engine.url.database))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def new_row(owner_id: str, to: str, code: str, now: datetime, *, ttl: float = 600, key: str = "",
            max_attempts: int = 5) -> OtpVerificationRow:
    """What OtpService.start hands the repository: the code only as its HMAC."""
    vid = str(ULID.from_datetime(now))
    return OtpVerificationRow(
        id=vid, owner_id=owner_id, to_number=to, prefix=prefix_of(to), code_hash=KEYS.code_hash(vid, code),
        code_length=len(code), status=int(Status.PENDING), max_attempts=max_attempts,
        expires_at=now + timedelta(seconds=ttl), idempotency_key=key or None, created_at=now, updated_at=now,
    )


def code_check(code: str) -> Any:
    """The service's comparison: constant time, whatever the state."""
    return lambda row: KEYS.matches(row.id, code, row.code_hash)


def webhook_counts(db: Database) -> Counter[tuple[str, str]]:
    """(event, verification id) -> deliveries stored in the outbox."""
    with db.read() as s:
        rows = s.exec(select(WebhookDeliveryRow.event, WebhookDeliveryRow.payload)).all()
    out: Counter[tuple[str, str]] = Counter()
    for event, payload in rows:
        body = json.loads(payload)
        out[(event, _find_verification_id(body))] += 1
    return out


def _find_verification_id(body: Any) -> str:
    if isinstance(body, dict):
        if "verification" in body and isinstance(body["verification"], dict):
            return str(body["verification"]["id"])
        for value in body.values():
            found = _find_verification_id(value)
            if found:
                return found
    return ""


def rows_of(db: Database) -> dict[str, OtpVerificationRow]:
    with db.read() as s:
        return {r.id: r for r in s.exec(select(OtpVerificationRow)).all()}


# ---- the state machine ------------------------------------------------------------------------


@dataclass
class MV:
    """The model of one stored verification."""

    id: str
    owner: str
    to: str
    code: str
    code_hash: str
    max_attempts: int
    expires_at: datetime
    created_at: datetime
    status: Status = Status.PENDING  # as stored (EXPIRED only by the sweep or the number's next start)
    attempts: int = 0
    sends: int = 1
    last_sent: datetime = T0
    message_id: str = ""
    stale_codes: list[str] = field(default_factory=list)  # codes of resent requests: never valid

    def live(self, now: datetime) -> bool:
        return self.status is Status.PENDING and now < self.expires_at

    def shown(self, now: datetime) -> Status:
        return Status.EXPIRED if self.status is Status.PENDING and now >= self.expires_at else self.status


_ENDED_ANSWER = {
    Status.APPROVED: CheckResult.CANCELED, Status.EXPIRED: CheckResult.EXPIRED,
    Status.MAX_ATTEMPTS: CheckResult.MAX_ATTEMPTS, Status.CANCELED: CheckResult.CANCELED,
}

_TICKS = st.sampled_from([0, 1, 10, 29, 30, 31, 59, 60, 61, 300, 599, 600, 601, 3600])


class OtpStorage(RuleBasedStateMachine):
    verifications = Bundle("verifications")

    def __init__(self) -> None:
        super().__init__()
        self.db, self.owners = fresh_database()
        self.now = T0
        self.v: dict[str, MV] = {}
        self.sends: list[tuple[str, str, str, datetime]] = []  # owner, number, prefix, at
        self.keys: dict[tuple[str, str], str] = {}  # (owner, idempotency key) -> verification id
        self.approved: Counter[str] = Counter()

    def teardown(self) -> None:
        close_database(self.db)

    @initialize(
        target=verifications,
        first_code=st.text("0123456789", min_size=4, max_size=10),
        max_attempts=st.integers(1, 4),
        cooldown=st.sampled_from([0.0, 30.0]),
        per_number=st.integers(2, 4),
        per_prefix=st.integers(3, 8),
        per_owner=st.integers(2, 6),
        min_volume=st.integers(1, 3),
        min_conversion=st.sampled_from([0.0, 0.5, 1.0, 1.0]),
    )
    def configure(self, first_code: str, max_attempts: int, cooldown: float, per_number: int, per_prefix: int,
                  per_owner: int, min_volume: int, min_conversion: float) -> MultipleResults[str]:
        self.settings = OtpSettings(
            secret=SECRET, max_attempts=max_attempts, resend_cooldown=cooldown, sends_per_number=per_number,
            number_window=600, sends_per_prefix=per_prefix, prefix_window=3600, sends_per_owner_per_minute=per_owner,
            pumping_window=3600, pumping_min_volume=min_volume, pumping_min_conversion=min_conversion,
        )
        self.repo = OtpRepository(self.db, self.settings)
        return self.start("alice", NUMBERS[0], "", 600, first_code)  # so that the other rules have one from the start

    # ---- the model's limits ---------------------------------------------------------------

    def _limit(self, owner: str, to: str) -> tuple[str, float] | None:
        st_ = self.settings
        for reason, index, value, limit, window in (
            ("number", 1, to, st_.sends_per_number, st_.number_window),
            ("prefix", 2, prefix_of(to), st_.sends_per_prefix, st_.prefix_window),
            ("owner", 0, owner, st_.sends_per_owner_per_minute, 60.0),
        ):
            since = self.now - timedelta(seconds=window)
            times = sorted(s[3] for s in self.sends if s[index] == value and s[3] > since)
            if len(times) >= limit:
                return reason, max((times[0] + timedelta(seconds=window) - self.now).total_seconds(), 1.0)
        return None

    def _pumping(self, prefix: str, ending: list[MV]) -> bool:
        """`ending`: the number's pending ones past expiry, which the start ends first."""
        st_ = self.settings
        since = self.now - timedelta(seconds=st_.pumping_window)

        def status(m: MV) -> Status:
            return Status.EXPIRED if any(m is e for e in ending) else m.status

        settled = [m for m in self.v.values() if prefix_of(m.to) == prefix and m.created_at > since
                   and status(m) in (Status.APPROVED, Status.EXPIRED, Status.MAX_ATTEMPTS)]
        approved = sum(status(m) is Status.APPROVED for m in settled)
        return len(settled) >= st_.pumping_min_volume and approved / len(settled) < st_.pumping_min_conversion

    # ---- rules ------------------------------------------------------------------------------

    @rule(seconds=_TICKS)
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(target=verifications, owner=st.sampled_from(OWNERS), to=st.sampled_from(NUMBERS),
          key=st.sampled_from(["", "", "k1", "k2", "k3"]), ttl=st.sampled_from([60, 600]),
          code=st.text("0123456789", min_size=4, max_size=10))
    def start(self, owner: str, to: str, key: str, ttl: int, code: str) -> MultipleResults[str]:
        owner_id = self.owners[owner]
        row = new_row(owner_id, to, code, self.now, ttl=ttl, key=key, max_attempts=self.settings.max_attempts)
        # What the model expects.
        earlier = self.v.get(self.keys.get((owner, key), "")) if key else None
        live = [m for m in self.v.values() if m.owner == owner and m.to == to and m.live(self.now)]
        assert len(live) <= 1
        # A start that goes through first ends the number's pending ones past expiry.
        ending = [m for m in self.v.values() if m.owner == owner and m.to == to
                  and m.status is Status.PENDING and self.now >= m.expires_at]
        expect: tuple[str, Any]
        if earlier is not None:
            expect = ("conflict", None) if earlier.to != to else ("replay", earlier)
        elif live:
            pending = live[0]
            wait = (pending.last_sent + timedelta(seconds=self.settings.resend_cooldown) - self.now).total_seconds()
            if wait > 0:
                expect = ("blocked", ("cooldown", wait))
            else:
                limited = self._limit(owner, to)
                expect = ("blocked", limited) if limited else ("resend", pending)
        else:
            limited = self._limit(owner, to)
            if limited:
                expect = ("blocked", limited)
            elif self._pumping(prefix_of(to), ending):
                expect = ("blocked", ("pumping", self.settings.pumping_window / 4))
            else:
                expect = ("new", None)
        event(f"start: {expect[0]}" + (f" ({expect[1][0]})" if expect[0] == "blocked" else ""))
        # What the repository does.
        try:
            started = self.repo.start(owner_id, row, self.now)
        except Blocked as exc:
            assert expect[0] == "blocked", f"refused ({exc.reason}: {exc}) where the model expects {expect[0]}"
            reason, wait = expect[1]
            assert exc.reason == reason, f"refused for {exc.reason}, the model says {reason}"
            assert isinstance(exc, ResourceExhausted) and exc.retry_after > 0
            assert exc.retry_after == pytest.approx(wait, abs=1e-6)
            assert exc.subject
            return multiple()
        except AlreadyExists:
            assert expect[0] == "conflict"
            return multiple()
        assert expect[0] not in ("blocked", "conflict"), f"expected {expect}, got {started}"
        assert isinstance(started, Started)
        if expect[0] == "replay":
            m = expect[1]
            assert started.replay and started.record.id == m.id and not started.resend
            return multiple()
        if expect[0] == "resend":
            m = expect[1]
            assert not started.replay and started.record.id == m.id
            assert started.resend is True, "a resend sends the last SMS again (the same code)"
            assert started.record.message_id == m.message_id
            m.sends += 1
            m.last_sent = self.now
            m.stale_codes.append(code)
            assert started.record.sends == m.sends
            if key:  # a resend's key answers later calls with it as a replay
                self.keys[(owner, key)] = m.id
        else:
            assert not started.replay and not started.resend and started.record.id == row.id
            assert started.record.status is Status.PENDING and started.record.sends == 1
            m = MV(row.id, owner, to, code, row.code_hash, self.settings.max_attempts, row.expires_at, self.now,
                   last_sent=self.now)
            self.v[m.id] = m
            if key:
                self.keys[(owner, key)] = m.id
        for old in ending:
            old.status = Status.EXPIRED
        self.sends.append((owner, to, prefix_of(to), self.now))
        # The service stores the id of the SMS it sent (a resend: the new one).
        m.message_id = f"msg-{m.id}-{m.sends}"
        self.repo.set_message(m.id, m.message_id)
        return multiple(m.id) if expect[0] == "new" else multiple()

    @rule(target=verifications, vid=verifications, key=st.sampled_from(["", "k1"]), code=st.text("0123456789", min_size=4, max_size=10))
    def start_again(self, vid: str, key: str, code: str) -> MultipleResults[str]:
        """Another start for a number that has one: a resend while it is pending (or refused
        by the cooldown or a limit), a new one once it has ended."""
        m = self.v[vid]
        return self.start(m.owner, m.to, key, 600, code)

    @rule(vid=verifications, guess=st.sampled_from(["right", "right", "wrong", "stale"]),
          wrong=st.text("0123456789", min_size=4, max_size=10))
    def check(self, vid: str, guess: str, wrong: str) -> None:
        m = self.v[vid]
        if guess == "right":
            code = m.code
        elif guess == "stale" and m.stale_codes:
            code = m.stale_codes[-1]
        else:
            code = wrong
        right = code == m.code
        shown = m.shown(self.now)
        record, result = self.repo.check(self.owners[m.owner], vid, "", code_check(code), self.now)
        event(f"check: {result.name}")
        if shown is not Status.PENDING:
            assert result is _ENDED_ANSWER[shown], f"{result} for a verification that is {shown.name}"
        elif right:
            assert result is CheckResult.APPROVED
            m.status, m.attempts = Status.APPROVED, m.attempts + 1
            self.approved[vid] += 1
        else:
            m.attempts += 1
            if m.attempts >= m.max_attempts:
                assert result is CheckResult.MAX_ATTEMPTS
                m.status = Status.MAX_ATTEMPTS
            else:
                assert result is CheckResult.DENIED
        if result is CheckResult.APPROVED:
            assert right and shown is Status.PENDING
        assert record.status is m.shown(self.now) and record.attempts == m.attempts
        assert record.attempts_left == (m.max_attempts - m.attempts if record.status is Status.PENDING else 0)
        assert record.attempts_left >= 0

    @rule(vid=verifications)
    def cancel(self, vid: str) -> None:
        m = self.v[vid]
        record = self.repo.cancel(self.owners[m.owner], vid, self.now)
        if m.live(self.now):
            m.status = Status.CANCELED
        assert record.status is m.shown(self.now)

    @rule()
    def sweep(self) -> None:
        due = [m for m in self.v.values() if m.status is Status.PENDING and self.now >= m.expires_at]
        assert self.repo.expire_due(self.now) == len(due)
        for m in due:
            m.status = Status.EXPIRED

    @rule(vid=verifications)
    def get(self, vid: str) -> None:
        m = self.v[vid]
        record = self.repo.get(self.owners[m.owner], vid, self.now)
        assert (record.status, record.attempts, record.sends) == (m.shown(self.now), m.attempts, m.sends)

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def storage_matches_the_model(self) -> None:
        if not hasattr(self, "repo"):
            return
        rows = rows_of(self.db)
        assert set(rows) == set(self.v), "every start stored one row at most (a resend or replay: none)"
        for vid, m in self.v.items():
            r = rows[vid]
            assert (Status(r.status), r.attempts, r.sends, r.message_id) == (m.status, m.attempts, m.sends, m.message_id)
            assert r.code_hash == m.code_hash, "a resend keeps the one code"
            assert KEYS.matches(vid, m.code, r.code_hash)
            assert not any(KEYS.matches(vid, c, r.code_hash) for c in m.stale_codes if c != m.code)
            assert 0 <= r.attempts <= r.max_attempts

    @invariant()
    def one_pending_per_number(self) -> None:
        """At most one stored PENDING verification per owner and number (expired or not)."""
        pending = Counter((r.owner_id, r.to_number) for r in rows_of(self.db).values() if r.status == Status.PENDING)
        assert all(n == 1 for n in pending.values())

    @invariant()
    def approved_once(self) -> None:
        assert all(n == 1 for n in self.approved.values())
        hooks = webhook_counts(self.db)
        for vid, m in self.v.items():
            approved = hooks[(str(WebhookEvent.OTP_APPROVED), vid)]
            expired = hooks[(str(WebhookEvent.OTP_EXPIRED), vid)]
            assert approved == (1 if m.status is Status.APPROVED else 0)
            assert expired == (1 if m.status is Status.EXPIRED else 0)
            if m.status is Status.APPROVED:
                assert m.attempts <= m.max_attempts


TestOtpStorage = OtpStorage.TestCase
TestOtpStorage.settings = settings(max_examples=50, stateful_step_count=25, deadline=None, database=None)


# ---- focused tests of each limit --------------------------------------------------------------


@pytest.fixture
def store() -> Any:
    db, owners = fresh_database()
    yield db, owners
    close_database(db)


def _settings(**over: Any) -> OtpSettings:
    base: dict[str, Any] = {"secret": SECRET, "resend_cooldown": 30.0, "sends_per_number": 5, "number_window": 600,
                            "sends_per_prefix": 20, "prefix_window": 3600, "sends_per_owner_per_minute": 60,
                            "pumping_min_volume": 10, "pumping_min_conversion": 0.2}
    return OtpSettings(**{**base, **over})


def _start(repo: OtpRepository, owner: str, to: str, now: datetime, **kw: Any) -> Started:
    return repo.start(owner, new_row(owner, to, new_code(6), now, **kw), now)


def test_resend_keeps_the_code_and_the_one_row(store: Any) -> None:
    db, owners = store
    repo = OtpRepository(db, _settings(resend_cooldown=30))
    alice = owners["alice"]
    first = repo.start(alice, new_row(alice, NUMBERS[0], "123456", T0), T0)
    repo.set_message(first.record.id, "m1")
    with pytest.raises(Blocked) as cooled:
        _start(repo, alice, NUMBERS[0], T0 + timedelta(seconds=10))
    assert cooled.value.reason == "cooldown" and cooled.value.retry_after == pytest.approx(20)
    assert cooled.value.subject == f"verification:{first.record.id}"
    with pytest.raises(Blocked) as cooled:
        _start(repo, alice, NUMBERS[0], T0 + timedelta(seconds=29.5))
    assert cooled.value.reason == "cooldown" and cooled.value.retry_after == pytest.approx(0.5)
    again = repo.start(alice, new_row(alice, NUMBERS[0], "654321", T0 + timedelta(seconds=30)), T0 + timedelta(seconds=30))
    assert again.resend and again.record.id == first.record.id and again.record.sends == 2
    assert again.record.message_id == "m1", "the service sends this message's sealed text again"
    [row] = rows_of(db).values()
    assert row.code_hash == KEYS.code_hash(row.id, "123456")
    # The resent request's code does not approve; the one code does, once.
    assert repo.check(alice, row.id, "", code_check("654321"), T0 + timedelta(seconds=31))[1] is CheckResult.DENIED
    assert repo.check(alice, row.id, "", code_check("123456"), T0 + timedelta(seconds=32))[1] is CheckResult.APPROVED
    assert repo.check(alice, row.id, "", code_check("123456"), T0 + timedelta(seconds=33))[1] is CheckResult.CANCELED
    # Found by number too: the newest verification of the number.
    assert repo.find(alice, to=NUMBERS[0]).id == row.id


def test_idempotent_replay_and_conflict(store: Any) -> None:
    db, owners = store
    repo = OtpRepository(db, _settings())
    alice, bob = owners["alice"], owners["bob"]
    first = _start(repo, alice, NUMBERS[0], T0, key="k")
    replay = _start(repo, alice, NUMBERS[0], T0 + timedelta(seconds=1), key="k")
    assert replay.replay and replay.record.id == first.record.id and replay.record.sends == 1
    with pytest.raises(AlreadyExists):
        _start(repo, alice, NUMBERS[1], T0 + timedelta(seconds=2), key="k")
    other = _start(repo, bob, NUMBERS[0], T0 + timedelta(seconds=3), key="k")  # keys are per owner
    assert not other.replay and other.record.id != first.record.id
    assert len(rows_of(db)) == 2


@settings(max_examples=15, deadline=None, database=None)
@given(limit=st.integers(1, 6), window=st.sampled_from([60.0, 600.0]), gap=st.integers(0, 20))
def test_per_number_limit(limit: int, window: float, gap: int) -> None:
    """At most `limit` sends to a number per window (first sends and resends alike), across
    owners; the refusal's retry_after is when the oldest send leaves the window."""
    db, owners = fresh_database()
    try:
        repo = OtpRepository(db, _settings(resend_cooldown=0, sends_per_number=limit, number_window=window))
        now = T0
        for i in range(limit):
            owner = owners[OWNERS[i % 2]]
            _start(repo, owner, NUMBERS[0], now)
            now += timedelta(seconds=gap)
        if now - T0 >= timedelta(seconds=window):
            return  # the first send has left the window already
        with pytest.raises(Blocked) as exc:
            _start(repo, owners["alice"], NUMBERS[0], now)
        assert exc.value.reason == "number" and exc.value.subject.startswith("number:")
        assert exc.value.retry_after == pytest.approx(max(window - (now - T0).total_seconds(), 1.0))
        assert exc.value.retry_after > 0
        _start(repo, owners["alice"], NUMBERS[1], now)  # another number of the prefix is fine
        _start(repo, owners["alice"], NUMBERS[0], T0 + timedelta(seconds=window))  # the oldest has left the window
    finally:
        close_database(db)


def test_per_prefix_limit(store: Any) -> None:
    db, owners = store
    repo = OtpRepository(db, _settings(sends_per_prefix=3, prefix_window=3600))
    alice = owners["alice"]
    for i in range(3):
        _start(repo, alice, f"+1555010{i:04d}", T0 + timedelta(seconds=i))
    with pytest.raises(Blocked) as exc:
        _start(repo, alice, "+15550109999", T0 + timedelta(seconds=100))
    assert exc.value.reason == "prefix" and exc.value.subject == "prefix:+1555010"
    assert exc.value.retry_after == pytest.approx(3500)
    _start(repo, alice, "+15550200001", T0 + timedelta(seconds=100))  # another prefix
    _start(repo, alice, "+15550109999", T0 + timedelta(seconds=3600))


def test_per_owner_limit(store: Any) -> None:
    db, owners = store
    repo = OtpRepository(db, _settings(sends_per_owner_per_minute=2))
    alice, bob = owners["alice"], owners["bob"]
    _start(repo, alice, "+15550100001", T0)
    _start(repo, alice, "+15550200001", T0 + timedelta(seconds=5))
    with pytest.raises(Blocked) as exc:
        _start(repo, alice, "+15550300001", T0 + timedelta(seconds=10))
    assert exc.value.reason == "owner" and exc.value.subject == f"owner:{alice}"
    assert exc.value.retry_after == pytest.approx(50)
    _start(repo, bob, "+15550300001", T0 + timedelta(seconds=10))  # another account
    _start(repo, alice, "+15550300001", T0 + timedelta(seconds=60))


def test_a_refused_start_stores_nothing(store: Any) -> None:
    db, owners = store
    repo = OtpRepository(db, _settings(sends_per_owner_per_minute=1))
    alice = owners["alice"]
    _start(repo, alice, NUMBERS[0], T0)
    with pytest.raises(Blocked):
        _start(repo, alice, NUMBERS[2], T0 + timedelta(seconds=1), key="x")
    assert len(rows_of(db)) == 1
    # Not a replay later: the refused call's key was not kept.
    assert not _start(repo, alice, NUMBERS[2], T0 + timedelta(seconds=61), key="x").replay


# ---- the pumping guard --------------------------------------------------------------------------


def _settle(repo: OtpRepository, owner: str, started: Started, how: str, now: datetime, code: str) -> None:
    vid = started.record.id
    if how == "approved":
        assert repo.check(owner, vid, "", code_check(code), now)[1] is CheckResult.APPROVED
    elif how == "max_attempts":
        for _ in range(started.record.max_attempts):
            repo.check(owner, vid, "", code_check("x"), now)
    elif how == "canceled":
        repo.cancel(owner, vid, now)
    # "expired" and "pending": left alone; the sweep settles the expired ones.


@settings(max_examples=20, deadline=None, database=None)
@given(
    outcomes=st.lists(st.sampled_from(["approved", "expired", "max_attempts", "canceled", "pending"]), max_size=14),
    min_volume=st.integers(1, 8),
    min_conversion=st.sampled_from([0.2, 0.5]),
)
def test_pumping_guard(outcomes: list[str], min_volume: int, min_conversion: float) -> None:
    """Verifications to numbers of one prefix end as drawn; the next new number of the prefix
    is refused ("pumping") exactly when the settled ones (approved, expired, max attempts; not
    canceled, not pending) reach the minimum volume and too few of them were approved. The
    other prefix is never affected."""
    db, owners = fresh_database()
    try:
        repo = OtpRepository(db, _settings(
            resend_cooldown=0, sends_per_prefix=1000, sends_per_owner_per_minute=1000,
            pumping_min_volume=min_volume, pumping_min_conversion=min_conversion, pumping_window=3600,
        ))
        alice = owners["alice"]
        now = T0
        # All started first (none settled yet: the guard cannot refuse them), then settled.
        started = [repo.start(alice, new_row(alice, f"+1555010{i:04d}", f"{i:06d}", now, ttl=60 if how == "expired" else 1800), now)
                   for i, how in enumerate(outcomes)]
        for i, (how, s) in enumerate(zip(outcomes, started, strict=True)):
            _settle(repo, alice, s, how, now + timedelta(seconds=1), f"{i:06d}")
        now += timedelta(seconds=120)
        repo.expire_due(now)
        settled = [o for o in outcomes if o in ("approved", "expired", "max_attempts")]
        trips = len(settled) >= min_volume and settled.count("approved") / len(settled) < min_conversion
        if trips:
            with pytest.raises(Blocked) as exc:
                _start(repo, alice, "+15550109999", now)
            assert exc.value.reason == "pumping" and exc.value.subject == "prefix:+1555010"
            assert exc.value.retry_after == pytest.approx(900)
        else:
            _start(repo, alice, "+15550109999", now)
        _start(repo, alice, "+15550209999", now)  # a healthy prefix
        if trips:  # it ages out of the window
            _start(repo, alice, "+15550109998", now + timedelta(seconds=3600))
    finally:
        close_database(db)


def test_pumping_guard_trips_on_a_synthetic_prefix_and_not_on_a_healthy_one(store: Any) -> None:
    db, owners = store
    repo = OtpRepository(db, _settings(resend_cooldown=0, pumping_min_volume=10, pumping_min_conversion=0.2,
                                       sends_per_prefix=1000, sends_per_owner_per_minute=1000))
    alice = owners["alice"]
    for i in range(10):  # 10 codes to +1555010…, one entered; 10 to +1555020…, 8 entered
        for prefix, approved in (("+1555010", i < 1), ("+1555020", i < 8)):
            code = f"{i:06d}"
            s = repo.start(alice, new_row(alice, f"{prefix}{i:04d}", code, T0, ttl=60), T0)
            if approved:
                repo.check(alice, s.record.id, "", code_check(code), T0)
    later = T0 + timedelta(seconds=61)
    # Before the sweep the unentered ones are pending: not settled, not counted.
    _start(repo, alice, "+15550109000", later)
    assert repo.expire_due(later) == 9 + 2
    with pytest.raises(Blocked) as exc:
        _start(repo, alice, "+15550109001", later)
    assert exc.value.reason == "pumping"
    _start(repo, alice, "+15550209001", later)


# ---- keys.py ----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None, database=None)
@given(text=st.text(max_size=300), number=st.sampled_from(NUMBERS))
def test_seal_open_round_trip(text: str, number: str) -> None:
    sealed = KEYS.seal(text, number)
    assert sealed.startswith(SEALED_PREFIX)
    assert KEYS.open(sealed, number) == text
    assert KEYS.seal(text, number) != sealed, "a fresh nonce each time"
    assert OtpKeys("t" * 40).open(sealed, number) is None, "another deployment's key opens nothing"
    other = next(n for n in NUMBERS if n != number)
    assert KEYS.open(sealed, other) is None, "sealed for one number: it opens for no other"


@pytest.mark.parametrize("bad", ["", SEALED_PREFIX, SEALED_PREFIX + "!!!", SEALED_PREFIX + "AAAA", "otp1:" + "A" * 40, "plain text"])
def test_open_garbage_is_none(bad: str) -> None:
    assert KEYS.open(bad, NUMBERS[0]) is None


def test_tampered_seal_is_none() -> None:
    sealed = KEYS.seal("Your code is 123456", NUMBERS[0])
    raw = bytearray(sealed.removeprefix(SEALED_PREFIX).encode())
    middle = len(raw) // 2  # a base64 character that carries 6 bits of ciphertext
    raw[middle] = ord("A") if raw[middle] != ord("A") else ord("g")
    assert KEYS.open(SEALED_PREFIX + raw.decode(), NUMBERS[0]) is None


def test_code_hash_is_keyed_and_per_verification() -> None:
    a, b = str(ULID()), str(ULID())
    h = KEYS.code_hash(a, "123456")
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == KEYS.code_hash(a, "123456")
    assert h != KEYS.code_hash(b, "123456"), "the same code under another verification hashes differently"
    assert h != OtpKeys("t" * 40).code_hash(a, "123456"), "keyed: another key, another hash"
    assert "123456" not in h
    assert KEYS.matches(a, "123456", h)
    assert not KEYS.matches(a, "123457", h) and not KEYS.matches(b, "123456", h) and not KEYS.matches(a, "", h)


def test_opened_otp() -> None:
    to = (NUMBERS[0],)
    sealed = KEYS.seal("Your code is 123456", NUMBERS[0])
    assert opened_otp(KEYS, sealed, to) == ("Your code is 123456", False)
    assert opened_otp(None, sealed, to) == (sealed, True), "without the key: the sealed text, as encrypted"
    assert opened_otp(OtpKeys("t" * 40), sealed, to) == (sealed, True)
    assert opened_otp(KEYS, sealed, (NUMBERS[1],)) == (sealed, True), "never opened for another number"
    assert opened_otp(KEYS, sealed, (NUMBERS[0], NUMBERS[1])) == (sealed, True), "nor for several"


@settings(max_examples=30, deadline=None, database=None)
@given(length=st.integers(1, 10))
def test_new_code(length: int) -> None:
    code = new_code(length)
    assert len(code) == length and code.isdigit() and code.isascii()


# ---- sms.py -----------------------------------------------------------------------------------

HASH = "FA+9qCX9VSu"


@pytest.mark.parametrize(("template", "app_hash", "field"), [
    ("no placeholder", "", "template"),
    ("{code} and {code}", "", "template"),
    ("{code} {minutes}", "", "template"),
    ("{code} {}", "", "template"),
    ("x" * 481 + "{code}", "", "template"),
    ("{code}", "short", "app_hash"),
    ("{code}", "FA+9qCX9VSu=", "app_hash"),
    ("{code}", "FA-9qCX9VSu", "app_hash"),
])
def test_check_template_refuses(template: str, app_hash: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_template(template, app_hash)
    assert exc.value.violations[0][0] == field


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, "{code}", "Code {code}, valid {ttl_minutes} min ({ttl_minutes})", "{{code}}"])
def test_check_template_accepts(template: str) -> None:
    check_template(template, "")
    check_template(template, HASH)


def test_render_fills_placeholders() -> None:
    text, parts, encoding = render("Your ACME code: {code}. Valid {ttl_minutes} min.", "012345", 10, "", 10)
    assert (text, parts, encoding) == ("Your ACME code: 012345. Valid 10 min.", 1, "GSM_7")
    assert render(DEFAULT_TEMPLATE, "4321", 5, "", 10)[0] == "Your code is 4321"


@settings(max_examples=60, deadline=None, database=None)
@given(body=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200), code=st.text("0123456789", min_size=4, max_size=10))
def test_render_with_app_hash_is_one_part_ending_with_the_hash(body: str, code: str) -> None:
    template = body.replace("{", "(").replace("}", ")") + " {code}"
    check_template(template, HASH)
    try:
        text, parts, _ = render(template, code, 10, HASH, 10)
    except InvalidArgument as exc:
        assert exc.violations[0][0] == "template" and "one part" in exc.violations[0][1]
        return
    assert parts == 1
    lines = text.split("\n")
    assert lines[-1] == HASH, "the app hash alone on the last line"
    assert code in text and not lines[-2].endswith((" ", "\t"))


def test_app_hash_limits_gsm_and_ucs2() -> None:
    # GSM-7: 160 septets in one part: the template's text, "\n" and 11 characters.
    fits = "a" * (160 - 1 - 11 - 6) + "{code}"
    assert render(fits, "123456", 10, HASH, 10)[1:] == (1, "GSM_7")
    with pytest.raises(InvalidArgument):
        render("a" + fits, "123456", 10, HASH, 10)
    # UCS-2: 70 units.
    fits_ucs2 = "ж" * (70 - 1 - 11 - 6) + "{code}"
    assert render(fits_ucs2, "123456", 10, HASH, 10)[1:] == (1, "UCS_2")
    with pytest.raises(InvalidArgument):
        render("ж" + fits_ucs2, "123456", 10, HASH, 10)
    # Without an app hash the same texts may take several parts, up to max_parts.
    assert render("a" + fits, "123456", 10, "", 10)[1:] == (1, "GSM_7")
    assert render("ж" + fits_ucs2, "123456", 10, "", 10)[1:] == (1, "UCS_2")
    assert render("ж" * 65 + "{code}", "123456", 10, "", 10)[1:] == (2, "UCS_2")
    with pytest.raises(InvalidArgument):
        render("ж" * 200 + "{code}", "123456", 10, "", 2)


@pytest.mark.parametrize(("template", "encoding"), [
    ("Your code is {code}", "GSM_7"), ("Ihr Code: {code} – gültig", "UCS_2"), ("Ärger? Code {code} für 5 €", "GSM_7"), ("Código: {code}", "UCS_2"),
    ("Код: {code}", "UCS_2"), ("code {code} 🔐", "UCS_2"),
])
def test_render_encoding(template: str, encoding: str) -> None:
    assert render(template, "123456", 10, "", 10)[2] == encoding
