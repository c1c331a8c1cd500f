"""gateway.auth.passwords: scrypt hashes that describe themselves.

Each hash or verify at the production cost takes ~0.1 s, so the round trips share one hash
(module fixture) and the malformed-hash cases are refused before any key derivation.
"""

from __future__ import annotations

import base64
import time

import pytest

from gateway.auth.passwords import dummy_hash, hash_password, verify_password

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


def test_round_trip(stored: str) -> None:
    assert stored.startswith("scrypt$15$8$1$")
    assert PASSWORD not in stored
    assert verify_password(PASSWORD, stored)


def test_wrong_password(stored: str) -> None:
    assert not verify_password(PASSWORD + "!", stored)
    assert not verify_password("", stored)


def test_two_hashes_of_one_password_differ_by_salt(stored: str) -> None:
    other = hash_password(PASSWORD, log2_n=10)  # cheap; the salt, not the cost, is under test
    assert other.split("$")[4] != stored.split("$")[4]
    assert other.split("$")[5] != stored.split("$")[5]
    assert verify_password(PASSWORD, other)


def test_dummy_hash_is_cached_and_matches_nothing_obvious() -> None:
    assert dummy_hash() is dummy_hash()
    assert not verify_password("", dummy_hash())


def _parts(stored: str) -> list[str]:
    return stored.split("$")


def _with(stored: str, **changes: str) -> str:
    names = ["scheme", "log2_n", "r", "p", "salt", "key"]
    parts = dict(zip(names, _parts(stored), strict=True))
    parts.update(changes)
    return "$".join(parts[n] for n in names)


MALFORMED = {
    "empty": lambda s: "",
    "no separators": lambda s: "scrypt",
    "too many fields": lambda s: s + "$extra",
    "too few fields": lambda s: s.rsplit("$", 1)[0],
    "wrong scheme": lambda s: _with(s, scheme="bcrypt"),
    "argon2 text": lambda s: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
    "plain text": lambda s: PASSWORD,
    "bad base64 key": lambda s: _with(s, key="!!not base64!!"),
    "bad base64 salt": lambda s: _with(s, salt="***"),
    "non-numeric n": lambda s: _with(s, log2_n="fifteen"),
    "log2 n too small": lambda s: _with(s, log2_n="1"),
    "log2 n zero": lambda s: _with(s, log2_n="0"),
    "log2 n negative": lambda s: _with(s, log2_n="-15"),
    "log2 n huge": lambda s: _with(s, log2_n="64"),
    "r zero": lambda s: _with(s, r="0"),
    "r negative": lambda s: _with(s, r="-1"),
    "r huge": lambda s: _with(s, r=str(2**40)),
    "r beyond 64 bits": lambda s: _with(s, r=str(10**30)),
    "p zero": lambda s: _with(s, p="0"),
    "p negative": lambda s: _with(s, p="-8"),
    "p huge": lambda s: _with(s, p=str(2**40)),
    "non-numeric r": lambda s: _with(s, r="eight"),
    # An empty derived key must not turn into "every password matches".
    "empty key": lambda s: _with(s, key=""),
    "empty salt and key": lambda s: _with(s, salt="", key=""),
    "truncated key": lambda s: _with(s, key=base64.b64encode(base64.b64decode(_parts(s)[5])[:1]).decode()),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_stored_hash_is_false_without_raising(stored: str, name: str) -> None:
    bad = MALFORMED[name](stored)
    started = time.monotonic()
    assert verify_password(PASSWORD, bad) is False
    assert verify_password("some other password", bad) is False
    # Absurd costs are refused up front, not attempted.
    assert time.monotonic() - started < 2.0
