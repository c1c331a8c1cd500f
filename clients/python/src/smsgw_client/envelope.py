"""The smsgw1 end-to-end envelope: what the server stores and forwards for an encrypted message.

    base64( b"smsgw1" | salt[16] | iv[12] | AES-256-GCM(plaintext) | tag[16] )
    key = PBKDF2-HMAC-SHA256(passphrase, salt, 100_000 iterations, 32 bytes)

Byte-compatible with the SMSGate helpers people already run (Node's ``crypto`` and Python's
``cryptography`` versions in its docs): each opens what the other makes; the shared vectors
in ``clients/vectors/smsgw1.json`` prove it for every build. The server never sees the
passphrase; phones decrypt before sending and encrypt what they receive.

Everything that cannot be opened — wrong magic, truncated, bad base64, a wrong passphrase, a
tampered byte — raises :class:`EnvelopeError` with a ``reason``; nothing else escapes and no
garbage is ever returned. Derived keys are cached per (passphrase, salt), so a phone opening a
batch pays the 100,000 PBKDF2 rounds once per salt, not once per message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Iterable
from threading import Lock

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "MAGIC",
    "ITERATIONS",
    "OVERHEAD",
    "EnvelopeError",
    "encrypt",
    "decrypt",
    "encrypt_bytes",
    "decrypt_bytes",
    "seal",
    "seal_for_key",
    "check_envelope",
    "KeyRing",
]

MAGIC = b"smsgw1"
ITERATIONS = 100_000
_SALT, _IV, _TAG = 16, 12, 16
_HEADER = len(MAGIC) + _SALT + _IV
_MIN_RAW = _HEADER + _TAG  # an empty plaintext
OVERHEAD = _MIN_RAW  # 50 bytes before base64; base64 makes (n + 50) * 4/3 characters
_CACHE_SIZE = 64


class EnvelopeError(ValueError):
    """The envelope cannot be opened (or is not an envelope); ``reason`` says which check failed:
    ``not_base64``, ``too_short``, ``bad_magic``, ``not_utf8`` or ``wrong_key_or_tampered``."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class _KeyCache:
    """Derived keys by (passphrase digest, salt, hash, rounds): PBKDF2 is deliberately slow, and
    a re-delivery or a key-log retry should not pay it again. The other gateways' formats
    (smsgw_client.foreign) use it too, with their own hash and rounds."""

    def __init__(self, size: int) -> None:
        self._keys: OrderedDict[tuple[bytes, bytes, str, int], bytes] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def key(self, passphrase: str, salt: bytes, *, digest: str = "sha256", iterations: int = ITERATIONS) -> bytes:
        secret = _utf8(passphrase, "passphrase")
        # The cache keys on a digest, so the passphrase itself is not kept in the dict.
        slot = (hashlib.sha256(secret).digest(), salt, digest, iterations)
        with self._lock:
            found = self._keys.get(slot)
            if found is not None:
                self._keys.move_to_end(slot)
                return found
        derived = hashlib.pbkdf2_hmac(digest, secret, salt, iterations, 32)
        with self._lock:
            self._keys[slot] = derived
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)
        return derived


