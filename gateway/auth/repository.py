"""Account, token and audit storage. Synchronous; callers run it in worker threads.

Issued JWTs are recorded by jti (not the token itself) with their family, so that a token can
be revoked by jti, a rotated refresh token recognised when it comes back, and a whole family
revoked at once. Every change writes its audit row in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from ulid import ULID

from gateway.auth.records import AccountRecord, AuditRecord
from gateway.auth.scopes import Scope, parse_scopes
from gateway.auth.tokens import Claims, TokenKind
from gateway.errors import AlreadyExists, NotFound
from gateway.messages.repository import to_utc
from gateway.storage.engine import Database
from gateway.storage.models import AuditRow, AuthTokenRow, Owner, TokenFamilyRow

__all__ = ["AuthRepository", "AuditEntry", "RefreshState", "audit_row"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row to write; `detail` must hold no secret and no full phone number."""

    action: str
    owner_id: str | None = None
    actor: str = ""
    source: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RefreshState:
    """What the store knows of a presented refresh token."""

    owner_id: str
    family_id: str
    family_scopes: frozenset[Scope]
    access_ttl: int
    family_expires_at: datetime
    issued_at: datetime
    revoked: bool
    rotated_at: datetime | None
    rotated_by_source: str
    successors: tuple[Claims, Claims] | None  # (access, refresh) it was rotated into


def audit_row(entry: AuditEntry, now: datetime) -> AuditRow:
    """The row for `entry`, to add in the transaction of the change it records."""
    return AuditRow(
        owner_id=entry.owner_id, time=to_utc(now), action=entry.action,
        actor=entry.actor[:128], source=entry.source[:128], detail=entry.detail[:512],
    )


def _account(row: Owner) -> AccountRecord:
    return AccountRecord(row.id, row.username, parse_scopes(row.scopes), row.disabled, row.created_at)


def _claims(row: AuthTokenRow, scopes: frozenset[Scope]) -> Claims:
    kind = TokenKind.ACCESS if row.kind == "access" else TokenKind.REFRESH
    return Claims(kind, row.jti, row.owner_id, row.family_id, scopes, row.issued_at, row.expires_at)


class AuthRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- audit -------------------------------------------------------------------

    @staticmethod
    def _audit(s: Session, entry: AuditEntry, now: datetime) -> None:
        s.add(audit_row(entry, now))

    def audit(self, entry: AuditEntry, now: datetime) -> None:
        with self.db.write() as s:
            self._audit(s, entry, now)

    def list_audit(self, owner_id: str | None, *, action: str, limit: int, before_id: int | None) -> list[AuditRecord]:
        """Newest first; `owner_id` None lists every entry (the operator's CLI)."""
        with self.db.read() as s:
            q = select(AuditRow)
            if owner_id is not None:
                q = q.where(AuditRow.owner_id == owner_id)
            if action:
                q = q.where(AuditRow.action == action)
            if before_id is not None:
                q = q.where(col(AuditRow.id) < before_id)
            rows = s.exec(q.order_by(col(AuditRow.id).desc()).limit(limit)).all()
            return [AuditRecord(r.id or 0, r.owner_id, r.time, r.action, r.actor, r.source, r.detail) for r in rows]

    # ---- accounts ------------------------------------------------------------------

    def create_account(
        self, username: str, password_hash: str, scopes: frozenset[Scope], now: datetime, audit: AuditEntry
    ) -> AccountRecord:
        row = Owner(
            id=str(ULID()), name=username, username=username, password_hash=password_hash,
            scopes=" ".join(sorted(scopes)), created_at=to_utc(now),
        )
        try:
            with self.db.write() as s:
                s.add(row)
                s.flush()
                self._audit(s, AuditEntry(audit.action, row.id, audit.actor or username, audit.source, audit.detail), now)
        except IntegrityError:
            raise AlreadyExists(f"username {username!r} is taken") from None
        return _account(row)

    def account_by_username(self, username: str) -> tuple[AccountRecord, str] | None:
        """(account, password hash), or None."""
        with self.db.read() as s:
            row = s.exec(select(Owner).where(Owner.username == username)).first()
            return (_account(row), row.password_hash) if row else None

    def account_by_id(self, owner_id: str) -> AccountRecord | None:
        with self.db.read() as s:
            row = s.get(Owner, owner_id)
            return _account(row) if row else None

    def any_password_set(self) -> bool:
        with self.db.read() as s:
            return s.exec(select(Owner.id).where(Owner.password_hash != "")).first() is not None

    def list_accounts(self) -> list[AccountRecord]:
        with self.db.read() as s:
            return [_account(r) for r in s.exec(select(Owner).order_by(col(Owner.created_at)))]

    def update_account(
        self, username: str, now: datetime, *, password_hash: str | None = None,
        scopes: frozenset[Scope] | None = None, disabled: bool | None = None,
    ) -> AccountRecord:
        """Change an account; a new password, new scopes or disabling it revoke its tokens."""
        with self.db.write() as s:
            row = s.exec(select(Owner).where(Owner.username == username)).first()
            if row is None:
                raise NotFound(f"no account {username!r}")
            if password_hash is not None:
                row.password_hash = password_hash
            if scopes is not None:
                row.scopes = " ".join(sorted(scopes))
            if disabled is not None:
                row.disabled = disabled
            s.add(row)
            if password_hash is not None or scopes is not None or disabled:
                # Tokens carry their scopes: fewer scopes must not wait for old tokens to expire.
                self._revoke_owner(s, row.id, now, "account changed")
            self._audit(s, AuditEntry("account.update", row.id, username, "cli"), now)
            return _account(row)

    # ---- tokens --------------------------------------------------------------------

    def record_pair(
        self, access: Claims, refresh: Claims, access_ttl: int, now: datetime, audit: AuditEntry
    ) -> None:
        """A new sign-in: its family and first pair."""
        with self.db.write() as s:
            s.add(
                TokenFamilyRow(
                    id=access.family_id, owner_id=access.owner_id, scopes=" ".join(sorted(access.scopes)),
                    access_ttl=access_ttl, created_at=to_utc(now), expires_at=refresh.expires_at,
                )
            )
            s.flush()
            self._add_tokens(s, access, refresh)
            self._audit(s, audit, now)

    @staticmethod
    def _add_tokens(s: Session, access: Claims, refresh: Claims) -> None:
        for claims, kind in ((access, "access"), (refresh, "refresh")):
            s.add(
                AuthTokenRow(
                    jti=claims.jti, family_id=claims.family_id, owner_id=claims.owner_id, kind=kind,
                    issued_at=claims.issued_at, expires_at=claims.expires_at,
                )
            )

    def refresh_state(self, jti: str) -> RefreshState | None:
        with self.db.read() as s:
            return self._refresh_state(s, jti)

    def _refresh_state(self, s: Session, jti: str) -> RefreshState | None:
        row = s.get(AuthTokenRow, jti)
        if row is None or row.kind != "refresh":
            return None
        family = s.get(TokenFamilyRow, row.family_id)
        if family is None:
            return None
        scopes = parse_scopes(family.scopes)
        successors = None
        if row.successor_access_jti:
            a = s.get(AuthTokenRow, row.successor_access_jti)
            r = s.get(AuthTokenRow, row.successor_refresh_jti)
            if a is not None and r is not None:
                successors = (_claims(a, scopes), _claims(r, scopes))
        return RefreshState(
            owner_id=row.owner_id, family_id=row.family_id, family_scopes=scopes, access_ttl=family.access_ttl,
            family_expires_at=family.expires_at, issued_at=row.issued_at,
            revoked=row.revoked_at is not None or family.revoked_at is not None,
            rotated_at=row.rotated_at, rotated_by_source=row.rotated_by_source, successors=successors,
        )

    def rotate(self, jti: str, access: Claims, refresh: Claims, source: str, now: datetime, audit: AuditEntry) -> bool:
        """Spend refresh token `jti` for the new pair. False when it was spent meanwhile
        (a concurrent refresh won; the caller re-reads and treats it as a retry or a reuse)."""
        with self.db.write() as s:
            result = s.execute(
                update(AuthTokenRow)
                .where(col(AuthTokenRow.jti) == jti, col(AuthTokenRow.rotated_at).is_(None), col(AuthTokenRow.revoked_at).is_(None))
                .values(
                    rotated_at=to_utc(now), rotated_by_source=source,
                    successor_access_jti=access.jti, successor_refresh_jti=refresh.jti,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            self._add_tokens(s, access, refresh)
            self._audit(s, audit, now)
            return True

    def revoke_family(self, family_id: str, now: datetime, reason: str, audit: AuditEntry) -> int:
        """Revoke every token of a family; returns how many were still valid."""
        with self.db.write() as s:
            count = self._revoke_family(s, family_id, now, reason)
            self._audit(s, audit, now)
            return count

    @staticmethod
    def _revoke_family(s: Session, family_id: str, now: datetime, reason: str) -> int:
        now = to_utc(now)
        family = s.get(TokenFamilyRow, family_id)
        if family is not None and family.revoked_at is None:
            family.revoked_at, family.revoked_reason = now, reason
            s.add(family)
        live = s.exec(
            select(AuthTokenRow).where(
                col(AuthTokenRow.family_id) == family_id,
                col(AuthTokenRow.revoked_at).is_(None),
                col(AuthTokenRow.expires_at) > now,
            )
        ).all()
        for row in live:
            row.revoked_at = now
            s.add(row)
        # A rotated refresh token was already spent: it does not count as newly revoked.
        return sum(1 for row in live if row.rotated_at is None)

    def _revoke_owner(self, s: Session, owner_id: str, now: datetime, reason: str) -> None:
        families = s.exec(
            select(TokenFamilyRow.id).where(TokenFamilyRow.owner_id == owner_id, col(TokenFamilyRow.revoked_at).is_(None))
        ).all()
        for family_id in families:
            self._revoke_family(s, family_id, now, reason)

    def revoke(self, owner_id: str, jti: str, now: datetime, audit: AuditEntry) -> tuple[int, str | None, str | None]:
        """Revoke the caller's token `jti`: a refresh token takes its whole family along.

        Returns (tokens revoked, revoked family id or None, revoked access jti or None).
        Raises NotFound for an unknown jti or another owner's (which must not be revealed).
        """
        with self.db.write() as s:
            row = s.get(AuthTokenRow, jti)
            if row is None or row.owner_id != owner_id:
                raise NotFound("no such token")
            self._audit(s, audit, now)
            if row.kind == "refresh":
                return self._revoke_family(s, row.family_id, now, "revoked"), row.family_id, None
            if row.revoked_at is not None or row.expires_at <= to_utc(now):
                return 0, None, None
            row.revoked_at = to_utc(now)
            s.add(row)
            return 1, None, row.jti

    def revocations(self, now: datetime) -> tuple[dict[str, datetime], dict[str, datetime]]:
        """Revoked, unexpired (families, access jtis) with their expiry: the verifier's deny lists."""
        now = to_utc(now)
        with self.db.read() as s:
            families = s.exec(
                select(TokenFamilyRow.id, TokenFamilyRow.expires_at).where(
                    col(TokenFamilyRow.revoked_at).is_not(None), col(TokenFamilyRow.expires_at) > now
                )
            ).all()
            tokens = s.exec(
                select(AuthTokenRow.jti, AuthTokenRow.expires_at).where(
                    col(AuthTokenRow.revoked_at).is_not(None),
                    col(AuthTokenRow.expires_at) > now,
                    AuthTokenRow.kind == "access",
                )
            ).all()
            return dict(families), dict(tokens)

    def purge_expired(self, now: datetime, keep: timedelta) -> int:
        """Forget tokens and families expired for longer than `keep`: an expired token fails
        verification before its row is read, so the row only served the audit trail (which
        keeps its own rows). Returns how many token rows went."""
        cutoff = to_utc(now) - keep
        with self.db.write() as s:
            stale = s.exec(select(AuthTokenRow).where(col(AuthTokenRow.expires_at) < cutoff)).all()
            for row in stale:
                s.delete(row)
            s.flush()
            for family in s.exec(select(TokenFamilyRow).where(col(TokenFamilyRow.expires_at) < cutoff)).all():
                s.delete(family)
            return len(stale)
