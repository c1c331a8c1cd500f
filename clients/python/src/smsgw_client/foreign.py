"""The other gateways' end-to-end formats, beside smsgw1: what SMSGate's and httpSMS's own
clients seal passes through smsgw unchanged, and the phone (or your code) opens it here.

SMSGate (the ``android-sms-gateway`` clients with ``isEncrypted``; the numbers are sealed too)::

    $aes-256-cbc/pbkdf2-sha1$i=<iterations>$<base64 salt[16]>$<base64 AES-256-CBC(PKCS#7(text))>
    key = PBKDF2-HMAC-SHA1(passphrase, salt, iterations, 32 bytes); the salt is also the IV

httpSMS (the ``httpsms`` npm package's ``cipher``; only the content is sealed, never a number)::

    base64( iv[16] | AES-256-CFB128(text) ),  key = SHA-256(passphrase)

Both seal UTF-8 text only (an SMSGate data message is sealed as its base64 text). Passphrases
are UTF-8, as in SMSGate's app and httpSMS; SMSGate's Python client encodes them as Latin-1
(pycryptodome), so only ASCII passphrases give the same key there.

Neither format is authenticated: a wrong passphrase or a changed byte shows only as bad padding
(SMSGate) or as bytes that are not UTF-8 text (both), so, unlike smsgw1, a wrong key can on
rare occasions open into some other valid text: nearly never for SMSGate, now and then for a
short httpSMS text. Every failure raises :class:`~smsgw_client.envelope.EnvelopeError` with a
``reason``: ``not_base64``, ``too_short``, ``bad_format`` (not the SMSGate layout, or an
iteration count outside 1..1,000,000) or ``wrong_key_or_tampered``.

An SMSGate ciphertext says what it is (``$aes-256-cbc/...``, never base64); an httpSMS one is
plain base64 with no marker, so :func:`recognise` calls it ``unmarked`` and the caller says which
format unmarked ciphertext is (``unmarked="httpsms"``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from typing import Literal

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # cryptography 47+ keeps CFB among the "decrepit" modes (httpSMS chose it, not us)
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]

from .envelope import MAGIC, EnvelopeError, KeyRing, _KeyCache, _utf8

__all__ = [
    "Format",
    "UnmarkedFormat",
    "UNMARKED_FORMATS",
    "SMSGATE_ALGORITHM",
    "SMSGATE_PREFIX",
    "SMSGATE_ITERATIONS",
    "SMSGATE_MAX_ITERATIONS",
    "recognise",
    "smsgate_seal",
    "smsgate_open",
    "smsgate_encrypt",
    "smsgate_decrypt",
    "smsgate_check",
    "httpsms_seal",
    "httpsms_open",
    "httpsms_encrypt",
    "httpsms_decrypt",
    "httpsms_check",
    "open_text",
    "open_data",
]

Format = Literal["smsgw1", "smsgate", "unmarked", "unknown"]
UnmarkedFormat = Literal["httpsms"]
#: The formats unmarked ciphertext (strict base64, not smsgw1) may be taken to be.
UNMARKED_FORMATS: tuple[UnmarkedFormat, ...] = ("httpsms",)

SMSGATE_ALGORITHM = "aes-256-cbc/pbkdf2-sha1"
SMSGATE_PREFIX = f"${SMSGATE_ALGORITHM}$"
#: SMSGate's clients' default (android_sms_gateway.encryption.Encryptor, the app).
SMSGATE_ITERATIONS = 75_000
#: More is refused: a sealed message must not cost a phone seconds of PBKDF2.
SMSGATE_MAX_ITERATIONS = 1_000_000

_BLOCK = 16
_SALT = 16
_IV = 16
# "smsgw1" is exactly 6 bytes, so an smsgw1 envelope's base64 always starts with these 8 characters.
_SMSGW1_B64 = base64.b64encode(MAGIC).decode("ascii")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_DIGITS = re.compile(r"[0-9]{1,7}")
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() takes: the smsgw1 helpers strip the same


def _ascii(ciphertext: str | bytes, what: str) -> str:
    """The ciphertext as text, ASCII whitespace at the ends stripped; not ASCII = not ours."""
    if isinstance(ciphertext, (bytes, bytearray, memoryview)):
        try:
            ciphertext = bytes(ciphertext).decode("ascii")
        except UnicodeDecodeError:
            raise EnvelopeError("not_base64", f"not {what} ciphertext: not ASCII") from None
    elif not isinstance(ciphertext, str):
        raise TypeError("a ciphertext is a str or bytes")
    return ciphertext.strip(_ASCII_SPACE)


def _b64(text: str, what: str) -> bytes:
    """Strict base64 (the standard alphabet, '=' only as final padding), as smsgw1 requires."""
    if not _BASE64.fullmatch(text):
        raise EnvelopeError("not_base64", f"not {what} ciphertext: not base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern already checked it
        raise EnvelopeError("not_base64", f"not {what} ciphertext: not base64") from None


def recognise(ciphertext: str | bytes) -> Format:
    """Which format a ciphertext is in, by its form alone (no key): ``smsgw1`` (base64 starting
    with the magic), ``smsgate`` (the ``$aes-256-cbc/pbkdf2-sha1$`` prefix), ``unmarked`` (other
    strict base64 of at least 16 bytes: what httpSMS makes, but also any base64 text) or
    ``unknown``. A recognised one may still be malformed: opening says why."""
    try:
        text = _ascii(ciphertext, "any")
    except EnvelopeError:
        return "unknown"
    if text.startswith(SMSGATE_PREFIX):
        return "smsgate"
    if not _BASE64.fullmatch(text):
        return "unknown"
    if text.startswith(_SMSGW1_B64):
        return "smsgw1"
    return "unmarked" if len(text) // 4 * 3 - text.count("=") >= _IV else "unknown"


# --------------------------------------------------------------------------------------------
# SMSGate


_SHA1_KEYS = _KeyCache(128)  # PBKDF2-SHA1 at 75,000 rounds, per message and per number


def _smsgate_parts(ciphertext: str | bytes) -> tuple[int, bytes, bytes]:
    """(iterations, salt, body) of an SMSGate ciphertext, its form checked."""
    text = _ascii(ciphertext, "SMSGate")
    chunks = text.split("$")
    # Exactly five: SMSGate's Python client reads the last two chunks, its app chunks 3 and 4.
    if len(chunks) != 5 or chunks[0] != "":
        raise EnvelopeError("bad_format", "not SMSGate ciphertext: $<algorithm>$<params>$<salt>$<data> expected")
    if chunks[1] != SMSGATE_ALGORITHM:
        raise EnvelopeError("bad_format", f"not SMSGate ciphertext: algorithm {SMSGATE_ALGORITHM} expected")
    params: dict[str, str] = {}
    for item in chunks[2].split(","):
        name, equals, value = item.partition("=")
        if not equals or name in params:
            raise EnvelopeError("bad_format", "SMSGate ciphertext: parameters must be name=value, once each")
        params[name] = value
    count = params.get("i", "")
    if not _DIGITS.fullmatch(count) or not 1 <= int(count) <= SMSGATE_MAX_ITERATIONS:
        raise EnvelopeError("bad_format", f"SMSGate ciphertext: i must be an iteration count 1..{SMSGATE_MAX_ITERATIONS}")
    salt, body = _b64(chunks[3], "SMSGate"), _b64(chunks[4], "SMSGate")
    if len(salt) != _SALT:
        raise EnvelopeError("bad_format", f"SMSGate ciphertext: the salt must be {_SALT} bytes")
    if not body:
        raise EnvelopeError("too_short", "SMSGate ciphertext: no data")
    if len(body) % _BLOCK:
        raise EnvelopeError("bad_format", "SMSGate ciphertext: the data must be whole AES blocks")
    return int(count), salt, body


def smsgate_seal(
    passphrase: str, plaintext: bytes, *, iterations: int = SMSGATE_ITERATIONS, salt: bytes | None = None
) -> str:
    """Seal bytes as SMSGate's clients do. ``salt`` is for test vectors only: it is also the IV,
    so a fresh random one for every message is what keeps CBC safe."""
    salt = os.urandom(_SALT) if salt is None else bytes(salt)
    if len(salt) != _SALT:
        raise ValueError(f"salt must be {_SALT} bytes")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= SMSGATE_MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{SMSGATE_MAX_ITERATIONS}")
    padder = padding.PKCS7(128).padder()
    padded = padder.update(bytes(plaintext)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_SHA1_KEYS.key(passphrase, salt, digest="sha1", iterations=iterations)), modes.CBC(salt)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    return f"{SMSGATE_PREFIX}i={iterations}${base64.b64encode(salt).decode()}${base64.b64encode(body).decode()}"


def smsgate_open(passphrase: str, ciphertext: str | bytes) -> bytes:
    """Open an SMSGate ciphertext into bytes. Raises EnvelopeError."""
    iterations, salt, body = _smsgate_parts(ciphertext)
    decryptor = Cipher(algorithms.AES(_SHA1_KEYS.key(passphrase, salt, digest="sha1", iterations=iterations)), modes.CBC(salt)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise EnvelopeError("wrong_key_or_tampered", "cannot open the SMSGate ciphertext: wrong passphrase, or it was changed") from None


def smsgate_encrypt(passphrase: str, text: str, *, iterations: int = SMSGATE_ITERATIONS) -> str:
    """Seal a text (UTF-8) as SMSGate's ``Encryptor(passphrase).encrypt(text)`` does."""
    return smsgate_seal(passphrase, _utf8(text, "text"), iterations=iterations)


