"""A wake-up push (PhoneAgent.wake) makes a phone that is away connect at once, skipping its
reconnect backoff (docs/push.md). On trio's virtual clock: nothing waits for real."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from smsgw_agent import Backoff, ModemOptions, PhoneAgent, SimulatedModem
from smsgw_agent import agent as agent_module

_LONG = 1000.0  # every backoff delay


def _refusing(attempts: list[float]) -> Any:
    class _Refused:
        async def __aenter__(self) -> Any:
            attempts.append(trio.current_time())
            raise InvalidStatus(Response(503, "Service Unavailable", Headers({})))

        async def __aexit__(self, *exc: object) -> None:
            return None

    return lambda *args, **kwargs: _Refused()


@pytest.mark.trio
@pytest.mark.parametrize("woken", [True, False])
async def test_a_wake_cuts_the_backoff_short(autojump_clock: object, monkeypatch: pytest.MonkeyPatch, woken: bool) -> None:
    attempts: list[float] = []
    monkeypatch.setattr(agent_module, "ws_connect", _refusing(attempts))
    phone = PhoneAgent("ws://127.0.0.1:1/device/v1", token="t", modem=SimulatedModem(ModemOptions()),
                       backoff=Backoff(first_max=_LONG, base=_LONG, cap=_LONG, jitter=0.0, rng=random.Random(0)),
                       push_token="tok")
    assert Backoff(first_max=_LONG, rng=random.Random(0)).next_delay() > 100  # the seeded first delay is long
    async with trio.open_nursery() as nursery:
        nursery.start_soon(phone.run)
        await trio.sleep(10)  # the first attempt failed; the phone waits out its backoff
        assert len(attempts) == 1
        if woken:
            phone.wake()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert len(attempts) == (2 if woken else 1)
    assert phone.wakes == (1 if woken else 0)
