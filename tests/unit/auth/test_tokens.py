"""gateway.auth.tokens: JWT test vectors (RELIABILITY 16, 17, 19; RFC 8725).

Every refusal must be `gateway.errors.Unauthenticated` and nothing else. Tokens that pyjwt
would refuse to make (alg none, HS256 keyed with a PEM) are crafted by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.auth.scopes import Scope
from gateway.auth.tokens import Claims, JwtKeys, TokenCodec, TokenKind, load_or_create_secret
from gateway.config import JwtSettings
from gateway.errors import Unauthenticated

SECRET = "n" * 20 + "ew-secret-0123456789abcdef"
OLD_SECRET = "o" * 20 + "ld-secret-0123456789abcdef"
OTHER_SECRET = "a" * 20 + "nother-secret-0123456789ab"
ISS, AUD = "smsgw", "smsgw"


# ---- helpers ------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _hs256(key: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{_json(header)}.{_json(payload)}"
    return f"{signing_input}.{_b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def _now() -> datetime:
    # pyjwt checks exp/iat against the real clock.
    return datetime.now(UTC).replace(microsecond=0)


def _claims(kind: TokenKind = TokenKind.ACCESS, *, ttl: int = 900, issued: datetime | None = None) -> Claims:
    issued = issued or _now()
    return Claims(
        kind, "01JTI0000000000000000000", "01OWNER00000000000000000", "01FAMILY0000000000000000",
        frozenset({Scope.MESSAGES_SEND, Scope.MESSAGES_READ}), issued, issued + timedelta(seconds=ttl),
    )


def _codec(keys: JwtKeys, *, leeway: float = 0, issuer: str = ISS, audience: str = AUD) -> TokenCodec:
    return TokenCodec(keys, issuer=issuer, audience=audience, leeway=leeway)


def _ec_private_pem(curve: ec.EllipticCurve | None = None) -> bytes:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _public_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def es_pem() -> bytes:
    return _ec_private_pem()


@pytest.fixture
def hs() -> TokenCodec:
    return _codec(JwtKeys.hs256(SECRET))


def _header(codec: TokenCodec, kind: TokenKind = TokenKind.ACCESS) -> dict[str, Any]:
    return {"alg": "HS256", "kid": codec.keys.signing_kid, "typ": str(kind)}


def _payload(**changes: Any) -> dict[str, Any]:
    payload = _claims().payload(ISS, AUD)
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not _DROP}


_DROP = object()


def _refused(codec: TokenCodec, token: str, kind: TokenKind = TokenKind.ACCESS, match: str | None = None) -> Unauthenticated:
    with pytest.raises(Unauthenticated, match=match) as info:
        codec.decode(token, kind)
    assert type(info.value) is Unauthenticated
    return info.value


# ---- accepted -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TokenKind))
def test_hs256_round_trip(hs: TokenCodec, kind: TokenKind) -> None:
    claims = _claims(kind)
    token = hs.encode(claims)
    assert hs.decode(token, kind) == claims
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": hs.keys.signing_kid, "typ": str(kind)}


def test_the_crafting_helper_matches_the_codec(hs: TokenCodec) -> None:
    """Hand-made tokens below are only meaningful if a correct one made this way verifies."""
    assert hs.decode(_hs256(SECRET.encode(), _header(hs), _payload()), TokenKind.ACCESS) == _claims()


@pytest.mark.parametrize("kind", list(TokenKind))
def test_es256_round_trip(es_pem: bytes, kind: TokenKind) -> None:
    codec = _codec(JwtKeys.es256(es_pem))
    claims = _claims(kind)
    token = codec.encode(claims)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert codec.decode(token, kind) == claims
    # The public key alone (a verifier) accepts it too.
    public = serialization.load_pem_public_key(_public_pem(es_pem))
    assert jwt.decode(token, public, algorithms=["ES256"], audience=AUD, issuer=ISS)["jti"] == claims.jti


def test_hs256_encoding_is_deterministic(hs: TokenCodec) -> None:
    claims = _claims()
    again = replace(claims, scopes=frozenset(reversed(sorted(claims.scopes))))
    assert hs.encode(claims) == hs.encode(claims) == hs.encode(again)
    assert _codec(JwtKeys.hs256(SECRET)).encode(claims) == hs.encode(claims)


def test_leeway_lets_a_just_expired_token_pass() -> None:
    codec = _codec(JwtKeys.hs256(SECRET), leeway=30)
    now = _now()
    recent = _claims(issued=now - timedelta(seconds=910), ttl=900)  # expired 10 s ago
    assert codec.decode(codec.encode(recent), TokenKind.ACCESS) == recent
    old = _claims(issued=now - timedelta(seconds=960), ttl=900)  # expired 60 s ago
    _refused(codec, codec.encode(old), match="expired")


def test_leeway_above_30_s_is_refused() -> None:
    with pytest.raises(ValueError, match="30"):
        _codec(JwtKeys.hs256(SECRET), leeway=31)


# ---- refused: time, audience, issuer, claims ---------------------------------------------


def test_expired(hs: TokenCodec) -> None:
    _refused(hs, hs.encode(_claims(issued=_now() - timedelta(seconds=1000), ttl=900)), match="expired")


def test_issued_in_the_future(hs: TokenCodec) -> None:
    _refused(hs, hs.encode(_claims(issued=_now() + timedelta(seconds=3600))))


def test_signed_with_another_secret(hs: TokenCodec) -> None:
    other = _codec(JwtKeys.hs256(OTHER_SECRET))
    _refused(hs, other.encode(_claims()), match="unknown key")
    # Same kid, other secret: the signature check refuses it.
    _refused(hs, _hs256(OTHER_SECRET.encode(), _header(hs), _payload()), match="signature")


def test_wrong_audience(hs: TokenCodec) -> None:
    _refused(hs, _codec(JwtKeys.hs256(SECRET), audience="someone-else").encode(_claims()), match="audience")


def test_wrong_issuer(hs: TokenCodec) -> None:
    _refused(hs, _codec(JwtKeys.hs256(SECRET), issuer="evil").encode(_claims()), match="issuer")


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "jti", "scope", "fid"])
def test_each_required_claim(hs: TokenCodec, claim: str) -> None:
    token = _hs256(SECRET.encode(), _header(hs), _payload(**{claim: _DROP}))
    _refused(hs, token, match=claim)


@pytest.mark.parametrize(
    "changes",
    [
        {"scope": "root"},
        {"scope": 7},
        {"sub": 42},
        {"jti": ["a"]},
        {"exp": "tomorrow"},
        {"exp": 10**20},
        {"iat": -(10**20)},
        {"nbf": "x"},
    ],
    ids=repr,
)
def test_signed_claims_of_the_wrong_type_or_value(hs: TokenCodec, changes: dict[str, Any]) -> None:
    _refused(hs, _hs256(SECRET.encode(), _header(hs), _payload(**changes)))


# ---- refused: algorithm and key confusion (RELIABILITY 16) ----------------------------


def test_alg_none(hs: TokenCodec) -> None:
    for alg in ("none", "None", "NONE"):
        token = f"{_json({'alg': alg, 'kid': hs.keys.signing_kid, 'typ': 'at+jwt'})}.{_json(_payload())}."
        _refused(hs, token, match="algorithm")


def test_alg_none_against_es256(es_pem: bytes) -> None:
    codec = _codec(JwtKeys.es256(es_pem))
    token = f"{_json({'alg': 'none', 'kid': codec.keys.signing_kid, 'typ': 'at+jwt'})}.{_json(_payload())}."
    _refused(codec, token, match="algorithm")


def test_other_hmac_algorithm_with_the_right_secret(hs: TokenCodec) -> None:
    long_secret = SECRET * 2  # HS512 wants 64 bytes
    codec = _codec(JwtKeys.hs256(long_secret))
    token = jwt.encode(_payload(), long_secret, algorithm="HS512", headers=_header(codec) | {"alg": "HS512"})
    _refused(codec, token, match="algorithm")


def test_hs256_keyed_with_the_es256_public_key(es_pem: bytes) -> None:
    """The classic key confusion: the verifier's public key used as an HMAC secret."""
    codec = _codec(JwtKeys.es256(es_pem))
    kid = codec.keys.signing_kid
    public_pem = _public_pem(es_pem)
    for key in (public_pem, public_pem.strip()):
        token = _hs256(key, {"alg": "HS256", "kid": kid, "typ": "at+jwt"}, _payload())
        _refused(codec, token, match="algorithm")
    # Even claiming ES256 in the header, an HMAC signature is no ECDSA signature.
    forged = _hs256(public_pem, {"alg": "ES256", "kid": kid, "typ": "at+jwt"}, _payload())
    _refused(codec, forged)


