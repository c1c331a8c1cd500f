"""gateway.api.convert.timestamp computes what Timestamp.FromDatetime does (naive = UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.convert import timestamp

_ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))])


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)), _ZONES)
def test_timestamp_matches_from_datetime(t: datetime, zone: timezone | None) -> None:
    t = t.replace(tzinfo=zone)
    expected = Timestamp()
    expected.FromDatetime(t if t.tzinfo else t.replace(tzinfo=UTC))
    assert timestamp(t) == expected


def test_none_stays_none() -> None:
    assert timestamp(None) is None
