"""Page tokens (issue 14, item 10): only the codec's alphabet is accepted. A token that is not
exactly what `next_page_token` writes is INVALID_ARGUMENT on page_token, never a crash and never
a query with a made-up cursor; every token the server writes round-trips."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from ulid import ULID

from gateway.api.cursors import decode_id_token, decode_page_token, encode_id_token, encode_page_token
from gateway.errors import InvalidArgument

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ulids = st.builds(lambda n: str(ULID.from_int(n)), st.integers(0, 2**128 - 1))


def _refused(decode, token: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as caught:
        decode(token)
    assert [f for f, _ in caught.value.violations] == ["page_token"]


@given(ulids)
def test_ulid_tokens_round_trip_and_their_lower_case_copies_do_not(value: str) -> None:
    assert decode_page_token(encode_page_token(value)) == value
    if value != value.lower():
        _refused(decode_page_token, encode_page_token(value.lower()))


@given(st.integers(1, 2**63 - 1))
def test_id_tokens_round_trip_and_padded_copies_do_not(value: int) -> None:
    assert decode_id_token(encode_id_token(value)) == value
    for padded in (f"0{value}", f"+{value}", f" {value}"):
        _refused(decode_id_token, encode_page_token(padded))


def _is_ulid(value: str) -> bool:
    return len(value) == 26 and value[0] in "01234567" and all(c in CROCKFORD for c in value)


@given(st.text(min_size=26, max_size=26))
@example("é" * 26)  # Unicode letters: str.isalnum() took them
@example("abcdefghjkmnpqrstvwxyz0123")  # lower case is not what the server writes
@example("0123456789ABCDEFGHIJKLMNOP")  # I, L, O, U are not in Crockford's alphabet
@example("8" + "0" * 25)  # beyond 128 bits
def test_a_value_outside_the_ulid_alphabet_is_refused(value: str) -> None:
    token = base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode()
    if _is_ulid(value):
        assert decode_page_token(token) == value
    else:
        _refused(decode_page_token, token)


@given(st.text(max_size=80))
@example("MDFKM0U4NlBZMEVWMlhCWjVOMEc2QzRNN1k=")  # a valid ULID token ...
@example("MDFKM0U4NlBZMEVWMlhCWjVOMEc2QzRNN1k")  # ... without its padding
@example("MDFKM0U4NlBZMEVWMl!hCWjVOMEc2QzRNN1k=")  # ... with a character b64decode would skip
@example("ＭＤＦＫ")  # full-width letters
def test_any_token_is_a_ulid_or_invalid_argument_never_a_crash(token: str) -> None:
    try:
        value = decode_page_token(token)
    except InvalidArgument as exc:
        assert [f for f, _ in exc.violations] == ["page_token"]
    else:
        assert _is_ulid(value) and encode_page_token(value) == token


@given(st.text(max_size=40))
@example("١٢٣")  # Arabic-Indic digits: int() took them
@example(" 12")
@example("+12")
@example("1_000")
@example("0")
@example("012")
@example(str(2**63))
def test_an_id_token_outside_the_decimal_alphabet_is_refused(value: str) -> None:
    token = base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode()
    canonical = value.isascii() and value.isdigit() and not value.startswith("0") and 0 < int(value) < 2**63
    if canonical:
        assert decode_id_token(token) == int(value)
    else:
        _refused(decode_id_token, token)
    # And the raw text as a token: a value or INVALID_ARGUMENT, nothing else.
    try:
        decode_id_token(value)
    except InvalidArgument as exc:
        assert [f for f, _ in exc.violations] == ["page_token"]
