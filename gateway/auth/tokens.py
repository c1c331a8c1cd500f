"""JWT access and refresh tokens: signing keys by `kid`, and verification that trusts nothing
the token says about how to verify it (RELIABILITY 16, 17, 19; RFC 8725).

* One algorithm per key: the key named by `kid` decides the algorithm, and `jwt.decode`
  is given exactly that one, so `alg: none` and HS256-with-the-ES256-public-key fail.
* A token naming keys or key URLs (`jku`, `x5u`, `jwk`, `x5c`) or an unknown `kid` fails.
* `exp`, `iat`, `iss`, `aud`, `sub`, `jti`, `scope` (and our `fid`, the token family) are
  required; leeway is at most 30 s.
* Access tokens have header `typ: at+jwt` (RFC 9068), refresh tokens `rt+jwt`: a refresh
  token presented as an access token is refused, and the other way round.
* Signing is deterministic for HS256, so the same claims give the same token: a refresh
  retried within the grace window gets the very pair it was first given.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.scopes import Scope, parse_scopes
from gateway.config import JwtSettings
from gateway.errors import Unauthenticated
from gateway.private_files import write_private_file

__all__ = ["TokenKind", "Claims", "JwtKeys", "TokenCodec", "load_or_create_secret"]

_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti", "scope", "fid"]


class TokenKind(StrEnum):
    ACCESS = "at+jwt"
    REFRESH = "rt+jwt"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says: who (`owner_id`), what it may do, and its family."""

    kind: TokenKind
    jti: str
    owner_id: str
    family_id: str
    scopes: frozenset[Scope]
    issued_at: datetime
    expires_at: datetime

    def payload(self, issuer: str, audience: str) -> dict[str, Any]:
        return {
            "iss": issuer,
            "aud": audience,
            "sub": self.owner_id,
            "jti": self.jti,
            "fid": self.family_id,
            "scope": " ".join(sorted(self.scopes)),
            "iat": int(self.issued_at.timestamp()),
            "exp": int(self.expires_at.timestamp()),
        }


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    sign: Any  # the secret, or the EC private key (None: verify only)
    verify: Any  # the secret, or the EC public key


def _kid(material: bytes) -> str:
    # Keyed so the kid of an HMAC secret says nothing about the secret.
    return hmac.new(material, b"smsgw kid", hashlib.sha256).hexdigest()[:16]


class JwtKeys:
    """The signing key and every key that still verifies (key rotation), by `kid`."""

    def __init__(self, signing_kid: str, keys: dict[str, _Key]) -> None:
        self.signing_kid = signing_kid
        self.keys = keys

    @classmethod
    def hs256(cls, secret: str, previous: tuple[str, ...] = ()) -> JwtKeys:
        keys = {_kid(s.encode()): _Key("HS256", s.encode(), s.encode()) for s in (*previous, secret)}
        return cls(_kid(secret.encode()), keys)

    @classmethod
    def es256(cls, private_pem: bytes, previous_public_pems: tuple[bytes, ...] = ()) -> JwtKeys:
        private = serialization.load_pem_private_key(private_pem, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise ValueError("jwt.private_key_file: ES256 needs an EC P-256 private key")
        keys: dict[str, _Key] = {}
        for pem in previous_public_pems:
            public = serialization.load_pem_public_key(pem)
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise ValueError("jwt.previous_public_key_files: ES256 needs EC public keys")
            keys[_kid(_spki(public))] = _Key("ES256", None, public)
        kid = _kid(_spki(private.public_key()))
        keys[kid] = _Key("ES256", private, private.public_key())
        return cls(kid, keys)

    @classmethod
    def from_settings(cls, settings: JwtSettings, data_dir: Path) -> JwtKeys:
        """The keys `smsgw serve` uses: ES256 from PEM files, or HS256 from `jwt.secret`
        (or the random secret kept in DATA_DIR/jwt.secret when none is configured)."""
        if settings.algorithm == "ES256":
            assert settings.private_key_file is not None  # checked by the settings
            return cls.es256(
                settings.private_key_file.read_bytes(),
                tuple(p.read_bytes() for p in settings.previous_public_key_files),
            )
        secret = settings.secret or load_or_create_secret(data_dir / "jwt.secret")
        return cls.hs256(secret, settings.previous_secrets)


def _spki(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_secret(path: Path) -> str:
    """A 256-bit random HS256 secret (never a passphrase), made once and kept 0600."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        write_private_file(path, secret + "\n")
    if len(secret) < 32:
        raise ValueError(f"{path}: a JWT secret must be at least 32 characters")
    return secret


class TokenCodec:
    """Signs and verifies smsgw JWTs."""

    def __init__(self, keys: JwtKeys, *, issuer: str, audience: str, leeway: float) -> None:
        if leeway > 30:
            raise ValueError("JWT leeway is at most 30 s (RELIABILITY 17)")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    def encode(self, claims: Claims) -> str:
        key = self.keys.keys[self.keys.signing_kid]
        return jwt.encode(
            claims.payload(self.issuer, self.audience),
            key.sign,
            algorithm=key.algorithm,
            headers={"kid": self.keys.signing_kid, "typ": str(claims.kind)},
        )

    def decode(self, token: str, kind: TokenKind) -> Claims:
        """Verify `token` as a `kind` token. Raises Unauthenticated saying why, never more."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, UnicodeError):  # UnicodeError: a str not encodable as UTF-8 (lone surrogates)
            raise Unauthenticated("malformed token") from None
        if any(name in header for name in _FORBIDDEN_HEADERS):
            raise Unauthenticated("token names its own keys (jku/x5u/jwk/x5c/crit): refused")
        key = self.keys.keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated("token signed with an unknown key")
        if header.get("alg") != key.algorithm:
            raise Unauthenticated(f"token algorithm must be {key.algorithm}")
        if header.get("typ") != str(kind):
            raise Unauthenticated("not an access token" if kind is TokenKind.ACCESS else "not a refresh token")
        try:
            payload = jwt.decode(
                token,
                key.verify,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": _REQUIRED, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token signature or claims") from None
        try:
            scopes = parse_scopes(str(payload["scope"]))
            return Claims(
                kind=kind,
                jti=str(payload["jti"]),
                owner_id=str(payload["sub"]),
                family_id=str(payload["fid"]),
                scopes=scopes,
                issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
                expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            )
        except (ValueError, TypeError, OverflowError):
            raise Unauthenticated("invalid token claims") from None
