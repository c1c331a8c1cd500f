"""SMS segment counting (3GPP TS 23.038): GSM-7 with its extension table, else UCS-2.

The API rejects what no phone could send, so the server counts parts the same way
the phone's SmsManager.divideMessage does. It lives in the client package because three
parties count: the server (plain texts), a client checking a text before it seals it, and a
phone counting the plaintext of an end-to-end encrypted message (the server cannot).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Encoding", "SegmentCount", "count_segments"]

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7 = _GSM7_BASIC | _GSM7_EXTENSION


class Encoding(StrEnum):
    GSM_7 = "GSM_7"
    UCS_2 = "UCS_2"
    DATA = "DATA"


@dataclass(frozen=True, slots=True)
class SegmentCount:
    encoding: Encoding
    parts: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2, bytes for data


def count_segments(text: str) -> SegmentCount:
    """Parts needed for `text`: 160/153 septets in GSM-7, 70/67 UTF-16 units in UCS-2."""
    # Set operations run in C: a bulk call counts a thousand texts (issue 7).
    if _GSM7.issuperset(text):
        units = len(text) + sum(text.count(c) for c in _GSM7_EXTENSION.intersection(text))
        single, multi, encoding = 160, 153, Encoding.GSM_7
        # An escape + extension char pair must not straddle a part boundary.
        if units > single:
            parts, used = 1, 0
            for c in text:
                width = 2 if c in _GSM7_EXTENSION else 1
                if used + width > multi:
                    parts, used = parts + 1, 0
                used += width
            return SegmentCount(encoding, parts, units)
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, Encoding.UCS_2
        if units > single:
            # Surrogate pairs are not split across parts.
            parts, used = 1, 0
            for c in text:
                width = 2 if ord(c) > 0xFFFF else 1
                if used + width > multi:
                    parts, used = parts + 1, 0
                used += width
            return SegmentCount(encoding, parts, units)
    return SegmentCount(encoding, 1 if units <= single else 0, units)
