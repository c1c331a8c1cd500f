"""Domain records of accounts, tokens and the audit log (rows never leave the repositories)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.auth.scopes import Scope
from gateway.auth.tokens import Claims

__all__ = ["AccountRecord", "TokenPair", "AuditRecord", "Caller"]


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    username: str
    scopes: frozenset[Scope]
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenPair:
    """An access token and the refresh token issued with it (same family)."""

    access: Claims
    refresh: Claims
    access_token: str
    refresh_token: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    owner_id: str | None
    time: datetime
    action: str
    actor: str
    source: str
    detail: str


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling an RPC: the owner, the access token's jti and scopes, the peer address."""

    owner_id: str
    jti: str
    scopes: frozenset[Scope]
    source: str
