"""The one worker thread for CPU-heavy API work (issue 14, item 6): parsing, validating and
answering big requests, so the event loop that serves every RPC stays responsive.

One thread, not a pool: pure-Python work in several threads would take the GIL from the loop
several times as often; big calls queue here instead. `smsgw serve` also sets the GIL switch
interval to 1 ms, so the loop waits at most about that long while this thread runs Python.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_big"]

T = TypeVar("T")
_BIG = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smsgw-api-big")


async def run_big(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the worker thread; a call cancelled meanwhile is dropped if not started."""
    return await asyncio.get_running_loop().run_in_executor(_BIG, functools.partial(fn, *args))
