"""gateway.auth.service.AuthService over a real SQLite file (RELIABILITY 17, 18, 20).

Token times come from an injected wall clock. pyjwt checks `exp`/`iat` against the real
clock (with the 30 s leeway), so fake time stays within ~20 s of real time: short windows
(`refresh_grace`, `refresh_inactivity`) are lowered through the settings instead.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.auth.passwords import hash_password
from gateway.auth.records import Caller, TokenPair
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES, Scope
from gateway.auth.service import AuthService
from gateway.auth.tokens import JwtKeys, TokenCodec, TokenKind
from gateway.config import Settings
from gateway.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from gateway.storage.engine import Database

SECRET = "unit-test-secret-0123456789abcdefghijklmnop"
PASSWORD = "a long test password 7"
USER = "alice"
A, B, THIEF = "10.0.0.1", "10.0.0.2", "203.0.113.9"
T = TypeVar("T")


def basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


class Wall:
    """The service's `now`: starts a little before real time, moved by the tests."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_settings(data_dir: Path, **jwt: Any) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": str(data_dir),
            "jwt": {"secret": SECRET, **jwt},
            "limits": {"auth_failures": 3, "auth_failure_window": 60, "auth_lockout": 120},
        }
    )


@dataclass
class Env:
    db: Database
    repo: AuthRepository
    settings: Settings
    wall: Wall
    ticks: Ticks
    service: AuthService
    owner_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def another_process(self) -> AuthService:
        """A second AuthService on the same database (as `smsgw serve` next to `smsgw users`)."""
        return AuthService(self.repo, codec(self.settings), self.settings, clock=self.ticks, now=self.wall)

    def audit(self, action: str = "") -> list[Any]:
        return self.repo.list_audit(None, action=action, limit=1000, before_id=None)


def codec(settings: Settings) -> TokenCodec:
    return TokenCodec(
        JwtKeys.hs256(SECRET), issuer=settings.jwt.issuer, audience=settings.jwt.audience, leeway=settings.jwt.leeway
    )


def build(data_dir: Path, *, synchronous: str = "FULL", **jwt: Any) -> Env:
    settings = make_settings(data_dir, **jwt)
    db = Database(settings.database_url, sqlite_synchronous=synchronous)
    db.create_all()
    repo = AuthRepository(db)
    wall, ticks = Wall(), Ticks()
    service = AuthService(repo, codec(settings), settings, clock=ticks, now=wall)
    env = Env(db, repo, settings, wall, ticks, service)
    # log2_n=10: cheap to verify; the cost parameter is read back from the stored hash.
    env.owner_id = repo.create_account(
        USER, hash_password(PASSWORD, log2_n=10), ALL_SCOPES, wall(), AuditEntry("account.create")
    ).id
    return env


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = build(tmp_path / "data", refresh_grace=2.0)
    try:
        yield e
    finally:
        e.db.close()


def issue(env: Env, scopes: list[str] | None = None, source: str = A, *, access: int = 0, refresh: int = 0) -> TokenPair:
    return run(env.service.issue(basic(USER, PASSWORD), scopes or [], access, refresh, source))


# ---- IssueToken ---------------------------------------------------------------------


def test_issue_with_a_subset_of_scopes(env: Env) -> None:
    pair = issue(env, ["messages:send", "messages:read"])
    wanted = {Scope.MESSAGES_SEND, Scope.MESSAGES_READ}
    assert pair.access.scopes == pair.refresh.scopes == wanted
    assert pair.access.family_id == pair.refresh.family_id
    assert pair.access.jti != pair.refresh.jti
    assert pair.access.expires_at - pair.access.issued_at == timedelta(seconds=env.settings.jwt.access_ttl)
    assert pair.refresh.expires_at - pair.refresh.issued_at == timedelta(seconds=env.settings.jwt.refresh_ttl)
    caller = env.service.authenticate(pair.access_token, A)
    assert (caller.owner_id, caller.jti, caller.scopes, caller.source) == (env.owner_id, pair.access.jti, wanted, A)
    assert env.service.codec.decode(pair.refresh_token, TokenKind.REFRESH) == pair.refresh
    [row] = env.audit("token.issue")
    assert row.owner_id == env.owner_id and row.source == A


