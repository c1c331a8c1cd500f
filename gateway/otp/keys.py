"""The OTP key: codes are kept as HMACs under it (six digits under a plain hash are a million
tries away), and the SMS that carries a code is stored sealed under it, so a database alone
reveals no code. The bridge opens the SMS when it hands it to a phone (docs/otp.md, "Keys").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.auth.tokens import load_or_create_secret
from gateway.config import OtpSettings

__all__ = ["OtpKeys", "SEALED_PREFIX", "new_code", "load_keys", "opened_otp", "KEY_FILE"]

KEY_FILE = "otp.secret"
SEALED_PREFIX = "otp1:"  # a message text sealed by `OtpKeys.seal`
_NONCE = 12


def new_code(length: int) -> str:
    """`length` decimal digits from the OS's CSPRNG (leading zeros included)."""
    return "".join(str(secrets.randbelow(10)) for _ in range(length))


class OtpKeys:
    def __init__(self, secret: str) -> None:
        root = secret.encode()
        self._mac = hmac.new(root, b"smsgw otp code hmac", hashlib.sha256).digest()
        self._seal = AESGCM(hmac.new(root, b"smsgw otp sms seal", hashlib.sha256).digest())

    def code_hash(self, verification_id: str, code: str) -> str:
        """The code as stored: HMAC-SHA256 of the verification id and the code (hex)."""
        return hmac.new(self._mac, f"{verification_id}:{code}".encode(), hashlib.sha256).hexdigest()

    def matches(self, verification_id: str, code: str, stored: str) -> bool:
        """Constant time in the code: the HMAC is computed whatever the code, then compared
        with `hmac.compare_digest`."""
        return hmac.compare_digest(self.code_hash(verification_id, code).encode(), stored.encode())

    def seal(self, text: str, number: str) -> str:
        """Sealed for `number` alone (the associated data): the same ciphertext sent to any other
        number does not open."""
        nonce = os.urandom(_NONCE)
        return SEALED_PREFIX + base64.b64encode(nonce + self._seal.encrypt(nonce, text.encode(), number.encode())).decode()

    def open(self, sealed: str, number: str) -> str | None:
        """The SMS text, or None when this key did not seal it for `number`."""
        try:
            raw = base64.b64decode(sealed.removeprefix(SEALED_PREFIX), validate=True)
            return self._seal.decrypt(raw[:_NONCE], raw[_NONCE:], number.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            return None


def opened_otp(keys: OtpKeys | None, sealed: str, numbers: tuple[str, ...]) -> tuple[str, bool]:
    """(text, is_encrypted) to hand a phone for a sealed OTP SMS to `numbers`. It opens only
    for the one number it was sealed for. Otherwise (no key here, another key, other numbers)
    the sealed text goes as an encrypted message no phone can open: it fails `decrypt_failed`
    and the verification shows the failed delivery, instead of a user receiving ciphertext, or
    a code reaching a number it was not made for."""
    text = keys.open(sealed, numbers[0]) if keys is not None and len(numbers) == 1 else None
    return (text, False) if text is not None else (sealed, True)


def load_keys(settings: OtpSettings, data_dir: Path, *, create: bool = True) -> OtpKeys | None:
    """`otp.secret`, else DATA_DIR/otp.secret (made when `create`; None when absent)."""
    if settings.secret:
        return OtpKeys(settings.secret)
    path = data_dir / KEY_FILE
    if not create and not path.exists():
        return None
    return OtpKeys(load_or_create_secret(path))
