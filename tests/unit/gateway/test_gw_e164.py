"""check_e164 by a length table answers exactly what phonenumbers' parse + is_possible_number
answered (issue 15), word for word, for valid and invalid calling codes alike; and ordinary
numbers no longer pay for a parse."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api import e164
from gateway.api.validation import check_e164

CODES = sorted(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
NOT_CODES = sorted({f"{n}" for n in range(1, 1000)} - set(CODES))  # 1-3 digits that are no calling code
# Leading digits that national-prefix patterns look for (trunk 0, 8 in Russia and Belarus,
# 1 in the NANP, "15" after an Argentine area code, carrier codes).
HEADS = ["", "0", "00", "1", "8", "9", "15", "10", "01", "80", "0800", "9911"]


def reference(number: str) -> str | None:
    """The check as it was before the table: a full phonenumbers parse per number."""
    if not e164._SHAPE.fullmatch(number):
        return "must be E.164: '+' then 8 to 15 digits"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "not a phone number"
    if not phonenumbers.is_possible_number(parsed):
        return "not a possible number for its country code"
    return None


def test_every_code_and_length_answers_as_phonenumbers() -> None:
    """Each calling code x each national length the shape allows x each prefix-like head."""
    checked = 0
    for code in CODES:
        for length in range(0, 16 - len(code)):
            for head in HEADS:
                for fill in "25":
                    number = "+" + code + (head + fill * length)[:length]
                    assert check_e164(number) == reference(number), number
                    checked += 1
    assert checked > 20_000


numbers = st.one_of(
    st.builds(lambda c, d: "+" + c + d, st.sampled_from(CODES), st.from_regex(r"[0-9]{0,15}", fullmatch=True)),
    st.builds(
        lambda c, h, d: "+" + c + h + d,
        st.sampled_from(CODES), st.sampled_from(HEADS), st.from_regex(r"[0-9]{0,13}", fullmatch=True),
    ),
    st.builds(lambda c, d: "+" + c + d, st.sampled_from(NOT_CODES), st.from_regex(r"[0-9]{0,14}", fullmatch=True)),
    st.from_regex(r"\+?[0-9]{0,17}", fullmatch=True),
    st.text(max_size=20),
)


@given(numbers)
@settings(max_examples=500, database=None, deadline=None)
def test_random_numbers_answer_as_phonenumbers(number: str) -> None:
    assert check_e164(number) == reference(number)


@pytest.mark.parametrize(
    "number",
    ["+14155550123", "+447911123456", "+4930123456", "+79161234567", "+8613812345678", "+919812345678",
     "+5511912345678", "+5491123456789", "+2348031234567", "+33612345678", "+14155550", "+1415555012345"],
)
def test_ordinary_numbers_are_not_parsed(number: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table answers them; phonenumbers' parse is left for national prefixes."""
    expected = reference(number)

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(phonenumbers, "parse", no_parse)
    assert check_e164(number) == expected


def test_a_national_prefix_after_the_code_is_left_to_phonenumbers() -> None:
    """"+44 0 20..." is what a parse strips to a possible number: accepted, as before."""
    assert check_e164("+4402079460958") is None
    assert check_e164("+44020794609") == reference("+44020794609")
