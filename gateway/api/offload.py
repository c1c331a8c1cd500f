"""The one worker thread for CPU-heavy API work (issue 14, item 6): parsing, validating and
answering big requests, so the event loop that serves every RPC stays responsive.

One thread, not a pool: pure-Python work in several threads would take the GIL from the loop
several times as often; big calls queue here instead. `smsgw serve` also sets the GIL switch
interval to 1 ms, so the loop waits at most about that long while this thread runs Python.

The queue is bounded (MAX_BIG_CALLS): each queued call keeps its request (up to the message
size limit, its raw bytes or parsed objects) alive, so many clients' big calls must not pile up
without end; past the bound a call is refused RESOURCE_EXHAUSTED with a RetryInfo.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.errors import ResourceExhausted

__all__ = ["run_big", "MAX_BIG_CALLS", "BUSY_RETRY_AFTER"]

T = TypeVar("T")
_BIG = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smsgw-api-big")

MAX_BIG_CALLS = 8
"""Big calls queued or running at once; one more is refused. A few seconds of work at most
(a 1.4 MB SendMessages takes 0.1–5 s) and a few times the 4 MiB message limit held in memory."""
BUSY_RETRY_AFTER = 1.0
"""The RetryInfo delay of a refused big call, seconds: about one big call's time."""

_lock = threading.Lock()
_pending = 0


def _release(_: Future[Any]) -> None:
    global _pending
    with _lock:
        _pending -= 1


async def run_big(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the worker thread; a call cancelled meanwhile is dropped if not started.

    Raises:
        ResourceExhausted: MAX_BIG_CALLS calls are already queued or running (a slot is freed
            when its work ends, not when its caller stops waiting: a started call runs on).
    """
    global _pending
    with _lock:
        if _pending >= MAX_BIG_CALLS:
            raise ResourceExhausted(
                f"the server is busy with {MAX_BIG_CALLS} big requests; retry shortly",
                BUSY_RETRY_AFTER,
                subject="server:big_calls",
            )
        _pending += 1
    try:
        future = _BIG.submit(functools.partial(fn, *args))
    except BaseException:
        with _lock:
            _pending -= 1
        raise
    future.add_done_callback(_release)
    return await asyncio.wrap_future(future)