def test_es256_token_against_an_hs256_codec(es_pem: bytes, hs: TokenCodec) -> None:
    _refused(hs, _codec(JwtKeys.es256(es_pem)).encode(_claims()), match="unknown key")


def test_unknown_kid(hs: TokenCodec) -> None:
    for kid in ("0000000000000000", "", "../../etc/passwd", hs.keys.signing_kid.upper()):
        token = _hs256(SECRET.encode(), {"alg": "HS256", "kid": kid, "typ": "at+jwt"}, _payload())
        _refused(hs, token, match="unknown key")
    for kid in (7, None, [hs.keys.signing_kid]):  # not even a string (pyjwt: malformed)
        _refused(hs, _hs256(SECRET.encode(), {"alg": "HS256", "kid": kid, "typ": "at+jwt"}, _payload()))


def test_no_kid(hs: TokenCodec) -> None:
    token = _hs256(SECRET.encode(), {"alg": "HS256", "typ": "at+jwt"}, _payload())
    _refused(hs, token, match="unknown key")
    _refused(hs, jwt.encode(_payload(), SECRET, algorithm="HS256", headers={"typ": "at+jwt"}), match="unknown key")


@pytest.mark.parametrize(
    "name, value",
    [
        ("jku", "https://evil.example/jwks.json"),
        ("x5u", "https://evil.example/cert.pem"),
        ("jwk", {"kty": "oct", "k": _b64(SECRET.encode())}),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
    ],
)
def test_headers_naming_keys_are_refused(hs: TokenCodec, name: str, value: Any) -> None:
    # Correctly signed with our own key: the header alone is the reason for refusal.
    token = _hs256(SECRET.encode(), _header(hs) | {name: value}, _payload())
    _refused(hs, token, match="keys|malformed")  # pyjwt itself refuses a `crit` it does not know


