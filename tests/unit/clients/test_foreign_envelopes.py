"""The other gateways' formats (smsgw_client.foreign): the vectors their own clients made
(clients/vectors/smsgate.json, httpsms.json) open and seal byte for byte; SMSGate's own
Encryptor (android-sms-gateway) opens what we seal and we open what it seals; recognition; key
rings; and (RELIABILITY 30) no input makes an opener fail with anything but EnvelopeError."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smsgw_client.envelope import EnvelopeError, KeyRing, encrypt
from smsgw_client.foreign import (
    httpsms_check,
    httpsms_decrypt,
    httpsms_encrypt,
    httpsms_open,
    httpsms_seal,
    open_data,
    open_text,
    recognise,
    smsgate_check,
    smsgate_decrypt,
    smsgate_encrypt,
    smsgate_open,
    smsgate_seal,
)

VECTORS = Path(__file__).resolve().parents[3] / "clients" / "vectors"
SMSGATE: dict[str, Any] = json.loads((VECTORS / "smsgate.json").read_text(encoding="utf-8"))
HTTPSMS: dict[str, Any] = json.loads((VECTORS / "httpsms.json").read_text(encoding="utf-8"))
PASSPHRASE = "correct horse battery staple"


def _name(case: dict[str, Any]) -> str:
    return str(case["name"])


def test_the_vectors_were_made_by_the_other_gateways_clients() -> None:
    assert SMSGATE["generated_by"].startswith("android-sms-gateway 4.3.3")
    assert HTTPSMS["generated_by"].startswith("httpsms 0.0.4")
    assert len(SMSGATE["valid"]) >= 10 and len(SMSGATE["invalid"]) >= 10
    assert len(HTTPSMS["valid"]) >= 6 and len(HTTPSMS["invalid"]) >= 5


@pytest.mark.parametrize("case", SMSGATE["valid"], ids=_name)
def test_smsgate_vector_opens_and_seals_byte_for_byte(case: dict[str, Any]) -> None:
    ciphertext, plaintext = case["ciphertext"], case["plaintext"]
    assert recognise(ciphertext) == "smsgate"
    assert smsgate_decrypt(case["passphrase"], ciphertext) == plaintext
    # The same salt (it is also the IV) gives the library's very string: it opens ours.
    sealed = smsgate_seal(case["passphrase"], plaintext.encode(), iterations=case["iterations"], salt=bytes.fromhex(case["salt"]))
    assert sealed == ciphertext
    assert len(plaintext.encode()) <= smsgate_check(ciphertext) < len(plaintext.encode()) + 16
    assert open_text([PASSPHRASE + " (older)", case["passphrase"]], ciphertext) == plaintext
    if "data_hex" in case:
        assert open_data([case["passphrase"]], ciphertext) == bytes.fromhex(case["data_hex"])


@pytest.mark.parametrize("case", SMSGATE["invalid"], ids=_name)
def test_smsgate_invalid_vector_is_refused_for_its_reason(case: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as caught:
        smsgate_decrypt(case["passphrase"], case["ciphertext"])
    assert caught.value.reason == case["reason"]


@pytest.mark.parametrize("case", HTTPSMS["valid"], ids=_name)
def test_httpsms_vector_opens_and_seals_byte_for_byte(case: dict[str, Any]) -> None:
    ciphertext, plaintext = case["ciphertext"], case["plaintext"]
    assert recognise(ciphertext) == "unmarked"
    assert httpsms_decrypt(case["passphrase"], ciphertext) == plaintext
    assert httpsms_seal(case["passphrase"], plaintext.encode(), iv=bytes.fromhex(case["iv"])) == ciphertext
    assert httpsms_check(ciphertext) == len(plaintext.encode())
    assert open_text([case["passphrase"]], ciphertext, unmarked="httpsms") == plaintext


@pytest.mark.parametrize("case", HTTPSMS["invalid"], ids=_name)
def test_httpsms_invalid_vector_is_refused_for_its_reason(case: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as caught:
        httpsms_decrypt(case["passphrase"], case["ciphertext"])
    assert caught.value.reason == case["reason"]


def _library_encryptor(passphrase: str, iterations: int = 1000) -> Any:
    """SMSGate's own Encryptor; it needs pycryptodome (android-sms-gateway's "encryption" extra)."""
    pytest.importorskip("Crypto", reason="pycryptodome is not installed: android-sms-gateway[encryption]")
    from android_sms_gateway.encryption import Encryptor

    return Encryptor(passphrase, iterations=iterations)


TEXTS = ["Your code is 424242", "", "+15551234567", "Ваш код 🔐 ✅", "你好，世界", "x" * 1600, "0123456789abcdef"]


def test_smsgate_library_seals_and_we_open() -> None:
    library = _library_encryptor(PASSPHRASE)
    for text in TEXTS:
        assert smsgate_decrypt(PASSPHRASE, library.encrypt(text)) == text
    # Its default is the app's 75,000 rounds; ours too.
    assert smsgate_decrypt(PASSPHRASE, _library_encryptor(PASSPHRASE, 75_000).encrypt("default")) == "default"


def test_we_seal_and_the_smsgate_library_opens() -> None:
    library = _library_encryptor(PASSPHRASE)
    for text in TEXTS:
        assert library.decrypt(smsgate_encrypt(PASSPHRASE, text, iterations=1000)) == text
    assert _library_encryptor(PASSPHRASE, 75_000).decrypt(smsgate_encrypt(PASSPHRASE, "default")) == "default"


def test_the_smsgate_library_refuses_what_we_refuse_as_a_wrong_key() -> None:
    for case in SMSGATE["invalid"][:2]:  # a wrong passphrase, a tampered byte
        assert case["reason"] == "wrong_key_or_tampered"
        with pytest.raises(ValueError):  # pycryptodome's unpad: "Padding is incorrect."
            _library_encryptor(case["passphrase"]).decrypt(case["ciphertext"])


def test_recognise_tells_the_formats_apart() -> None:
    assert recognise(encrypt(PASSPHRASE, "hi")) == "smsgw1"
    assert recognise(encrypt(PASSPHRASE, "hi").encode() + b"\n") == "smsgw1"
    assert recognise(SMSGATE["valid"][0]["ciphertext"].encode()) == "smsgate"
    assert recognise(httpsms_encrypt("k", "hi")) == "unmarked"
    for other in ("", "hello world", "aGk=", "Ünïcode", "$rsa-oaep$x$y$z", "c21zZ3cx!"):
        assert recognise(other) == "unknown", other
    assert recognise(b"\xff\xfe") == "unknown"


def test_open_text_takes_any_format_with_a_key_ring() -> None:
    ring = KeyRing(["newest", PASSPHRASE])
    assert open_text(ring, encrypt(PASSPHRASE, "smsgw1 text")) == "smsgw1 text"
    assert open_text(ring, smsgate_encrypt(PASSPHRASE, "smsgate text", iterations=1000)) == "smsgate text"
    sealed = httpsms_encrypt("newest", "an httpSMS text")
    assert open_text(ring, sealed, unmarked="httpsms") == "an httpSMS text"
    with pytest.raises(EnvelopeError) as caught:  # unmarked ciphertext, no format named: smsgw1's refusal
        open_text(ring, sealed)
    assert caught.value.reason in {"too_short", "bad_magic"}
    with pytest.raises(ValueError):
        open_text(ring, sealed, unmarked="smsgate")  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError) as caught:
        open_text(["a", "b"], smsgate_encrypt(PASSPHRASE, "x", iterations=10))
    assert caught.value.reason == "wrong_key_or_tampered" and "any of 2" in str(caught.value)


def test_open_data_opens_smsgate_base64_payloads_and_smsgw1_bytes() -> None:
    payload = bytes(range(40))
    assert open_data([PASSPHRASE], smsgate_encrypt(PASSPHRASE, base64.b64encode(payload).decode(), iterations=10)) == payload
    with pytest.raises(EnvelopeError) as caught:
        open_data([PASSPHRASE], smsgate_encrypt(PASSPHRASE, "not base64!", iterations=10))
    assert caught.value.reason == "not_base64"
    from smsgw_client.envelope import encrypt_bytes

    assert open_data([PASSPHRASE], encrypt_bytes(PASSPHRASE, payload)) == payload


def test_seal_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        smsgate_seal(PASSPHRASE, b"x", salt=b"short")
    for bad in (0, 1_000_001, True):
        with pytest.raises(ValueError):
            smsgate_seal(PASSPHRASE, b"x", iterations=bad)
    with pytest.raises(ValueError):
        httpsms_seal(PASSPHRASE, b"x", iv=os.urandom(12))
    with pytest.raises(ValueError):
        httpsms_encrypt(PASSPHRASE, "lone \ud800 surrogate")
    with pytest.raises(TypeError):
        smsgate_decrypt(PASSPHRASE, 42)  # type: ignore[arg-type]


def test_fresh_salts_and_ivs() -> None:
    assert smsgate_encrypt(PASSPHRASE, "same", iterations=10) != smsgate_encrypt(PASSPHRASE, "same", iterations=10)
    assert httpsms_encrypt(PASSPHRASE, "same") != httpsms_encrypt(PASSPHRASE, "same")


_SMSGATE_LIKE = st.builds(
    lambda i, salt, body, extra: f"$aes-256-cbc/pbkdf2-sha1$i={i}{extra}${salt}${body}",
    st.one_of(st.integers(-2, 40).map(str), st.text(max_size=4)),
    st.one_of(st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=30)),
    st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=90)),
    st.sampled_from(["", ",x=1", ",i=2", ",bad"]),
)
_ANYTHING = st.one_of(st.text(max_size=120), st.binary(max_size=120), _SMSGATE_LIKE)


@settings(max_examples=300, deadline=None)
@given(_ANYTHING, st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
def test_no_input_fails_with_anything_but_envelope_error(ciphertext: str | bytes, passphrase: str) -> None:
    assert recognise(ciphertext) in {"smsgw1", "smsgate", "unmarked", "unknown"}
    for opener in (smsgate_open, smsgate_decrypt, httpsms_open, httpsms_decrypt):
        try:
            opener(passphrase, ciphertext)
        except EnvelopeError:
            pass
    for check in (smsgate_check, httpsms_check):
        try:
            assert check(ciphertext) >= 0
        except EnvelopeError:
            pass
    try:
        open_text([passphrase or "p"], ciphertext, unmarked="httpsms")
    except EnvelopeError:
        pass
    try:
        open_data([passphrase or "p"], ciphertext)
    except EnvelopeError:
        pass
