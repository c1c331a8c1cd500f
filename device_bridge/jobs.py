"""Waiting for a writer job on the bridge's trio loop (issue 15 item 6: one hand-off to the
writer and one back): the job's done-callback wakes the loop from the writer thread, instead
of a worker thread blocking on the job for it."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

import trio
import trio.testing

__all__ = ["wait_job"]

T = TypeVar("T")


async def wait_job(future: Future[T], *, abandon_on_cancel: bool = False) -> T:
    """The job's result (or its exception), once its transaction committed.

    Not cancellable, like `trio.to_thread.run_sync`: a job the writer took runs and commits
    anyway, and the caller must see what it stored (claims to send or requeue, receipts to
    Ack). `abandon_on_cancel`: the caller may stop waiting (the job still runs; what must
    follow it is the job's own done-callback), as a session's cleanup does at shutdown.
    Under a virtual clock (trio.testing.MockClock, the scheduler's tests) it waits in a
    worker thread instead: trio then counts the run as busy, where a wait on the job's own
    callback would look idle and let the clock jump past a job still being written.
    """
    if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=abandon_on_cancel)
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def finished(_: Future[T]) -> None:  # in the writer thread (or here, if already done)
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    future.add_done_callback(finished)
    with trio.CancelScope(shield=not abandon_on_cancel):
        await done.wait()
    return future.result()