# ---- refused: token type (RELIABILITY 17) ---------------------------------------------


def test_refresh_token_presented_as_access_and_the_other_way(hs: TokenCodec) -> None:
    refresh = hs.encode(_claims(TokenKind.REFRESH))
    access = hs.encode(_claims(TokenKind.ACCESS))
    _refused(hs, refresh, TokenKind.ACCESS, match="not an access token")
    _refused(hs, access, TokenKind.REFRESH, match="not a refresh token")


@pytest.mark.parametrize("typ", [None, "JWT", "at+JWT", "AT+JWT", "rt+jwt ", ["at+jwt"]])
def test_other_typ_values(hs: TokenCodec, typ: Any) -> None:
    header = {"alg": "HS256", "kid": hs.keys.signing_kid}
    if typ is not None:
        header["typ"] = typ
    _refused(hs, _hs256(SECRET.encode(), header, _payload()), TokenKind.ACCESS)


# ---- refused: tampering and garbage ---------------------------------------------------


def test_tampered_payload(hs: TokenCodec) -> None:
    token = hs.encode(_claims())
    head, _, sig = token.split(".")
    for changes in ({"sub": "01SOMEONEELSE00000000000"}, {"scope": " ".join(Scope)}, {"exp": _payload()["exp"] + 86400}):
        _refused(hs, f"{head}.{_json(_payload(**changes))}.{sig}", match="signature")


def test_tampered_header_and_signature(hs: TokenCodec) -> None:
    token = hs.encode(_claims())
    head, body, sig = token.split(".")
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    _refused(hs, f"{head}.{body}.{flipped}", match="signature")
    _refused(hs, f"{head}.{body}.", match="signature")
    _refused(hs, f"{head}.{body}", match="malformed")
    other_head = _json(_header(hs) | {"extra": 1})
    _refused(hs, f"{other_head}.{body}.{sig}", match="signature")