_CACHE = _KeyCache(_CACHE_SIZE)
_SEAL_FOR_KEY_LABEL = b"smsgw1/seal_for_key"
# Strict base64, the same as the Node helper's: no junk, "=" only as the final padding.
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _utf8(value: str, what: str) -> bytes:
    """UTF-8 of a text argument; a lone surrogate (no UTF-8 form) is refused, as in Node."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text (a lone surrogate)") from None


def seal(passphrase: str, plaintext: bytes, *, salt: bytes | None = None, iv: bytes | None = None) -> str:
    """Encrypt bytes into an envelope. ``salt`` and ``iv`` are for test vectors only: a fresh
    random pair for every message is what keeps AES-GCM safe."""
    salt = os.urandom(_SALT) if salt is None else salt
    iv = os.urandom(_IV) if iv is None else iv
    if len(salt) != _SALT or len(iv) != _IV:
        raise ValueError(f"salt must be {_SALT} bytes and iv {_IV} bytes")
    sealed = AESGCM(_CACHE.key(passphrase, salt)).encrypt(iv, bytes(plaintext), None)
    return base64.b64encode(MAGIC + salt + iv + sealed).decode("ascii")


def seal_for_key(passphrase: str, plaintext: bytes, idempotency_key: str) -> str:
    """Seal for a send with an idempotency key: salt and IV come from an HMAC of the
    (length-prefixed) key and the plaintext, so sending the same content under the same key
    again makes the same envelope and the server sees a replay, not a conflict. A (key, IV)
    pair is only ever reused for the very same plaintext, which is what AES-GCM requires; an
    observer learns only what the idempotency key already says (same key, same message). The
    HMAC key is itself PBKDF2-derived (100,000 rounds, cached), so a guessed plaintext does not
    make guessing the passphrase any cheaper than the envelope key does."""
    subkey = _CACHE.key(passphrase, _SEAL_FOR_KEY_LABEL)
    key = _utf8(idempotency_key, "idempotency_key")
    digest = hmac.new(subkey, struct.pack(">I", len(key)) + key + bytes(plaintext), hashlib.sha256).digest()
    return seal(passphrase, plaintext, salt=digest[:_SALT], iv=digest[_SALT : _SALT + _IV])


def encrypt(passphrase: str, plaintext: str) -> str:
    """Encrypt a text (UTF-8) into an envelope."""
    return seal(passphrase, plaintext.encode("utf-8"))


def encrypt_bytes(passphrase: str, data: bytes) -> str:
    """Encrypt data-SMS bytes into an envelope."""
    return seal(passphrase, bytes(data))


def _raw(envelope: str | bytes) -> bytes:
    """The envelope's bytes after its form is checked (base64, length, magic)."""
    if not isinstance(envelope, (str, bytes, bytearray, memoryview)):
        raise TypeError("an envelope is a str or bytes")
    try:
        text = (envelope.encode("ascii") if isinstance(envelope, str) else bytes(envelope)).strip()
        if not _BASE64.fullmatch(text):
            raise ValueError("not base64")
        raw = base64.b64decode(text, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise EnvelopeError("not_base64", "not an smsgw1 envelope: not base64") from None
    if len(raw) < _MIN_RAW:
        raise EnvelopeError("too_short", f"not an smsgw1 envelope: {len(raw)} bytes, at least {_MIN_RAW} needed")
    if not hmac.compare_digest(raw[: len(MAGIC)], MAGIC):
        raise EnvelopeError("bad_magic", "not an smsgw1 envelope: it does not start with smsgw1")
    return raw


def check_envelope(envelope: str | bytes) -> int:
    """Check an envelope's form without opening it (what the server can do); returns the
    plaintext's length in bytes. Raises EnvelopeError."""
    return len(_raw(envelope)) - _MIN_RAW


def _open(passphrase: str, raw: bytes) -> bytes:
    salt, iv = raw[len(MAGIC) : len(MAGIC) + _SALT], raw[len(MAGIC) + _SALT : _HEADER]
    try:
        return AESGCM(_CACHE.key(passphrase, salt)).decrypt(iv, raw[_HEADER:], None)
    except InvalidTag:
        raise EnvelopeError("wrong_key_or_tampered", "cannot open the envelope: wrong passphrase, or it was changed") from None


def decrypt_bytes(passphrase: str, envelope: str | bytes) -> bytes:
    """Open an envelope into bytes. Raises EnvelopeError."""
    return _open(passphrase, _raw(envelope))


def decrypt(passphrase: str, envelope: str | bytes) -> str:
    """Open an envelope into text. Raises EnvelopeError (also when the bytes are not UTF-8)."""
    return _text(decrypt_bytes(passphrase, envelope))


def _text(plain: bytes) -> str:
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("not_utf8", "the envelope opened, but holds bytes, not UTF-8 text") from None


class KeyRing:
    """Passphrases to try in order, newest first: after a rotation, messages sealed with an
    older passphrase still open ("keep a key log"). New envelopes use the first one."""

    def __init__(self, passphrases: Iterable[str]) -> None:
        if isinstance(passphrases, (str, bytes)):
            raise TypeError("a key ring takes a list of passphrases, not one string")
        self.passphrases = tuple(passphrases)
        if not self.passphrases:
            raise ValueError("a key ring needs at least one passphrase")
        for passphrase in self.passphrases:
            _utf8(passphrase, "each passphrase")

    def __repr__(self) -> str:
        return f"KeyRing(<{len(self.passphrases)} passphrases>)"

    def encrypt(self, plaintext: str) -> str:
        return encrypt(self.passphrases[0], plaintext)

    def encrypt_bytes(self, data: bytes) -> str:
        return encrypt_bytes(self.passphrases[0], data)

    def decrypt_bytes(self, envelope: str | bytes) -> bytes:
        raw = _raw(envelope)
        for passphrase in self.passphrases:
            try:
                return _open(passphrase, raw)
            except EnvelopeError:
                continue
        raise EnvelopeError(
            "wrong_key_or_tampered", f"cannot open the envelope with any of {len(self.passphrases)} passphrases"
        )

    def decrypt(self, envelope: str | bytes) -> str:
        return _text(self.decrypt_bytes(envelope))
