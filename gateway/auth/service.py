"""The auth service the gRPC API calls (asyncio side): accounts, token issue / refresh /
revoke, access-token verification for every RPC, rate limits, and the audit log.

Verification is in memory and cheap (RELIABILITY 16; DESIGN "What things cost here": verify
once per token): a verified token's claims are cached, and revocation is checked against deny
lists of revoked families and access jtis. The lists are loaded at start, updated at once by
revocations through the API, and re-read every few seconds (`refresh_revocations`) so that a
change made by `smsgw users` in another process also takes effect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

from ulid import ULID

from gateway.auth.limits import Clock, FailureTracker, RateLimiter
from gateway.auth.passwords import dummy_hash, hash_password, verify_password
from gateway.auth.records import AccountRecord, AuditRecord, Caller, TokenPair
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES, Scope, parse_scopes
from gateway.auth.tokens import Claims, TokenCodec, TokenKind
from gateway.config import Settings
from gateway.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from gateway.metrics import GatewayMetrics
from gateway.types import utcnow

__all__ = ["AuthService", "check_new_credentials", "USERNAME_RULE"]

USERNAME_RULE = re.compile(r"^[A-Za-z0-9._@-]{3,64}$")
_PASSWORD_MIN, _PASSWORD_MAX = 12, 256
_CACHE_SIZE = 10_000


def check_new_credentials(username: str, password: str) -> None:
    """InvalidArgument naming each bad field of a new account."""
    bad = []
    if not USERNAME_RULE.match(username):
        bad.append(("username", "3..64 characters: letters, digits, . _ - @"))
    if not _PASSWORD_MIN <= len(password) <= _PASSWORD_MAX:
        bad.append(("password", f"{_PASSWORD_MIN}..{_PASSWORD_MAX} characters"))
    InvalidArgument.raise_if_any(bad)


class AuthService:
    def __init__(
        self,
        repo: AuthRepository,
        codec: TokenCodec,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """`clock` drives the rate limits, `now` the token times (both injectable for tests)."""
        self.repo = repo
        self.metrics = metrics
        self._wall = now
        self.codec = codec
        self.jwt = settings.jwt
        self.mode = settings.gateway.mode
        limits = settings.limits
        self.token_limiter = RateLimiter(limits.rate_per_token, limits.burst_per_token, clock=clock)
        self.source_limiter = RateLimiter(limits.rate_per_source, limits.burst_per_source, clock=clock)
        self.failures = FailureTracker(limits.auth_failures, limits.auth_failure_window, limits.auth_lockout, clock=clock)
        self._denied_families: dict[str, datetime] = {}
        self._denied_tokens: dict[str, datetime] = {}
        # Called after this service revoked tokens, so other gateways re-read their deny
        # lists at once (`smsgw gateway`: the PostgreSQL bus; one process: nothing to tell).
        self.on_revoked: Callable[[], None] | None = None
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def _now(self) -> datetime:
        # JWT times are whole seconds; keep the claims we store equal to the ones we sign.
        return self._wall().replace(microsecond=0)

    # ---- verification (every RPC) ------------------------------------------------

    async def refresh_revocations(self) -> None:
        """Re-read the deny lists (revocations made in another process, expiries)."""
        families, tokens = await asyncio.to_thread(self.repo.revocations, self._now())
        # Merge, not replace: a revocation made through this service while the read was in
        # flight is not in it yet. Revocations are never undone; entries only expire.
        now = self._now()
        self._denied_families = {**{k: v for k, v in self._denied_families.items() if v > now}, **families}
        self._denied_tokens = {**{k: v for k, v in self._denied_tokens.items() if v > now}, **tokens}

    async def purge_expired(self) -> int:
        """Drop token rows a day past their expiry (the jobs loop calls this now and then)."""
        return await asyncio.to_thread(self.repo.purge_expired, self._now(), timedelta(days=1))

    def authenticate(self, token: str, source: str) -> Caller:
        """The caller behind an access token. Raises Unauthenticated."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self.codec.decode(token, TokenKind.ACCESS)
            self._verified[token] = claims
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        if claims.expires_at + timedelta(seconds=self.jwt.leeway) <= self._now():
            self._verified.pop(token, None)
            raise Unauthenticated("token expired")
        if claims.family_id in self._denied_families or claims.jti in self._denied_tokens:
            raise Unauthenticated("token revoked")
        return Caller(claims.owner_id, claims.jti, claims.scopes, source)

    def check_locked(self, source: str) -> None:
        locked = self.failures.locked_for(source)
        if locked:
            raise ResourceExhausted(
                "too many failed authentications from this address", locked, subject=f"source:{source}"
            )

    def limit_token(self, caller: Caller) -> None:
        wait = self.token_limiter.take(caller.jti)
        if wait:
            raise ResourceExhausted(
                f"rate limit: {self.token_limiter.rate:g} requests/s per token (burst {self.token_limiter.burst})",
                wait, subject=f"token:{caller.jti}",
            )

    def limit_source(self, source: str) -> None:
        wait = self.source_limiter.take(source)
        if wait:
            raise ResourceExhausted(
                f"rate limit: {self.source_limiter.rate:g} sign-in requests/s per address", wait, subject=f"source:{source}"
            )

    async def failed(self, source: str, why: str, *, owner_id: str | None = None, actor: str = "") -> None:
        """Count a failed authentication from `source` (against `owner_id`'s account, when
        known) and audit it."""
        locked = self.failures.fail(source, owner_id or "")
        if self.metrics is not None:
            self.metrics.auth_failures.labels(_failure_reason(why)).inc()
        detail = why + ("; address locked out" if locked else "")
        await asyncio.to_thread(self.repo.audit, AuditEntry("auth.failure", owner_id, actor, source, detail), self._now())

    # ---- accounts ------------------------------------------------------------------

    async def create_account(self, username: str, password: str, source: str) -> AccountRecord:
        if self.mode != "public":
            raise FailedPrecondition("accounts are created by the operator in private mode (smsgw users add)")
        check_new_credentials(username, password)
        hashed = await asyncio.to_thread(hash_password, password)
        return await asyncio.to_thread(
            self.repo.create_account, username, hashed, ALL_SCOPES, self._now(), AuditEntry("account.create", source=source)
        )

    # ---- tokens --------------------------------------------------------------------

    async def sign_in(self, basic: str, source: str) -> AccountRecord:
        """The account behind Basic credentials (base64 of username:password); Unauthenticated
        otherwise, counted and audited as any failed sign-in (the SMSGate API's Basic auth)."""
        return await self._sign_in(basic, source)

    async def _sign_in(self, basic: str, source: str) -> AccountRecord:
        try:
            username, sep, password = base64.b64decode(basic, validate=True).decode().partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, or a str that is not ASCII
            username, sep, password = "", "", ""
        if not sep or not username:
            await self.failed(source, "malformed Basic credentials")
            raise Unauthenticated("malformed Basic credentials: expected base64(username:password)")
        found = await asyncio.to_thread(self.repo.account_by_username, username)
        stored = found[1] if found and found[1] else dummy_hash()
        ok = await asyncio.to_thread(verify_password, password, stored)
        if found is None or not ok or not found[1] or found[0].disabled:
            owner = found[0].id if found else None
            await self.failed(source, "wrong username or password", owner_id=owner, actor=username if found else "")
            raise Unauthenticated("wrong username or password")
        self.failures.succeed(source, found[0].id)
        return found[0]

    async def issue(
        self, basic: str, scopes: list[str], access_ttl: int, refresh_ttl: int, source: str
    ) -> TokenPair:
        """IssueToken: Basic credentials -> a new token family and its first pair."""
        account = await self._sign_in(basic, source)
        try:
            wanted = parse_scopes(scopes) or account.scopes
        except ValueError as exc:
            raise InvalidArgument("scopes", str(exc)) from None
        return await self._new_pair(account.id, account.username, account.scopes, wanted, access_ttl, refresh_ttl, source)

    async def issue_for(self, caller: Caller, scopes: list[str], access_ttl: int, source: str) -> TokenPair:
        """A new token family for a caller already authenticated (SMSGate's POST /auth/token:
        Basic, or an access token with tokens:manage), with at most the caller's scopes."""
        try:
            wanted = parse_scopes(scopes)
        except ValueError as exc:
            raise InvalidArgument("scopes", str(exc)) from None
        if not wanted:
            raise InvalidArgument("scopes", "at least one scope")
        return await self._new_pair(caller.owner_id, caller.jti, caller.scopes, wanted, access_ttl, 0, source)

    async def _new_pair(
        self, owner_id: str, actor: str, allowed: frozenset[Scope], wanted: frozenset[Scope], access_ttl: int,
        refresh_ttl: int, source: str,
    ) -> TokenPair:
        missing = wanted - allowed
        if missing:
            raise PermissionDenied(f"the account lacks scope {', '.join(sorted(missing))}")
        access_ttl = access_ttl or self.jwt.access_ttl
        refresh_ttl = refresh_ttl or self.jwt.refresh_ttl
        bad = []
        if access_ttl > self.jwt.max_access_ttl:
            bad.append(("access_ttl_seconds", f"at most {self.jwt.max_access_ttl}"))
        if refresh_ttl > self.jwt.max_refresh_ttl:
            bad.append(("refresh_ttl_seconds", f"at most {self.jwt.max_refresh_ttl}"))
        if refresh_ttl <= access_ttl:
            bad.append(("refresh_ttl_seconds", "must exceed the access token's TTL"))
        InvalidArgument.raise_if_any(bad)
        now = self._now()
        family = str(ULID())
        access = Claims(TokenKind.ACCESS, str(ULID()), owner_id, family, wanted, now, now + timedelta(seconds=access_ttl))
        refresh = Claims(TokenKind.REFRESH, str(ULID()), owner_id, family, wanted, now, now + timedelta(seconds=refresh_ttl))
        audit = AuditEntry(
            "token.issue", owner_id, actor, source,
            f"access {access.jti} ({access_ttl} s), refresh {refresh.jti}; scopes {' '.join(sorted(wanted))}",
        )
        await asyncio.to_thread(self.repo.record_pair, access, refresh, access_ttl, now, audit)
        if self.metrics is not None:
            self.metrics.tokens_issued.labels("issue").inc()
        return self._pair(access, refresh)

    def _pair(self, access: Claims, refresh: Claims) -> TokenPair:
        return TokenPair(access, refresh, self.codec.encode(access), self.codec.encode(refresh))

    async def refresh(self, token: str, source: str) -> TokenPair:
        """RefreshToken: rotate, or hand back the same pair to a retry, or catch a reuse."""
        try:
            claims = self.codec.decode(token, TokenKind.REFRESH)
        except Unauthenticated as exc:
            await self.failed(source, f"refresh: {exc}")
            raise
        for _ in range(2):  # a lost race against a concurrent refresh is re-read once
            state = await asyncio.to_thread(self.repo.refresh_state, claims.jti)
            if state is None or state.revoked:
                await self.failed(source, "refresh: unknown or revoked refresh token", owner_id=claims.owner_id, actor=claims.jti)
                raise Unauthenticated("refresh token revoked")
            # The grace window is measured on the exact clock: JWT times are whole seconds,
            # and comparing truncated times would stretch it by up to a second (a grace of 0
            # would still let a reuse within the same second through).
            exact = self._wall()
            now = exact.replace(microsecond=0)
            if state.rotated_at is not None:
                in_grace = exact - state.rotated_at <= timedelta(seconds=self.jwt.refresh_grace)
                if in_grace and state.rotated_by_source == source and state.successors is not None:
                    return self._pair(*state.successors)
                await self._revoke_reused(claims, source)
                raise Unauthenticated("refresh token reused: every token of this sign-in is now revoked")
            if now - state.issued_at > timedelta(seconds=self.jwt.refresh_inactivity):
                raise Unauthenticated("refresh token unused for too long; sign in again")
            access = Claims(
                TokenKind.ACCESS, str(ULID()), state.owner_id, state.family_id, state.family_scopes, now,
                min(now + timedelta(seconds=state.access_ttl), state.family_expires_at),
            )
            refresh = Claims(
                TokenKind.REFRESH, str(ULID()), state.owner_id, state.family_id, state.family_scopes, now,
                state.family_expires_at,
            )
            audit = AuditEntry("token.refresh", state.owner_id, claims.jti, source, f"rotated into {access.jti}, {refresh.jti}")
            if await asyncio.to_thread(self.repo.rotate, claims.jti, access, refresh, source, exact, audit):
                if self.metrics is not None:
                    self.metrics.tokens_issued.labels("refresh").inc()
                return self._pair(access, refresh)
        raise Unauthenticated("refresh token revoked")

    async def _revoke_reused(self, claims: Claims, source: str) -> None:
        audit = AuditEntry(
            "token.reuse", claims.owner_id, claims.jti, source, f"spent refresh token presented again; family {claims.family_id} revoked"
        )
        await asyncio.to_thread(self.repo.revoke_family, claims.family_id, self._now(), "refresh token reuse", audit)
        self._denied_families[claims.family_id] = self._now() + timedelta(seconds=self.jwt.max_refresh_ttl)
        self._tell_revoked()
        self.failures.fail(source)
        if self.metrics is not None:
            self.metrics.refresh_reuse.inc()

    async def revoke(self, caller: Caller, jti: str) -> int:
        if not jti:
            raise InvalidArgument("jti", "required")
        audit = AuditEntry("token.revoke", caller.owner_id, caller.jti, caller.source, f"revoked {jti}")
        count, family, access_jti = await asyncio.to_thread(self.repo.revoke, caller.owner_id, jti, self._now(), audit)
        forget = self._now() + timedelta(seconds=self.jwt.max_refresh_ttl)
        if family is not None:
            self._denied_families[family] = forget
        if access_jti is not None:
            self._denied_tokens[access_jti] = forget
        self._tell_revoked()
        return count

    def _tell_revoked(self) -> None:
        if self.on_revoked is not None:
            self.on_revoked()

    # ---- audit ---------------------------------------------------------------------

    async def list_audit(self, owner_id: str, action: str, limit: int, before_id: int | None) -> list[AuditRecord]:
        return await asyncio.to_thread(self.repo.list_audit, owner_id, action=action, limit=limit, before_id=before_id)


def _failure_reason(why: str) -> str:
    """The metric's bounded label for a failure's free-text reason."""
    for prefix, reason in (("refresh", "refresh"), ("bearer", "access_token"), ("undecodable", "undecodable")):
        if why.startswith(prefix):
            return reason
    return "password"
