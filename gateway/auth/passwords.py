"""Password hashing with scrypt (memory-hard, from `cryptography`).

The stored form describes itself — `scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>` — so the
cost can be raised later and old hashes still verify. N=2^15, r=8 (32 MiB, ~0.1 s on the dev
machine) resists GPU guessing while a sign-in stays cheap; sign-ins run off the event loop.
"""

from __future__ import annotations

import base64
import functools
import os

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["hash_password", "verify_password", "dummy_hash"]

_LOG2_N, _R, _P, _SALT, _LENGTH = 15, 8, 1, 16, 32
_MIN_LENGTH = 16  # bytes of derived key a stored hash must carry


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_password(password: str, *, log2_n: int = _LOG2_N) -> str:
    salt = os.urandom(_SALT)
    key = Scrypt(salt=salt, length=_LENGTH, n=2**log2_n, r=_R, p=_P).derive(password.encode())
    return f"scrypt${log2_n}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; False for a wrong password or a malformed hash."""
    try:
        scheme, log2_n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(log2_n) <= 20 or not 1 <= int(r) <= 32 or not 1 <= int(p) <= 16:
            return False
        expected = base64.b64decode(key)
        # An empty or truncated key would match every (or one in 256) password.
        if not _MIN_LENGTH <= len(expected) <= 64:
            return False
        kdf = Scrypt(salt=base64.b64decode(salt), length=len(expected), n=2 ** int(log2_n), r=int(r), p=int(p))
        kdf.verify(password.encode(), expected)
        return True
    except (ValueError, InvalidKey, MemoryError):  # MemoryError: cryptography's "parameters need too much memory"
        return False


@functools.cache
def dummy_hash() -> str:
    """Verified against when the username is unknown, so that the answer takes as long as
    for a known one and does not tell which usernames exist."""
    return hash_password(base64.b64encode(os.urandom(12)).decode())

