"""The smsgw1 envelope helpers (smsgw_client.envelope): the shared vectors, the SMSGate
reference code opening ours and ours opening theirs, every malformed input, the key ring, the
key cache, and (RELIABILITY 30) no input making the opener fail with anything but
EnvelopeError."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from smsgw_client import envelope
from smsgw_client.envelope import EnvelopeError, KeyRing, check_envelope, decrypt, decrypt_bytes, encrypt, encrypt_bytes, seal

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[3] / "clients" / "vectors" / "smsgw1.json").read_text(encoding="utf-8")
)
VALID = VECTORS["valid"]
INVALID = VECTORS["invalid"]


# The SMSGate documentation's Python helpers, as people already run them (seed file).
def reference_encrypt(passphrase: str, plaintext: str) -> str:
    salt, iv = os.urandom(16), os.urandom(12)
    key = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, 100_000, 32)
    ct = AESGCM(key).encrypt(iv, plaintext.encode(), None)
    return base64.b64encode(b"smsgw1" + salt + iv + ct).decode()


def reference_decrypt(passphrase: str, envelope_b64: str) -> str:
    buf = base64.b64decode(envelope_b64)
    assert buf[:6] == b"smsgw1"
    salt, iv, ct = buf[6:22], buf[22:34], buf[34:]
    key = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, 100_000, 32)
    return AESGCM(key).decrypt(iv, ct, None).decode()


def _plain(case: dict[str, Any]) -> bytes:
    return case["plaintext"].encode() if "plaintext" in case else bytes.fromhex(case["data_hex"])


def test_the_vectors_cover_what_the_issue_names() -> None:
    names = {c["name"] for c in VALID}
    assert {"ascii", "emoji", "cyrillic", "cjk", "empty", "long-1600", "data-bytes"} <= names
    assert len(_plain(next(c for c in VALID if c["name"] == "long-1600"))) == 1600


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["name"])
def test_vectors_seal_and_open(case: dict[str, Any]) -> None:
    plain = _plain(case)
    assert seal(case["passphrase"], plain, salt=bytes.fromhex(case["salt"]), iv=bytes.fromhex(case["iv"])) == case["envelope"]
    assert decrypt_bytes(case["passphrase"], case["envelope"]) == plain
    assert check_envelope(case["envelope"]) == len(plain)
    if "plaintext" in case:
        assert decrypt(case["passphrase"], case["envelope"]) == case["plaintext"]
        assert reference_decrypt(case["passphrase"], case["envelope"]) == case["plaintext"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["name"])
def test_every_malformed_envelope_gives_its_reason(case: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decrypt(case["passphrase"], case["envelope"])
    assert caught.value.reason == case["reason"]
    with pytest.raises(EnvelopeError):
        decrypt_bytes(case["passphrase"], case["envelope"])


def test_bytes_that_are_not_text_are_refused_as_text() -> None:
    sealed = encrypt_bytes("pw", b"\xff\xfe\x00")
    assert decrypt_bytes("pw", sealed) == b"\xff\xfe\x00"
    with pytest.raises(EnvelopeError) as caught:
        decrypt("pw", sealed)
    assert caught.value.reason == "not_utf8"


def test_ours_and_the_reference_open_each_other() -> None:
    for text in ("hola mundo", "", "Ж🔐中", "x" * 700):
        assert reference_decrypt("my passphrase", encrypt("my passphrase", text)) == text
        assert decrypt("my passphrase", reference_encrypt("my passphrase", text)) == text


def test_fresh_salt_and_iv_every_time() -> None:
    first, second = encrypt("pw", "same"), encrypt("pw", "same")
    assert first != second
    raw1, raw2 = base64.b64decode(first), base64.b64decode(second)
    assert raw1[6:22] != raw2[6:22] and raw1[22:34] != raw2[22:34]
    assert len(raw1) == envelope.OVERHEAD + len("same")


def test_key_ring_tries_each_passphrase_in_order() -> None:
    old, new = encrypt("2025 passphrase", "old message"), encrypt("2026 passphrase", "new message")
    ring = KeyRing(["2026 passphrase", "2025 passphrase"])
    assert ring.decrypt(old) == "old message" and ring.decrypt(new) == "new message"
    assert decrypt("2026 passphrase", ring.encrypt("sealed with the newest")) == "sealed with the newest"
    assert ring.decrypt_bytes(ring.encrypt_bytes(b"\x01")) == b"\x01"
    with pytest.raises(EnvelopeError) as caught:
        KeyRing(["another"]).decrypt(old)
    assert caught.value.reason == "wrong_key_or_tampered"
    with pytest.raises(EnvelopeError) as caught:
        ring.decrypt("not base64!")
    assert caught.value.reason == "not_base64"
    assert "passphrase" not in repr(ring).replace("passphrases", "") and "2026" not in repr(ring)
    with pytest.raises(ValueError):
        KeyRing([])


def test_derived_keys_are_cached_per_passphrase_and_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, rounds: int, dklen: int | None = None) -> bytes:
        calls.append(salt)
        assert rounds == 100_000
        return real(name, password, salt, rounds, dklen)

    monkeypatch.setattr(envelope.hashlib, "pbkdf2_hmac", counting)
    case = VALID[0]
    salt = bytes.fromhex(case["salt"])
    batch = [seal("batch passphrase", f"message {i}".encode(), salt=salt, iv=os.urandom(12)) for i in range(20)]
    for sealed in batch:
        decrypt("batch passphrase", sealed)
    assert calls == [salt], "one derivation for the whole batch (same passphrase and salt)"
    decrypt("other passphrase", seal("other passphrase", b"x", salt=salt, iv=os.urandom(12)))
    assert len(calls) == 2


def test_seal_refuses_bad_salt_or_iv_lengths() -> None:
    with pytest.raises(ValueError):
        seal("pw", b"x", salt=b"short", iv=os.urandom(12))
    with pytest.raises(ValueError):
        seal("pw", b"x", salt=os.urandom(16), iv=b"short")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), st.binary(max_size=120)))
def test_no_input_crashes_the_opener(junk: str | bytes) -> None:
    try:
        decrypt("pw", junk)
    except EnvelopeError as exc:
        assert exc.reason in {"not_base64", "too_short", "bad_magic", "not_utf8", "wrong_key_or_tampered"}


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.integers(0, 200), st.integers(0, 7))
def test_any_flipped_bit_is_refused(plain: bytes, where: int, bit: int) -> None:
    raw = bytearray(base64.b64decode(seal("pw", plain, salt=b"s" * 16, iv=b"i" * 12)))
    where %= len(raw)
    raw[where] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        decrypt_bytes("pw", base64.b64encode(bytes(raw)).decode())


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.text(min_size=1, max_size=30))
def test_round_trip(text: str, passphrase: str) -> None:
    salt = hashlib.sha256(passphrase.encode()).digest()[:16]  # keeps the cache warm across examples
    sealed = seal(passphrase, text.encode(), salt=salt, iv=os.urandom(12))
    assert decrypt(passphrase, sealed) == text


def test_seal_for_key_repeats_for_a_retry_and_never_reuses_an_iv() -> None:
    from smsgw_client.envelope import seal_for_key

    first = seal_for_key("pw", b"Your code is 424242", "order-17")
    assert seal_for_key("pw", b"Your code is 424242", "order-17") == first  # a retry is a replay
    assert decrypt("pw", first) == "Your code is 424242"
    salt_iv = {base64.b64decode(e)[6:34] for e in (
        first,
        seal_for_key("pw", b"Your code is 424243", "order-17"),  # other text, same key
        seal_for_key("pw", b"Your code is 424242", "order-18"),
        seal_for_key("pw", b"b\x00c", "a"),  # the length prefix keeps these two apart
        seal_for_key("pw", b"c", "a\x00b"),
    )}
    assert len(salt_iv) == 5


def test_bad_arguments_are_type_or_value_errors_not_crashes() -> None:
    with pytest.raises(TypeError):
        KeyRing("one passphrase, not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KeyRing(["\ud800"])  # a lone surrogate has no UTF-8 form
    with pytest.raises(ValueError):
        encrypt("\udcff", "x")  # e.g. a non-UTF-8 environment variable
    with pytest.raises(TypeError):
        decrypt("pw", 10**11)  # type: ignore[arg-type]
    sealed = encrypt("pw", "x")
    for variant in (sealed + "=", sealed + "==", " " + sealed + "\n"):
        if variant.strip() == sealed:
            assert decrypt("pw", variant) == "x"  # surrounding ASCII whitespace is fine
        else:
            with pytest.raises(EnvelopeError) as caught:
                decrypt("pw", variant)
            assert caught.value.reason == "not_base64"  # as Node says: no extra padding


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.text(max_size=20))
def test_junk_behind_the_magic_never_crashes_the_opener(junk: bytes, passphrase: str) -> None:
    try:
        decrypt(passphrase, base64.b64encode(envelope.MAGIC + junk).decode())
    except EnvelopeError as exc:
        assert exc.reason in {"too_short", "wrong_key_or_tampered", "not_utf8"}
    except ValueError as exc:  # only for a passphrase that is no valid text
        assert "surrogate" in str(exc)
