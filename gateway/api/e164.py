"""E.164 recipients checked by a length table, not a parse per number.

The rule is phonenumbers' `parse(number)` + `is_possible_number`, unchanged: the national
number's length must be one of the country calling code's possible lengths (local-only
lengths included, as `is_possible_number` counts them). A full parse costs 20-50 µs, which
made validation the bulk of a 1,000 x 100 SendMessages (2-5 s, issue 15); the table, read
from phonenumbers' own metadata, costs about a microsecond.

The one place where a parse does more than measure is a national prefix (a trunk "0", a
carrier code) written after the country code, as in "+44 0 20...": phonenumbers strips it
when what remains has a possible length. A number whose national part starts with its
country's national-prefix pattern is therefore checked by phonenumbers itself, so the
answer is the same for every input (tests/unit/gateway/test_gw_e164.py compares them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, region_code_for_country_code

__all__ = ["check_e164", "check_e164_by_parse"]

SHAPE = "must be E.164: '+' then 8 to 15 digits"
NOT_A_NUMBER = "not a phone number"
NOT_POSSIBLE = "not a possible number for its country code"

_SHAPE = re.compile(r"\+[1-9][0-9]{7,14}")
_CODES = frozenset(str(cc) for cc in COUNTRY_CODE_TO_REGION_CODE)  # calling codes, 1 to 3 digits


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one country calling code accepts: national-number lengths, and the pattern of a
    national prefix that phonenumbers would try to strip (None: the country has none)."""

    lengths: frozenset[int]
    prefix: re.Pattern[str] | None


# Filled per calling code on first use: loading the metadata of all 215 codes at import
# costs ~130 ms, and a deployment sees a handful. Two threads building the same entry
# build equal ones.
_PLANS: dict[str, _Plan] = {}


def check_e164(number: str) -> str | None:
    """Why `number` is not a dialable E.164 number, or None when it is."""
    if not _SHAPE.fullmatch(number):
        return SHAPE
    # As phonenumbers does: the shortest leading 1-3 digits that are a calling code.
    if (code := number[1:2]) not in _CODES and (code := number[1:3]) not in _CODES:
        code = number[1:4]
        if code not in _CODES:
            return NOT_A_NUMBER
    plan = _PLANS.get(code) or _plan(code)
    national = number[1 + len(code):]
    if plan.prefix is not None:
        m = plan.prefix.match(national)
        if m is not None and (m.end() or m.lastindex is not None):
            return check_e164_by_parse(number)  # a prefix phonenumbers may strip: rare
    return None if len(national) in plan.lengths else NOT_POSSIBLE


def check_e164_by_parse(number: str) -> str | None:
    """The same rule by a full phonenumbers parse: the reference, and the rare path."""
    if not _SHAPE.fullmatch(number):
        return SHAPE
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return NOT_A_NUMBER
    if not phonenumbers.is_possible_number(parsed):
        return NOT_POSSIBLE
    return None


def _plan(code: str) -> _Plan:
    cc = int(code)
    meta = PhoneMetadata.metadata_for_region_or_calling_code(cc, region_code_for_country_code(cc))
    assert meta is not None, f"phonenumbers lists calling code {cc} without metadata"
    general = meta.general_desc
    prefix = meta.national_prefix_for_parsing
    plan = _Plan(
        lengths=frozenset(general.possible_length) | frozenset(general.possible_length_local_only),
        prefix=re.compile(prefix) if prefix else None,
    )
    _PLANS[code] = plan
    return plan
