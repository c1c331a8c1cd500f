"""Following messages on WatchMessages until they end (the end-to-end tests' common step)."""

from __future__ import annotations

from smsgw.v1 import common_pb2
from smsgw_client import Client

__all__ = ["FINAL", "watch_until_final"]

FINAL = {common_pb2.DELIVERED, common_pb2.FAILED, common_pb2.EXPIRED, common_pb2.CANCELLED}


def watch_until_final(client: Client, ids: set[str], after: int | None, limit: float) -> dict[str, list[int]]:
    """Each message's recipient-0 state history from the stream, until all are final."""
    history: dict[str, list[int]] = {i: [] for i in ids}
    done: set[str] = set()
    stream = client.watch_messages(after_event_id=after, timeout=limit)
    try:
        for event in stream:
            if event.message_id in ids:
                history[event.message_id].append(event.state)
                if event.message_state in FINAL:
                    done.add(event.message_id)
                if done == ids:
                    break
    finally:
        stream.close()
    return history
