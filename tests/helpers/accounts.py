"""Accounts for tests that use the repositories directly (no password: they never sign in)."""

from __future__ import annotations

from datetime import datetime

from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES
from gateway.storage.engine import Database

__all__ = ["create_owner"]


def create_owner(db: Database, username: str, now: datetime) -> str:
    """A new account with every scope; returns its owner id."""
    return AuthRepository(db).create_account(username, "", ALL_SCOPES, now, AuditEntry("account.create")).id
