"""The SSRF guard's address rules and URL checks (RELIABILITY 14), and what each HTTP answer
means for a delivery (RELIABILITY 12)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import WebhookSettings
from gateway.webhooks.schedule import Verdict, judge, parse_retry_after, retry_delay
from gateway.webhooks.ssrf import ForbiddenTarget, Policy, check_url, check_url_syntax, forbidden_reason

NOW = datetime(2030, 1, 1, tzinfo=UTC)
STRICT = Policy()


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.1.1",
     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
     "224.0.0.1", "100.100.100.200", "240.0.0.1", "2002:a9fe:a9fe::", "2002:7f00:1::", "fec0::1",
     "2001:0:4136:e378:8000:63bf:80ff:fffe"],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    """Also IPv4 inside IPv6 (mapped, 6to4, Teredo) and site-local IPv6."""
    assert forbidden_reason(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(address) is None


@pytest.mark.parametrize(
    "url",
    ["http://example.com/hook", "ftp://example.com/", "https://", "https://user:pw@example.com/",
     "https://example.com/#x", "not a url", "https://example.com:99999/", "https://" + "a" * 3000 + ".com/",
     "https://93.184.215.14/a\tb", "https://93.184.215.14/a\nb", "https://93.184.215.14/a b", "https://exa\x7fmple.com/"],
)
def test_malformed_or_plain_urls_are_refused(url: str) -> None:
    """Also control characters, which urlsplit drops silently (the URL sent would differ)."""
    with pytest.raises(ForbiddenTarget):
        check_url_syntax(url, STRICT)


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest/meta-data/",
     "https://[::1]:8443/hook", "https://localhost/hook", "https://2130706433/", "https://0x7f.1/", "https://127.1/",
     "https://017700000001/", "https://[::ffff:7f00:1]/", "https://[2002:a9fe:a9fe::]/"],
)
def test_private_targets_and_names_resolving_to_loopback_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenTarget):
        asyncio.run(check_url(url, STRICT))
    asyncio.run(check_url(url, Policy(allow_private=True)))  # a private-mode server may allow them


def test_plain_http_only_when_allowed() -> None:
    with pytest.raises(ForbiddenTarget, match="https"):
        check_url_syntax("http://127.0.0.1/hook", Policy(allow_private=True))
    asyncio.run(check_url("http://127.0.0.1:8080/hook", Policy(allow_private=True, allow_http=True)))


def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(ForbiddenTarget, match="resolve"):
        asyncio.run(check_url("https://no-such-host.invalid/hook", STRICT))


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, Verdict.SUCCEEDED), (204, Verdict.SUCCEEDED), (299, Verdict.SUCCEEDED), (500, Verdict.RETRY),
     (502, Verdict.RETRY), (503, Verdict.RETRY), (504, Verdict.RETRY), (429, Verdict.RETRY), (410, Verdict.GONE),
     (400, Verdict.FINAL), (401, Verdict.FINAL), (404, Verdict.FINAL), (301, Verdict.FINAL), (302, Verdict.FINAL),
     (100, Verdict.FINAL)],
)
def test_verdict_of_each_answer(status: int, verdict: Verdict) -> None:
    assert judge(status, None, NOW).verdict is verdict


def test_retry_after_is_honoured_on_429_and_503_only() -> None:
    assert judge(429, "7", NOW).retry_after == 7
    assert judge(503, (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT"), NOW).retry_after == 90
    assert judge(500, "7", NOW).retry_after is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("²", NOW) is None and parse_retry_after("١٢", NOW) is None  # digits, not ASCII
    rng = random.Random(1)
    delays = WebhookSettings().retry_delays
    assert retry_delay(2, delays, 0.1, rng, retry_after=1200) == 1200  # later than the schedule's 5 min
    assert retry_delay(2, delays, 0.1, rng, retry_after=10 * 3600, retry_after_cap=3600) == 3600
    # Never sooner than the schedule: "Retry-After: 1" must not burn the 3 days in seconds.
    assert 270 <= retry_delay(2, delays, 0.1, rng, retry_after=1) <= 330  # type: ignore[operator]


def test_default_schedule_is_the_reliability_12_one() -> None:
    delays = WebhookSettings().retry_delays
    assert len(delays) + 1 == 10  # attempts
    assert delays[:3] == (5, 300, 1800)
    assert abs(sum(delays) / 3600 - 75.6) < 0.05


@given(st.integers(1, 9), st.randoms(use_true_random=False))
def test_delays_stay_within_the_jitter(attempt: int, rng: random.Random) -> None:
    delays = WebhookSettings().retry_delays
    delay = retry_delay(attempt, delays, 0.1, rng)
    assert delay is not None
    assert delays[attempt - 1] * 0.9 <= delay <= delays[attempt - 1] * 1.1
    assert retry_delay(len(delays) + 1, delays, 0.1, rng) is None


def test_the_client_knows_every_event_the_server_sends() -> None:
    from smsgw_client import WEBHOOK_EVENTS

    from gateway.webhooks.records import WebhookEvent

    assert WEBHOOK_EVENTS == tuple(str(e) for e in WebhookEvent)
