"""The history checker of RELIABILITY 1: judges a run from the event log and the phones' modems."""

from __future__ import annotations

from collections import Counter, defaultdict

from smsgw.v1 import common_pb2
from smsgw_client import Client

from gateway.types import State, may_move

__all__ = ["event_history", "check_history"]


def event_history(client: Client, message_ids: set[str], limit: float = 30.0) -> dict[tuple[str, int], list[int]]:
    """Every (message, recipient) state sequence from the event log, read from event 0."""
    history: dict[tuple[str, int], list[int]] = defaultdict(list)
    expected_final = len(message_ids)
    finals: set[tuple[str, int]] = set()
    stream = client.watch_messages(after_event_id=0, timeout=limit)
    try:
        for event in stream:
            if event.message_id not in message_ids:
                continue
            key = (event.message_id, event.recipient_index)
            history[key].append(event.state)
            if event.state == common_pb2.DELIVERED:
                finals.add(key)
            if len(finals) == expected_final:
                break
    finally:
        stream.close()
    return history


def check_history(history: dict[tuple[str, int], list[int]], sent: Counter[tuple[str, int]]) -> list[str]:
    """Problems found: states moving backwards, a DELIVERED seen twice or never, a recipient
    sent by the modems more or less than once."""
    problems = []
    for key, states in history.items():
        for old, new in zip(states, states[1:], strict=False):
            if not may_move(State(old), State(new)):
                problems.append(f"{key}: {State(old).name} -> {State(new).name}")
        if states.count(common_pb2.DELIVERED) != 1:
            problems.append(f"{key}: DELIVERED {states.count(common_pb2.DELIVERED)} times")
        if sent[key] != 1:
            problems.append(f"{key}: sent {sent[key]} times by the modems")
    return problems