def smsgate_decrypt(passphrase: str, ciphertext: str | bytes) -> str:
    """Open an SMSGate ciphertext into text. Raises EnvelopeError."""
    return _text(smsgate_open(passphrase, ciphertext), "SMSGate")


def smsgate_check(ciphertext: str | bytes) -> int:
    """Check an SMSGate ciphertext's form without a key (what a server can do); returns the
    most plaintext bytes it can hold (the padding takes 1 to 16). Raises EnvelopeError."""
    return len(_smsgate_parts(ciphertext)[2]) - 1


# --------------------------------------------------------------------------------------------
# httpSMS


def _httpsms_key(passphrase: str) -> bytes:
    return hashlib.sha256(_utf8(passphrase, "passphrase")).digest()


def _httpsms_raw(ciphertext: str | bytes) -> bytes:
    raw = _b64(_ascii(ciphertext, "httpSMS"), "httpSMS")
    if len(raw) < _IV:
        raise EnvelopeError("too_short", f"not httpSMS ciphertext: {len(raw)} bytes, at least {_IV} needed")
    return raw


def httpsms_seal(passphrase: str, plaintext: bytes, *, iv: bytes | None = None) -> str:
    """Seal bytes as the ``httpsms`` package's ``cipher.encrypt`` does. ``iv`` is for test
    vectors only: CFB with a repeated IV leaks the XOR of two texts."""
    iv = os.urandom(_IV) if iv is None else bytes(iv)
    if len(iv) != _IV:
        raise ValueError(f"iv must be {_IV} bytes")
    encryptor = Cipher(algorithms.AES(_httpsms_key(passphrase)), CFB(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(bytes(plaintext)) + encryptor.finalize()).decode("ascii")


def httpsms_open(passphrase: str, ciphertext: str | bytes) -> bytes:
    """Open an httpSMS ciphertext into bytes. Any key "opens" CFB: nothing here can tell a wrong
    passphrase; :func:`httpsms_decrypt` at least refuses what is not UTF-8. Raises EnvelopeError."""
    raw = _httpsms_raw(ciphertext)
    decryptor = Cipher(algorithms.AES(_httpsms_key(passphrase)), CFB(raw[:_IV])).decryptor()
    return decryptor.update(raw[_IV:]) + decryptor.finalize()


def httpsms_encrypt(passphrase: str, text: str) -> str:
    """Seal a text (UTF-8) as ``new HttpSms(key).cipher.encrypt(passphrase, text)`` does."""
    return httpsms_seal(passphrase, _utf8(text, "text"))


def httpsms_decrypt(passphrase: str, ciphertext: str | bytes) -> str:
    """Open an httpSMS ciphertext into text; bytes that are not UTF-8 (the only sign of a wrong
    passphrase) raise ``wrong_key_or_tampered`` where the ``httpsms`` package would return
    replacement characters. Raises EnvelopeError."""
    return _text(httpsms_open(passphrase, ciphertext), "httpSMS")


def httpsms_check(ciphertext: str | bytes) -> int:
    """Check an httpSMS ciphertext's form without a key; returns its plaintext's length in
    bytes. Raises EnvelopeError."""
    return len(_httpsms_raw(ciphertext)) - _IV


# --------------------------------------------------------------------------------------------
# Any of them, with a key ring


def _text(plain: bytes, what: str) -> str:
    # Both formats seal only text, and neither has a tag: bytes that are not UTF-8 mean a wrong
    # passphrase (or a changed byte), not "use the bytes variant" as smsgw1's not_utf8 does.
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("wrong_key_or_tampered", f"cannot open the {what} ciphertext: wrong passphrase, or it was changed") from None


def _passphrases(ring: KeyRing | Iterable[str]) -> tuple[str, ...]:
    return ring.passphrases if isinstance(ring, KeyRing) else KeyRing(ring).passphrases


def _first_that_opens(
    passphrases: tuple[str, ...], ciphertext: str | bytes, decrypt: Callable[[str, str | bytes], str], what: str
) -> str:
    for passphrase in passphrases:
        try:
            return decrypt(passphrase, ciphertext)
        except EnvelopeError as exc:
            if exc.reason != "wrong_key_or_tampered":
                raise  # a form error: no passphrase changes it
    raise EnvelopeError("wrong_key_or_tampered", f"cannot open the {what} ciphertext with any of {len(passphrases)} passphrases")


def open_text(
    ring: KeyRing | Iterable[str], ciphertext: str | bytes, *, unmarked: UnmarkedFormat | None = None
) -> str:
    """Open a text in any format with a key ring (passphrases newest first): smsgw1 and SMSGate
    are recognised by their form; other base64 is opened as ``unmarked`` when the caller names
    one (``"httpsms"``), else refused as smsgw1 refuses it. For the unauthenticated formats the
    first passphrase whose result is valid text wins. Raises EnvelopeError."""
    passphrases = _passphrases(ring)
    found = recognise(ciphertext)
    if found == "smsgate":
        return _first_that_opens(passphrases, ciphertext, smsgate_decrypt, "SMSGate")
    if found == "unmarked" and unmarked is not None:
        if unmarked not in UNMARKED_FORMATS:
            raise ValueError(f"unmarked must be one of {UNMARKED_FORMATS}")
        return _first_that_opens(passphrases, ciphertext, httpsms_decrypt, "httpSMS")
    return KeyRing(passphrases).decrypt(ciphertext)


def open_data(ring: KeyRing | Iterable[str], ciphertext: str | bytes) -> bytes:
    """Open a data SMS's payload: smsgw1 seals the bytes; SMSGate's clients seal the payload's
    base64 text, so that is opened and decoded. httpSMS has no data messages. Raises EnvelopeError."""
    passphrases = _passphrases(ring)
    if recognise(ciphertext) != "smsgate":
        return KeyRing(passphrases).decrypt_bytes(ciphertext)
    payload = _first_that_opens(passphrases, ciphertext, smsgate_decrypt, "SMSGate").strip(_ASCII_SPACE)
    if not _BASE64.fullmatch(payload):
        raise EnvelopeError("not_base64", "the SMSGate data message opened, but its payload is not base64")
    return base64.b64decode(payload)