GARBAGE = [
    "",
    " ",
    ".",
    "..",
    "...",
    "a.b.c",
    "Bearer abc",
    "null.null.null",
    "e30.e30.",
    "e30.e30.e30",
    "W10.e30.",  # header is a JSON list
    "eyJhbGciOiJIUzI1NiJ9",
    "é.é.é",
    "\x00\x00",
    "\ud800.\udfff.x",  # lone surrogates: not even encodable as UTF-8
    "x" * 100_000,
    "." * 10_000,
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
@pytest.mark.parametrize("kind", list(TokenKind))
def test_garbage(hs: TokenCodec, garbage: str, kind: TokenKind) -> None:
    _refused(hs, garbage, kind)


_header_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5), max_size=2),
    st.sampled_from(["HS256", "ES256", "none", "at+jwt", "rt+jwt"]),
)


@st.composite
def _jwt_shaped(draw: st.DrawFn) -> str:
    """Three base64url segments whose header and payload are often JSON objects, sometimes
    with our kid, sometimes signed with our secret."""
    kid = JwtKeys.hs256(SECRET).signing_kid
    header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "jku", "x5u", "cty", "zip"]), _header_values, max_size=4))
    if draw(st.booleans()):
        header |= {"alg": "HS256", "kid": kid, "typ": draw(st.sampled_from(["at+jwt", "rt+jwt"]))}
    payload = draw(
        st.one_of(
            st.builds(lambda extra: _payload() | extra, st.dictionaries(st.sampled_from(list(_payload())), _header_values, max_size=3)),
            st.dictionaries(st.text(max_size=5), _header_values, max_size=4),
            _header_values,
        )
    )
    if draw(st.booleans()):
        signing_input = f"{_json(header)}.{_json(payload)}"
        return f"{signing_input}.{_b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())}"
    sig = draw(st.binary(max_size=40))
    return f"{_json(header)}.{_json(payload)}.{_b64(sig)}"


_any_text = st.one_of(
    st.text(),
    st.text(st.characters(categories=["Cs", "Cc", "Lo"])),  # surrogates and control characters
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=", max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.lists(st.binary(max_size=60).map(_b64), min_size=1, max_size=5).map(".".join),
    _jwt_shaped(),
)


@settings(max_examples=300, deadline=None)
@given(token=_any_text, kind=st.sampled_from(list(TokenKind)))
@example(token="\ud800", kind=TokenKind.ACCESS)
def test_decode_raises_only_unauthenticated(token: str, kind: TokenKind) -> None:
    codec = _codec(JwtKeys.hs256(SECRET), leeway=30)
    try:
        claims = codec.decode(token, kind)
    except Unauthenticated:
        return
    # Anything accepted must be signed with our key, of the requested kind, with every claim.
    header = jwt.get_unverified_header(token)
    assert claims.kind is kind and header["typ"] == str(kind)
    assert header["kid"] == codec.keys.signing_kid and header["alg"] == "HS256"
    assert jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUD, issuer=ISS, leeway=30)["jti"] == claims.jti


# ---- key rotation (RELIABILITY 19) ----------------------------------------------------


def test_hs256_key_rotation() -> None:
    before = _codec(JwtKeys.hs256(OLD_SECRET))
    old_token = before.encode(_claims())
    old_kid = before.keys.signing_kid

    during = _codec(JwtKeys.hs256(SECRET, (OLD_SECRET,)))
    assert during.decode(old_token, TokenKind.ACCESS) == _claims()  # valid until its exp
    new_token = during.encode(_claims())
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid == during.keys.signing_kid != old_kid
    assert during.decode(new_token, TokenKind.ACCESS) == _claims()
    _refused(before, new_token, match="unknown key")  # signed with the new secret only

    after = _codec(JwtKeys.hs256(SECRET))
    _refused(after, old_token, match="unknown key")
    assert after.decode(new_token, TokenKind.ACCESS) == _claims()


def test_hs256_kid_does_not_reveal_the_secret() -> None:
    kid = JwtKeys.hs256(SECRET).signing_kid
    assert SECRET not in kid and hashlib.sha256(SECRET.encode()).hexdigest()[:16] != kid
    assert JwtKeys.hs256(OLD_SECRET).signing_kid != kid


