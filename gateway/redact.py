"""Log-safe forms of sensitive values. Bodies are never formatted at all; numbers only through here."""

from __future__ import annotations

__all__ = ["redact_number", "redact_token"]


def redact_number(number: str) -> str:
    """'+15551234567' -> '+15•••••••67': enough to tell numbers apart in a log, not to dial one."""
    if len(number) <= 5:
        return "•" * len(number)
    return number[:3] + "•" * (len(number) - 5) + number[-2:]


def redact_token(token: str) -> str:
    """Never log a token; its first 4 characters are enough to tell which one."""
    return token[:4] + "…" if len(token) > 8 else "…"