def test_issue_without_scopes_gets_the_accounts_scopes(env: Env) -> None:
    assert issue(env).access.scopes == ALL_SCOPES


def test_a_scope_the_account_lacks_is_permission_denied(env: Env) -> None:
    env.repo.create_account("bob", hash_password(PASSWORD, log2_n=10), frozenset({Scope.MESSAGES_SEND}), env.wall(), AuditEntry("x"))
    with pytest.raises(PermissionDenied, match="logs:read"):
        run(env.service.issue(basic("bob", PASSWORD), ["messages:send", "logs:read"], 0, 0, A))
    pair = run(env.service.issue(basic("bob", PASSWORD), [], 0, 0, A))
    assert pair.access.scopes == {Scope.MESSAGES_SEND}


def test_an_unknown_scope_is_invalid_argument(env: Env) -> None:
    with pytest.raises(InvalidArgument) as info:
        issue(env, ["messages:send", "root"])
    assert [f for f, _ in info.value.violations] == ["scopes"]
    assert "root" in str(info.value)


@pytest.mark.parametrize(
    "access, refresh, fields",
    [
        (900, 900, ["refresh_ttl_seconds"]),
        (3600, 600, ["refresh_ttl_seconds"]),
        (0, 600, ["refresh_ttl_seconds"]),  # the default access TTL is 900
        (24 * 3600 + 1, 0, ["access_ttl_seconds"]),
        (0, 90 * 24 * 3600 + 1, ["refresh_ttl_seconds"]),
        (2**63, 2**64 - 1, ["access_ttl_seconds", "refresh_ttl_seconds"]),  # uint64 on the wire
    ],
)
def test_ttl_rules(env: Env, access: int, refresh: int, fields: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        issue(env, access=access, refresh=refresh)
    assert fields == sorted({f for f, _ in info.value.violations})
    assert not env.audit("token.issue")


def test_ttls_within_the_limits(env: Env) -> None:
    pair = issue(env, access=60, refresh=61)
    assert pair.access.expires_at - pair.access.issued_at == timedelta(seconds=60)
    assert pair.refresh.expires_at - pair.refresh.issued_at == timedelta(seconds=61)
    top = issue(env, access=24 * 3600, refresh=90 * 24 * 3600)
    assert top.refresh.expires_at - top.refresh.issued_at == timedelta(days=90)


def _no_secret_in_audit(env: Env, *secrets: str) -> None:
    for row in env.audit():
        for value in (row.owner_id, row.action, row.actor, row.source, row.detail):
            for secret in secrets:
                assert secret not in (value or ""), (row, secret)


@pytest.mark.parametrize("username, password", [(USER, "wrong password 123"), ("mallory", PASSWORD), (USER, "")])
def test_wrong_credentials_are_unauthenticated_and_audited(env: Env, username: str, password: str) -> None:
    with pytest.raises(Unauthenticated, match="wrong username or password"):
        run(env.service.issue(basic(username, password), [], 0, 0, B))
    [row] = env.audit("auth.failure")
    assert row.source == B
    assert row.owner_id == (env.owner_id if username == USER else None)
    _no_secret_in_audit(env, PASSWORD, "wrong password 123", basic(username, password))
    assert not env.audit("token.issue")


@pytest.mark.parametrize("credentials", ["", "not base64!", base64.b64encode(b"no-colon").decode(), base64.b64encode(b":pw").decode(),
                                         base64.b64encode(b"\xff\xfe:x").decode(), "\u00e9t\u00e9", "YWxpY2U6cGFzcw"])
def test_malformed_basic_credentials(env: Env, credentials: str) -> None:
    with pytest.raises(Unauthenticated):
        run(env.service.issue(credentials, [], 0, 0, B))
    assert env.audit("auth.failure")


def test_failed_sign_ins_lock_the_source_out(env: Env) -> None:
    for _ in range(3):
        env.service.check_locked(B)
        with pytest.raises(Unauthenticated):
            run(env.service.issue(basic(USER, "nope nope nope"), [], 0, 0, B))
    with pytest.raises(ResourceExhausted) as info:
        env.service.check_locked(B)
    assert info.value.retry_after == pytest.approx(120)
    env.service.check_locked(A)  # other sources are not affected
    env.ticks.now += 121
    env.service.check_locked(B)


def test_a_disabled_account_is_refused(env: Env) -> None:
    pair = issue(env)
    env.repo.update_account(USER, env.wall(), disabled=True)
    with pytest.raises(Unauthenticated):
        issue(env)
    run(env.service.refresh_revocations())
    with pytest.raises(Unauthenticated, match="revoked"):
        env.service.authenticate(pair.access_token, A)
    with pytest.raises(Unauthenticated):
        run(env.service.refresh(pair.refresh_token, A))


# ---- authenticate -------------------------------------------------------------------


def test_authenticate_takes_access_tokens_only(env: Env) -> None:
    pair = issue(env)
    assert env.service.authenticate(pair.access_token, A).jti == pair.access.jti
    assert env.service.authenticate(pair.access_token, A).jti == pair.access.jti  # cached
    with pytest.raises(Unauthenticated, match="not an access token"):
        env.service.authenticate(pair.refresh_token, A)
    with pytest.raises(Unauthenticated):
        env.service.authenticate("garbage", A)


def test_authenticate_refuses_an_expired_access_token(env: Env) -> None:
    pair = issue(env, access=5, refresh=600)
    env.service.authenticate(pair.access_token, A)  # cached now
    env.wall.advance(5 + env.settings.jwt.leeway)
    with pytest.raises(Unauthenticated, match="expired"):
        env.service.authenticate(pair.access_token, A)


# ---- RefreshToken -------------------------------------------------------------------


def test_refresh_rotates(env: Env) -> None:
    first = issue(env, ["messages:send"])
    env.wall.advance(1)
    second = run(env.service.refresh(first.refresh_token, A))
    assert second.access.family_id == second.refresh.family_id == first.access.family_id
    assert len({first.access.jti, first.refresh.jti, second.access.jti, second.refresh.jti}) == 4
    assert second.access.scopes == second.refresh.scopes == {Scope.MESSAGES_SEND}
    assert second.refresh.expires_at == first.refresh.expires_at  # the family's end does not move
    assert env.service.authenticate(second.access_token, A).jti == second.access.jti
    assert env.service.authenticate(first.access_token, A).jti == first.access.jti  # still valid until exp
    state = env.repo.refresh_state(first.refresh.jti)
    assert state is not None and state.rotated_at is not None and state.rotated_by_source == A
    [row] = env.audit("token.refresh")
    assert first.refresh.jti in row.actor and first.refresh_token not in row.detail
    third = run(env.service.refresh(second.refresh_token, A))
    assert third.refresh.jti not in {first.refresh.jti, second.refresh.jti}


def test_refresh_refuses_an_access_token(env: Env) -> None:
    pair = issue(env)
    with pytest.raises(Unauthenticated, match="not a refresh token"):
        run(env.service.refresh(pair.access_token, A))
    assert env.service.authenticate(pair.access_token, A)  # a failed refresh revokes nothing


def _assert_family_dead(env: Env, service: AuthService, *pairs: TokenPair) -> None:
    for pair in pairs:
        with pytest.raises(Unauthenticated, match="revoked"):
            service.authenticate(pair.access_token, A)
        with pytest.raises(Unauthenticated):
            run(service.refresh(pair.refresh_token, A))


def test_reuse_of_a_rotated_refresh_token_revokes_the_family(env: Env) -> None:
    first = issue(env)
    other = issue(env)  # another sign-in of the same account: untouched
    second = run(env.service.refresh(first.refresh_token, A))
    env.wall.advance(3)  # past the 2 s grace
    with pytest.raises(Unauthenticated, match="reused"):
        run(env.service.refresh(first.refresh_token, A))
    _assert_family_dead(env, env.service, first, second)
    [row] = env.audit("token.reuse")
    assert row.owner_id == env.owner_id and row.actor == first.refresh.jti and first.access.family_id in row.detail
    # Another process learns it from the database.
    later = env.another_process()
    run(later.refresh_revocations())
    _assert_family_dead(env, later, first, second)
    # The other family keeps working.
    assert env.service.authenticate(other.access_token, A)
    assert later.authenticate(other.access_token, A)
    assert run(env.service.refresh(other.refresh_token, A)).access.family_id == other.access.family_id


def test_a_retry_within_the_grace_window_gets_the_same_pair(env: Env) -> None:
    first = issue(env)
    second = run(env.service.refresh(first.refresh_token, A))
    env.wall.advance(2)  # the grace window is 2 s (inclusive)
    again = run(env.service.refresh(first.refresh_token, A))
    assert (again.access_token, again.refresh_token) == (second.access_token, second.refresh_token)
    assert again == second
    assert env.service.authenticate(second.access_token, A)
    assert not env.audit("token.reuse")
    # The pair is still live: its refresh token rotates normally.
    third = run(env.service.refresh(second.refresh_token, A))
    assert env.service.authenticate(third.access_token, A)


def test_a_retry_from_another_source_is_reuse(env: Env) -> None:
    first = issue(env)
    second = run(env.service.refresh(first.refresh_token, A))
    with pytest.raises(Unauthenticated, match="reused"):
        run(env.service.refresh(first.refresh_token, THIEF))
    _assert_family_dead(env, env.service, first, second)
    [row] = env.audit("token.reuse")
    assert row.source == THIEF


def test_a_retry_after_the_grace_window_is_reuse(env: Env) -> None:
    first = issue(env)
    second = run(env.service.refresh(first.refresh_token, A))
    env.wall.advance(3)
    with pytest.raises(Unauthenticated, match="reused"):
        run(env.service.refresh(first.refresh_token, A))
    _assert_family_dead(env, env.service, first, second)


def test_the_new_token_used_by_the_thief_then_the_victim_retries(env: Env) -> None:
    """The attacker wins the race with a stolen token; the victim's later use trips the alarm."""
    first = issue(env)
    stolen = run(env.service.refresh(first.refresh_token, THIEF))
    env.wall.advance(1)
    with pytest.raises(Unauthenticated, match="reused"):
        run(env.service.refresh(first.refresh_token, A))
    _assert_family_dead(env, env.service, stolen)


def test_refresh_inactivity(tmp_path: Path) -> None:
    env = build(tmp_path / "data", refresh_inactivity=5)
    try:
        pair = issue(env)
        env.wall.advance(5)
        pair = run(env.service.refresh(pair.refresh_token, A))  # used in time: a new 5 s
        env.wall.advance(6)
        with pytest.raises(Unauthenticated, match="unused for too long"):
            run(env.service.refresh(pair.refresh_token, A))
    finally:
        env.db.close()


def test_a_revoked_family_is_refused_at_refresh(env: Env) -> None:
    pair = issue(env)
    run(env.service.revoke(env.service.authenticate(pair.access_token, A), pair.refresh.jti))
    with pytest.raises(Unauthenticated, match="revoked"):
        run(env.service.refresh(pair.refresh_token, A))
    assert env.audit("auth.failure")


# ---- RevokeToken --------------------------------------------------------------------


def test_revoking_an_access_jti_revokes_only_that_token(env: Env) -> None:
    first = issue(env)
    second = run(env.service.refresh(first.refresh_token, A))
    caller = env.service.authenticate(second.access_token, A)
    assert run(env.service.revoke(caller, first.access.jti)) == 1
    with pytest.raises(Unauthenticated, match="revoked"):
        env.service.authenticate(first.access_token, A)
    assert env.service.authenticate(second.access_token, A)
    third = run(env.service.refresh(second.refresh_token, A))
    assert env.service.authenticate(third.access_token, A)
    assert run(env.service.revoke(caller, first.access.jti)) == 0  # already revoked
    later = env.another_process()
    run(later.refresh_revocations())
    with pytest.raises(Unauthenticated, match="revoked"):
        later.authenticate(first.access_token, A)
    assert later.authenticate(third.access_token, A)


def test_revoking_a_refresh_jti_revokes_the_family(env: Env) -> None:
    first = issue(env)
    other = issue(env)
    second = run(env.service.refresh(first.refresh_token, A))
    caller = env.service.authenticate(other.access_token, A)
    assert run(env.service.revoke(caller, second.refresh.jti)) >= 3
    _assert_family_dead(env, env.service, first, second)
    assert env.service.authenticate(other.access_token, A)
    [row] = env.audit("token.revoke")
    assert second.refresh.jti in row.detail and row.actor == other.access.jti


def test_revoking_another_owners_token_is_not_found(env: Env) -> None:
    env.repo.create_account("bob", hash_password(PASSWORD, log2_n=10), ALL_SCOPES, env.wall(), AuditEntry("x"))
    mine = issue(env)
    bobs = run(env.service.issue(basic("bob", PASSWORD), [], 0, 0, B))
    bob = env.service.authenticate(bobs.access_token, B)
    for jti in (mine.access.jti, mine.refresh.jti, "01UNKNOWN000000000000000"):
        with pytest.raises(NotFound):
            run(env.service.revoke(bob, jti))
    with pytest.raises(InvalidArgument) as info:
        run(env.service.revoke(bob, ""))
    assert info.value.violations[0][0] == "jti"
    assert env.service.authenticate(mine.access_token, A)
    assert run(env.service.refresh(mine.refresh_token, A))


def test_refresh_revocations_picks_up_a_revocation_from_another_process(env: Env) -> None:
    pair = issue(env)
    assert env.service.authenticate(pair.access_token, A)
    # `smsgw users disable` / a second server writes straight to the database.
    count, family, _ = env.repo.revoke(env.owner_id, pair.refresh.jti, env.wall(), AuditEntry("token.revoke", source="cli"))
    assert count == 2 and family == pair.access.family_id
    assert env.service.authenticate(pair.access_token, A)  # not yet re-read
    run(env.service.refresh_revocations())
    with pytest.raises(Unauthenticated, match="revoked"):
        env.service.authenticate(pair.access_token, A)


def test_a_revocation_during_refresh_revocations_is_not_forgotten(env: Env) -> None:
    """The deny lists re-read from the database must not drop a revocation made through the
    API while the read was in flight (the read started before the revocation committed)."""
    pair = issue(env)
    caller = env.service.authenticate(pair.access_token, A)
    read_done, may_return = threading.Event(), threading.Event()
    real = env.repo.revocations

    def slow_revocations(now: datetime) -> Any:
        result = real(now)
        read_done.set()
        assert may_return.wait(10)
        return result

    env.repo.revocations = slow_revocations  # type: ignore[method-assign]

    async def scenario() -> None:
        reread = asyncio.create_task(env.service.refresh_revocations())
        await asyncio.to_thread(read_done.wait, 10)
        await env.service.revoke(caller, pair.access.jti)
        may_return.set()
        await reread

    run(scenario())
    with pytest.raises(Unauthenticated, match="revoked"):
        env.service.authenticate(pair.access_token, A)


def test_refresh_revocations_is_repeatable_and_forgets_expired_entries(env: Env) -> None:
    pair = issue(env, access=5, refresh=10)
    caller = env.service.authenticate(pair.access_token, A)
    run(env.service.revoke(caller, pair.refresh.jti))
    for _ in range(3):
        run(env.service.refresh_revocations())
        with pytest.raises(Unauthenticated, match="revoked"):
            env.service.authenticate(pair.access_token, A)
    assert pair.access.family_id in env.service._denied_families
    env.wall.advance(env.settings.jwt.max_refresh_ttl + 1)
    run(env.service.refresh_revocations())
    assert not env.service._denied_families and not env.service._denied_tokens


# ---- RELIABILITY 18: random refresh / retry / theft sequences -------------------------

GRACE = 2  # seconds (jwt.refresh_grace, lowered so that a few steps of fake time pass it)
MAX_ADVANCE = 25  # keep fake time within pyjwt's 30 s leeway of real time


@dataclass
class Spent:
    at: datetime
    source: str
    successor: TokenPair


@dataclass
class Family:
    id: str
    pairs: list[TokenPair]
    spent: dict[str, Spent] = field(default_factory=dict)  # refresh jti -> its rotation
    revoked: bool = False
    revoked_access: set[str] = field(default_factory=set)

    @property
    def latest(self) -> TokenPair:
        return self.pairs[-1]


class RefreshMachine(RuleBasedStateMachine):
    """Sign-ins, refreshes, same-source retries, presentations of spent tokens (theft or a
    late retry), time passing and revocations, against a model of the rules:

    * presenting the unspent refresh token of a live family rotates it;
    * presenting a spent one within the grace window from the source that spent it returns
      the very pair it was rotated into; anything else is reuse and kills the family;
    * a dead family's tokens are all refused, here and in another process; other families
      are untouched; a live family has exactly one unspent refresh token.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="smsgw-auth-"))
        self.env = build(self.tmp / "data", synchronous="NORMAL", refresh_grace=float(GRACE))
        self.loop = asyncio.new_event_loop()
        self.families: list[Family] = []
        self.advanced = 0
        self.reuses = 0

    def teardown(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
        self.env.db.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def now(self) -> datetime:
        return self.env.wall().replace(microsecond=0)

    def family(self, index: int) -> Family:
        return self.families[index % len(self.families)]

    def expect_dead(self, fam: Family) -> None:
        """Every refresh token of a dead family is refused (and nothing rotates)."""
        for pair in fam.pairs:
            with pytest.raises(Unauthenticated):
                self.run(self.env.service.refresh(pair.refresh_token, THIEF))

    # ---- rules ----

    @initialize(source=st.sampled_from([A, B]))
    def first_sign_in(self, source: str) -> None:
        self.sign_in(source)

    @precondition(lambda self: len(self.families) < 4)
    @rule(source=st.sampled_from([A, B]))
    def sign_in(self, source: str) -> None:
        pair = self.run(self.env.service.issue(basic(USER, PASSWORD), [], 0, 0, source))
        assert pair.access.family_id not in {f.id for f in self.families}
        self.families.append(Family(pair.access.family_id, [pair]))
        note(f"sign in -> family {len(self.families) - 1}")

    @precondition(lambda self: self.families)
    @rule(index=st.integers(0, 3), source=st.sampled_from([A, B]))
    def refresh_latest(self, index: int, source: str) -> None:
        fam = self.family(index)
        old = fam.latest
        if fam.revoked:
            with pytest.raises(Unauthenticated):
                self.run(self.env.service.refresh(old.refresh_token, source))
            return
        new = self.run(self.env.service.refresh(old.refresh_token, source))
        assert new.access.family_id == new.refresh.family_id == fam.id
        seen = {j for p in fam.pairs for j in (p.access.jti, p.refresh.jti)}
        assert new.access.jti not in seen and new.refresh.jti not in seen
        fam.spent[old.refresh.jti] = Spent(self.now(), source, new)
        fam.pairs.append(new)

    def _present_spent(self, fam: Family, jti: str, source: str) -> None:
        spent = fam.spent[jti]
        token = next(p.refresh_token for p in fam.pairs if p.refresh.jti == jti)
        if fam.revoked:
            with pytest.raises(Unauthenticated):
                self.run(self.env.service.refresh(token, source))
        elif self.now() - spent.at <= timedelta(seconds=GRACE) and source == spent.source:
            again = self.run(self.env.service.refresh(token, source))
            assert (again.access_token, again.refresh_token) == (
                spent.successor.access_token, spent.successor.refresh_token
            )
            event("retry within grace")
        else:
            with pytest.raises(Unauthenticated, match="reused"):
                self.run(self.env.service.refresh(token, source))
            fam.revoked = True
            self.reuses += 1
            event("reuse" if source == spent.source else "reuse from another source")
            self.expect_dead(fam)

    @precondition(lambda self: any(f.spent for f in self.families))
    @rule(index=st.integers(0, 3))
    def retry_previous(self, index: int) -> None:
        """The client retries the token it just spent (a lost response), from the same place."""
        fam = next(f for f in (self.family(index + k) for k in range(len(self.families))) if f.spent)
        jti = list(fam.spent)[-1]
        self._present_spent(fam, jti, fam.spent[jti].source)

    @precondition(lambda self: any(f.spent for f in self.families))
    @rule(index=st.integers(0, 3), which=st.integers(0, 20), source=st.sampled_from([A, B, THIEF]))
    def present_spent(self, index: int, which: int, source: str) -> None:
        """Any spent refresh token from anywhere: a thief, or a very late retry."""
        fam = next(f for f in (self.family(index + k) for k in range(len(self.families))) if f.spent)
        jtis = list(fam.spent)
        self._present_spent(fam, jtis[which % len(jtis)], source)

    @rule(seconds=st.sampled_from([0, 1, 2, 3]))
    def advance(self, seconds: int) -> None:
        seconds = min(seconds, MAX_ADVANCE - self.advanced)
        self.advanced += seconds
        self.env.wall.advance(seconds)

    @precondition(lambda self: self.families)
    @rule(index=st.integers(0, 3), which=st.integers(0, 40), refresh=st.booleans())
    def revoke(self, index: int, which: int, refresh: bool) -> None:
        fam = self.family(index)
        pair = fam.pairs[which % len(fam.pairs)]
        caller = Caller(self.env.owner_id, "01REVOKER000000000000000", ALL_SCOPES, A)
        if refresh:
            # Spent (rotated) refresh tokens were dead already: they do not count as revoked now.
            live = 0 if fam.revoked else 2 * len(fam.pairs) - len(fam.revoked_access) - len(fam.spent)
            assert self.run(self.env.service.revoke(caller, pair.refresh.jti)) == live
            fam.revoked = True
            self.expect_dead(fam)
        else:
            live = 0 if fam.revoked or pair.access.jti in fam.revoked_access else 1
            assert self.run(self.env.service.revoke(caller, pair.access.jti)) == live
            fam.revoked_access.add(pair.access.jti)

    # ---- invariants ----

    @invariant()
    def access_tokens_follow_the_model(self) -> None:
        other = self.env.another_process()
        self.run(other.refresh_revocations())
        for fam in self.families:
            for pair in fam.pairs:
                alive = not fam.revoked and pair.access.jti not in fam.revoked_access
                for service in (self.env.service, other):
                    if alive:
                        assert service.authenticate(pair.access_token, A).jti == pair.access.jti
                    else:
                        with pytest.raises(Unauthenticated, match="revoked"):
                            service.authenticate(pair.access_token, A)

    @invariant()
    def at_most_one_unspent_refresh_token_per_family(self) -> None:
        for fam in self.families:
            unspent = []
            for pair in fam.pairs:
                state = self.env.repo.refresh_state(pair.refresh.jti)
                assert state is not None and state.family_id == fam.id
                assert state.revoked == fam.revoked
                if not state.revoked and state.rotated_at is None:
                    unspent.append(pair.refresh.jti)
            assert unspent == ([] if fam.revoked else [fam.latest.refresh.jti])

    @invariant()
    def every_reuse_is_audited(self) -> None:
        assert len(self.env.audit("token.reuse")) == self.reuses


TestRefreshSequences = RefreshMachine.TestCase
TestRefreshSequences.settings = settings(
    max_examples=40, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---- retention ------------------------------------------------------------------------


def test_purge_forgets_tokens_a_day_past_expiry_and_keeps_live_ones(env: Env) -> None:
    old = issue(env, access=60, refresh=120)
    live = issue(env)
    run(env.service.refresh(old.refresh_token, A))  # a rotation: two more rows in the old family
    assert env.repo.purge_expired(env.wall(), timedelta(days=1)) == 0
    later = env.wall() + timedelta(seconds=120) + timedelta(days=1, seconds=1)
    assert env.repo.purge_expired(later, timedelta(days=1)) == 4
    assert env.repo.refresh_state(old.refresh.jti) is None
    assert env.repo.refresh_state(live.refresh.jti) is not None
    assert env.repo.purge_expired(later, timedelta(days=1)) == 0