def test_es256_key_rotation(es_pem: bytes) -> None:
    new_pem = _ec_private_pem()
    before = _codec(JwtKeys.es256(es_pem))
    old_token = before.encode(_claims())

    during = _codec(JwtKeys.es256(new_pem, (_public_pem(es_pem),)))
    assert during.decode(old_token, TokenKind.ACCESS) == _claims()
    new_token = during.encode(_claims())
    assert jwt.get_unverified_header(new_token)["kid"] == during.keys.signing_kid != before.keys.signing_kid
    assert during.decode(new_token, TokenKind.ACCESS) == _claims()
    # The old key is for verification only: nothing new is signed with it.
    assert during.keys.keys[before.keys.signing_kid].sign is None

    after = _codec(JwtKeys.es256(new_pem))
    _refused(after, old_token, match="unknown key")
    assert after.decode(new_token, TokenKind.ACCESS) == _claims()


def test_es256_needs_a_p256_key() -> None:
    with pytest.raises(ValueError, match="P-256"):
        JwtKeys.es256(_ec_private_pem(ec.SECP384R1()))


def test_from_settings_es256_and_previous_public_keys(tmp_path: Path, es_pem: bytes) -> None:
    new_pem = _ec_private_pem()
    (tmp_path / "new.pem").write_bytes(new_pem)
    (tmp_path / "old.pub.pem").write_bytes(_public_pem(es_pem))
    settings = JwtSettings(
        algorithm="ES256", private_key_file=tmp_path / "new.pem", previous_public_key_files=(tmp_path / "old.pub.pem",)
    )
    codec = _codec(JwtKeys.from_settings(settings, tmp_path))
    old_token = _codec(JwtKeys.es256(es_pem)).encode(_claims())
    assert codec.decode(old_token, TokenKind.ACCESS) == _claims()
    assert codec.keys.signing_kid == JwtKeys.es256(new_pem).signing_kid


def test_from_settings_hs256(tmp_path: Path) -> None:
    keys = JwtKeys.from_settings(JwtSettings(secret=SECRET, previous_secrets=(OLD_SECRET,)), tmp_path)
    assert keys.signing_kid == JwtKeys.hs256(SECRET).signing_kid
    assert JwtKeys.hs256(OLD_SECRET).signing_kid in keys.keys
    assert not (tmp_path / "jwt.secret").exists()
    generated = JwtKeys.from_settings(JwtSettings(), tmp_path)
    assert (tmp_path / "jwt.secret").exists()
    assert JwtKeys.from_settings(JwtSettings(), tmp_path).signing_kid == generated.signing_kid


# ---- settings and the secret file ---------------------------------------------------


def test_short_secret_refused() -> None:
    with pytest.raises(ValidationError, match=r"jwt\.secret"):
        JwtSettings(secret="x" * 31)
    with pytest.raises(ValidationError, match=r"jwt\.secret"):
        JwtSettings(secret=SECRET, previous_secrets=("short",))
    assert JwtSettings(secret="x" * 32).secret == "x" * 32


@pytest.mark.parametrize("access, refresh", [(900, 900), (900, 899), (3600, 60)])
def test_refresh_ttl_must_exceed_access_ttl(access: int, refresh: int) -> None:
    with pytest.raises(ValidationError, match="refresh_ttl"):
        JwtSettings(access_ttl=access, refresh_ttl=refresh)


def test_es256_without_a_key_file_refused() -> None:
    with pytest.raises(ValidationError, match="private_key_file"):
        JwtSettings(algorithm="ES256")


def test_leeway_setting_at_most_30() -> None:
    with pytest.raises(ValidationError):
        JwtSettings(leeway=31)
    assert JwtSettings().leeway <= 30


def test_load_or_create_secret(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    mtime = os.stat(path).st_mtime_ns
    time.sleep(0.01)
    assert load_or_create_secret(path) == first
    assert os.stat(path).st_mtime_ns == mtime  # reused, not rewritten
    assert load_or_create_secret(tmp_path / "other") != first  # random


def test_load_or_create_secret_refuses_a_short_one(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    path.write_text("passphrase\n")
    with pytest.raises(ValueError, match="32"):
        load_or_create_secret(path)
