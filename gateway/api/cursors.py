"""Cursors shared by the list and watch RPCs: page tokens over ULIDs, and the loop that follows
the event log (WatchMessages, WatchInbound) from a resumable event id: from the ring of recent
events when it covers the cursor, else from storage."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from gateway.errors import InvalidArgument, Unavailable
from gateway.events.ring import EventRing
from gateway.messages.service import EventFeed

__all__ = [
    "PAGE_MAX", "WATCH_BATCH", "page_limit", "encode_page_token", "decode_page_token", "encode_id_token",
    "decode_id_token", "start_cursor", "announce_start", "follow", "WATCH_START_KEY",
]

PAGE_DEFAULT, PAGE_MAX = 50, 500
WATCH_BATCH = 500
_MAX_EVENT_ID = 2**63 - 1  # event ids are SQL BIGINTs
# What a token may carry: a ULID in Crockford base32 as `str(ULID())` writes it (the first
# character at most 7: 128 bits), or a positive decimal id. `str.isalnum` and `int` also take
# any Unicode letter or digit, so the alphabets are spelled out.
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_DECIMAL = re.compile(r"[1-9][0-9]{0,18}")
_NOT_A_TOKEN = "not a token from next_page_token"
# The initial-metadata key naming the event id a watch starts after (smsgw_client's
# WATCH_START_KEY: the client resumes from it when cut off before the first event).
WATCH_START_KEY = "smsgw-watch-after"
# Safety net only: watchers are woken after each ring refill (or by the bus); this bounds a
# missed wake-up.
_WATCH_POLL = 1.0


class _Event(Protocol):
    @property
    def id(self) -> int: ...


E = TypeVar("E", bound=_Event)


def page_limit(page_size: int) -> int:
    """The rows a page holds: `page_size`, 0 = the default; more than PAGE_MAX is refused."""
    if page_size > PAGE_MAX:
        raise InvalidArgument("page_size", f"at most {PAGE_MAX}")
    return page_size or PAGE_DEFAULT


def encode_page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def _decode(token: str, alphabet: re.Pattern[str]) -> str:
    """The value inside `token`, which must be exactly what `encode_page_token` writes for a
    value in `alphabet`: urlsafe_b64decode alone skips characters outside base64's alphabet,
    so the token is re-encoded and compared. Never raises anything but InvalidArgument."""
    if not token.isascii() or len(token) > 64:
        raise InvalidArgument("page_token", _NOT_A_TOKEN)
    try:
        value = base64.urlsafe_b64decode(token).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError
        raise InvalidArgument("page_token", _NOT_A_TOKEN) from None
    if not alphabet.fullmatch(value) or encode_page_token(value) != token:
        raise InvalidArgument("page_token", _NOT_A_TOKEN)
    return value


def decode_page_token(token: str) -> str:
    """The ULID a page token continues below; anything else is INVALID_ARGUMENT on page_token."""
    return _decode(token, _ULID)


def encode_id_token(last_id: int) -> str:
    """A page token over a positive integer id (the audit log)."""
    return encode_page_token(str(last_id))


def decode_id_token(token: str) -> int:
    """The integer id (1..2**63-1, a BIGINT) an `encode_id_token` token carries; anything else is
    INVALID_ARGUMENT on page_token."""
    value = int(_decode(token, _DECIMAL))
    if value > _MAX_EVENT_ID:
        raise InvalidArgument("page_token", _NOT_A_TOKEN)
    return value


def start_cursor(has_after: bool, after_event_id: int) -> int | None:
    """A watch's start: after `after_event_id` when given (0 = from the start), else None
    (from the current end of the log)."""
    if not has_after:
        return None
    if after_event_id > _MAX_EVENT_ID:
        raise InvalidArgument("after_event_id", "larger than any event id")
    return after_event_id


async def announce_start(
    context: grpc.aio.ServicerContext[Any, Any], cursor: int | None, last_event_id: Callable[[], Awaitable[int]]
) -> int:
    """Fix a watch's start (None = the current end of the log) and send it to the client as
    initial metadata before any event: a watch "from now" cut off before its first event then
    resumes from here, not from a later "now" that would skip what was logged in between."""
    start = await last_event_id() if cursor is None else cursor
    await context.send_initial_metadata(((WATCH_START_KEY, str(start)),))
    return start


async def follow(
    feed: EventFeed,
    cursor: int,
    last_event_id: Callable[[], Awaitable[int]],
    read: Callable[[int, int], Awaitable[list[E]]],
    from_ring: Callable[[EventRing, int], tuple[list[E], int] | None],
) -> AsyncIterator[E]:
    """Yield events after `cursor` (fixed by `announce_start`) as they are logged, for the life
    of the stream. `from_ring(ring, after)` returns at most WATCH_BATCH matching events from
    the feed's ring with the ring's last id, or None when the ring does not reach back to
    `after`; then `read(after, upto)` returns them from storage, oldest first.
    Ends with UNAVAILABLE when the server shuts down, so the client resumes from its cursor.
    """
    while not feed.closed:
        waiter = feed.waiter()
        ring = feed.ring
        served = from_ring(ring, cursor) if ring is not None else None
        if served is not None:
            events, bound = served
        else:
            # Storage reads up to a bound known before the read (the ring's last id: every
            # event up to it was committed; without a ring, the newest id now), so that when
            # the batch is not full everything up to it was seen and a filtered stream does
            # not rescan non-matching events. Event ids commit in order with one writer
            # (SQLite, `smsgw serve`); see gateway.events.tail.
            bound = ring.last_id if ring is not None else await last_event_id()
            events = await read(cursor, bound)
        for e in events:
            yield e
            cursor = e.id
        if len(events) < WATCH_BATCH:
            cursor = max(cursor, bound)
            await feed.wait(waiter, _WATCH_POLL)
    raise Unavailable("server shutting down; resume with after_event_id")
