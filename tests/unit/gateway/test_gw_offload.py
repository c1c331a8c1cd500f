"""gateway.api.offload.run_big: at most MAX_BIG_CALLS big calls queued or running; one more
is refused RESOURCE_EXHAUSTED with a RetryInfo, so queued requests cannot pile up in memory."""

from __future__ import annotations

import asyncio
import threading

import pytest
from google.rpc import code_pb2, error_details_pb2

from gateway.api import offload
from gateway.api.interceptors import status_of
from gateway.errors import ResourceExhausted


def test_calls_past_the_bound_are_refused_with_retry_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "MAX_BIG_CALLS", 3, raising=False)
    gate = threading.Event()

    def work(n: int) -> int:
        gate.wait(10)
        return n

    async def scenario() -> None:
        calls = [asyncio.create_task(offload.run_big(work, n)) for n in range(3)]  # 1 running, 2 queued
        await asyncio.sleep(0.05)
        with pytest.raises(ResourceExhausted) as refused:
            await offload.run_big(work, 99)
        status = status_of(refused.value)
        assert status.code == code_pb2.RESOURCE_EXHAUSTED
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry) and retry.retry_delay.ToNanoseconds() > 0
        # A queued call its client gave up on frees its slot at once.
        calls[2].cancel()
        await asyncio.sleep(0.05)
        late = asyncio.create_task(offload.run_big(work, 3))
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*calls[:2], late) == [0, 1, 3]
        # All slots free again once the work is done.
        gate.clear()
        gate.set()
        assert await asyncio.gather(*(offload.run_big(work, n) for n in range(3))) == [0, 1, 2]

    asyncio.run(scenario())
    assert offload._pending == 0
