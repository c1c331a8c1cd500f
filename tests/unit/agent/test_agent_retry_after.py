"""A phone whose upgrade is refused with 503 + Retry-After (the bridge's admission limit during a
reconnect storm) waits at least that long before it tries again, whatever its own backoff says.
On trio's virtual clock: the gaps are virtual seconds, nothing waits for real."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from smsgw_agent import Backoff, ModemOptions, PhoneAgent, SimulatedModem
from smsgw_agent import agent as agent_module
from smsgw_agent.agent import BUG_CLOSE_CODES, MAX_RETRY_AFTER, retry_after_seconds


def _refusing(attempts: list[float], headers: dict[str, str], stop_after: int, agent: list[PhoneAgent]) -> Any:
    class _Refused:
        async def __aenter__(self) -> Any:
            attempts.append(trio.current_time())
            if len(attempts) >= stop_after:
                agent[0]._stopping = True
            raise InvalidStatus(Response(503, "Service Unavailable", Headers(headers)))

        async def __aexit__(self, *exc: object) -> None:
            return None

    return lambda *args, **kwargs: _Refused()


@pytest.mark.trio
@pytest.mark.parametrize(("headers", "least_gap"), [({"Retry-After": "4"}, 4.0), ({}, 0.0)])
async def test_the_next_attempt_waits_for_retry_after(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], least_gap: float
) -> None:
    attempts: list[float] = []
    agent: list[PhoneAgent] = []
    monkeypatch.setattr(agent_module, "ws_connect", _refusing(attempts, headers, 3, agent))
    phone = PhoneAgent("ws://127.0.0.1:1/device/v1", token="t", modem=SimulatedModem(ModemOptions()),
                       backoff=Backoff(scale=0.001))
    agent.append(phone)
    with trio.fail_after(600):
        await phone.run()
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
    assert len(gaps) == 2
    assert all(gap >= least_gap for gap in gaps)
    if not least_gap:
        assert all(gap < 1.0 for gap in gaps)  # the tiny backoff alone: the header made the difference


def test_retry_after_is_read_as_seconds_and_capped() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 5 ") == 5.0
    assert retry_after_seconds("100000") == MAX_RETRY_AFTER
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds("-1") is None


def _closing(attempts: list[float], code: int, stop_after: int, agent: list[PhoneAgent]) -> Any:
    """A bridge that takes the upgrade and closes the session with `code` at once."""

    class _Session:
        subprotocol = "smsgw.device.v1+proto"

        async def send(self, data: bytes) -> None:
            return None

        async def recv(self) -> bytes:
            raise ConnectionClosed(Close(code, "closed by the test"), None)

        async def aclose(self, code: int = 1000, reason: str = "") -> None:
            return None

    class _Connect:
        async def __aenter__(self) -> Any:
            attempts.append(trio.current_time())
            if len(attempts) >= stop_after:
                agent[0]._stopping = True
            return _Session()

        async def __aexit__(self, *exc: object) -> None:
            return None

    return lambda *args, **kwargs: _Connect()


@pytest.mark.trio
@pytest.mark.parametrize("code", [4000, 4001, 1011])
async def test_a_close_for_a_bug_in_the_app_waits_the_longest_step(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """4000/4001 say the app sent what the bridge never takes: reconnecting at the first step
    would replay it at once (docs/protocol.md "Close codes"); other closes keep the backoff."""
    attempts: list[float] = []
    agent: list[PhoneAgent] = []
    monkeypatch.setattr(agent_module, "ws_connect", _closing(attempts, code, 3, agent))
    backoff = Backoff(scale=0.001)
    phone = PhoneAgent("ws://127.0.0.1:1/device/v1", token="t", modem=SimulatedModem(ModemOptions()),
                       backoff=backoff)
    agent.append(phone)
    with trio.fail_after(600):
        await phone.run()
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
    assert len(gaps) == 2
    longest = backoff.cap * backoff.scale
    if code in BUG_CLOSE_CODES:
        assert all(gap >= longest for gap in gaps)
    else:
        assert all(gap < longest for gap in gaps)
