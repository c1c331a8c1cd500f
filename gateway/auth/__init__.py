"""Accounts, JWT access and refresh tokens, scopes, rate limits and the audit log (issue 3)."""
