"""The bridge's catch-up for wake-ups lost on the bus (issue 16, `smsgw bridge` only).

A gateway stores a message, then tells the bridges on the PostgreSQL bus; a gateway killed
between the two, or a bridge whose listener was down, loses that wake-up, and the phone's
session would wait for the next one. So every bridge also follows the event log: twice a
second it reads the entries after the last it read, up to the largest id (event ids become
visible in id order: gateway/storage/event_log.py), and hands the sessions it holds what
concerns their phones (a message now PENDING for it, CANCELLED or EXPIRED), as the bus
would have. A wake-up that did arrive makes this one a round that finds nothing new.
"""

from __future__ import annotations

import logging

import trio

from device_bridge.session_task import BridgeContext

__all__ = ["follow_event_log", "INTERVAL"]

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds: the longest a lost wake-up delays a message


async def follow_event_log(ctx: BridgeContext, interval: float = INTERVAL) -> None:
    """Until cancelled."""
    after = await trio.to_thread.run_sync(ctx.messages.last_event_id)
    while True:
        await trio.sleep(interval)
        try:
            changes, after = await trio.to_thread.run_sync(ctx.messages.changes_for_phones, after)
        except Exception:
            log.exception("could not read the event log; will retry")
            continue
        here = ctx.registry.device_ids()
        queued: dict[str, set[str]] = {}
        for device_id, message_id in changes:
            if device_id in here:
                queued.setdefault(device_id, set()).add(message_id)
        if queued:
            ctx.registry.queued(queued)
