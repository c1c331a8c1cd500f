"""smsgw.v1.MessageService: parse, call the message service, convert."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from smsgw.v1 import messages_pb2, messages_pb2_grpc

from gateway import logs
from gateway.api.convert import event_to_pb, message_to_pb
from gateway.api.cursors import (
    PAGE_MAX,
    WATCH_BATCH,
    decode_page_token,
    encode_page_token,
    announce_start,
    follow,
    page_limit,
    start_cursor,
)
from gateway.api.interceptors import current_owner, status_of
from gateway.api.offload import run_big
from gateway.api.validation import (
    Abandoned,
    in_item,
    parse_send_many,
    parse_send_request,
    require,
    timestamp_field,
)
from gateway.config import LimitsSettings
from gateway.errors import InvalidArgument
from gateway.events.ring import EventRing
from gateway.messages.records import EventRecord, MessageFilter, NewMessage, SendOutcome
from gateway.messages.service import EventFeed, MessageService
from gateway.types import State, utcnow

__all__ = ["MessageServicer"]

_WATCH_MAX_IDS = 1000
_INLINE_RECIPIENTS = 16
"""Calls with up to this many recipients are validated and converted on the event loop (each
E.164 check costs ~22 µs: at most ~0.4 ms); bigger ones in a worker thread, whose hop (36–76
µs) is then the smaller cost, so a 1.4 MB SendMessages never stalls the RPCs sharing the loop."""

_NEVER_STOPPED = threading.Event()
"""The `stop` of a call run inline: it ends before anything could set it (saves an Event,
and its Condition and lock, per SendMessage)."""

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


async def _off_loop(recipients: int, fn: Callable[[threading.Event], T]) -> T:
    """`fn(stop)` inline for a small call, else in the worker thread (see _INLINE_RECIPIENTS).
    When the call is cancelled (the client gave up, its deadline passed) `stop` is set, so a
    long `fn` that checks it stops instead of holding the worker for seconds."""
    if recipients <= _INLINE_RECIPIENTS:
        return fn(_NEVER_STOPPED)
    stop = threading.Event()
    try:
        return await run_big(fn, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


def _recipients(request: messages_pb2.SendMessagesRequest) -> int:
    """The work of a SendMessages call, counted cheaply: past a few items it is big anyway."""
    items = request.messages
    if len(items) > _INLINE_RECIPIENTS:
        return len(items)
    return sum(len(item.phone_numbers) for item in items)


class MessageServicer(messages_pb2_grpc.MessageServiceServicer):
    def __init__(self, service: MessageService, feed: EventFeed, limits: LimitsSettings) -> None:
        self.service = service
        self.feed = feed
        self.limits = limits

    async def SendMessage(self, request: messages_pb2.SendMessageRequest, context: Context) -> messages_pb2.Message:
        work = len(request.phone_numbers)
        now = utcnow()
        new = await _off_loop(work, lambda _: parse_send_request(request, self.limits, now))
        record, _ = await self.service.send(current_owner(), new)
        logs.message_id.set(record.id)  # on what this call logs from here on
        return await _off_loop(work, lambda _: message_to_pb(record))

    async def SendMessages(
        self, request: messages_pb2.SendMessagesRequest, context: Context
    ) -> messages_pb2.SendMessagesResponse:
        """Bad items are answered in place; the valid ones go to storage as one batch."""
        work = _recipients(request)
        now = utcnow()
        parsed = await _off_loop(work, lambda stop: parse_send_many(request, self.limits, now, stop))
        valid = [(i, new) for i, new in enumerate(parsed) if isinstance(new, NewMessage)]
        outcomes = await self.service.send_many(current_owner(), [new for _, new in valid])
        return await _off_loop(work, lambda stop: _send_many_response(parsed, valid, outcomes, stop))

    async def GetMessage(self, request: messages_pb2.GetMessageRequest, context: Context) -> messages_pb2.Message:
        require(request.id, "id")
        logs.message_id.set(request.id[:64])
        return message_to_pb(await self.service.get(current_owner(), request.id))

    async def ListMessages(
        self, request: messages_pb2.ListMessagesRequest, context: Context
    ) -> messages_pb2.ListMessagesResponse:
        limit = page_limit(request.page_size)
        before_id = decode_page_token(request.page_token) if request.page_token else None
        flt = _filter(request)
        records = await self.service.list(current_owner(), flt, limit=limit, before_id=before_id)
        token = encode_page_token(records[-1].id) if len(records) == limit else ""
        return messages_pb2.ListMessagesResponse(messages=[message_to_pb(r) for r in records], next_page_token=token)

    async def ExportMessages(
        self, request: messages_pb2.ExportMessagesRequest, context: Context
    ) -> AsyncIterator[messages_pb2.Message]:
        """Every matching message, oldest first, read page by page (bounded memory)."""
        owner, flt = current_owner(), _filter(request)
        after_id = ""  # below every ULID
        while True:
            records = await self.service.list(owner, flt, limit=PAGE_MAX, after_id=after_id)
            for record in records:
                yield message_to_pb(record)
            if len(records) < PAGE_MAX:
                return
            after_id = records[-1].id

    async def CancelMessage(self, request: messages_pb2.CancelMessageRequest, context: Context) -> messages_pb2.Message:
        require(request.id, "id")
        logs.message_id.set(request.id[:64])
        return message_to_pb(await self.service.cancel(current_owner(), request.id))

    async def RescheduleMessage(
        self, request: messages_pb2.RescheduleMessageRequest, context: Context
    ) -> messages_pb2.Message:
        require(request.id, "id")
        bad: list[tuple[str, str]] = []
        at = timestamp_field(request.schedule_at, "schedule_at", bad) if request.HasField("schedule_at") else None
        now = utcnow()
        if at is not None and at > now + timedelta(seconds=self.limits.max_schedule_seconds):
            bad.append(("schedule_at", f"at most {self.limits.max_schedule_seconds // 86400} days ahead"))
        InvalidArgument.raise_if_any(bad)
        record = await self.service.reschedule(current_owner(), request.id, at if at is not None and at > now else None)
        return message_to_pb(record)

    async def WatchMessages(
        self, request: messages_pb2.WatchMessagesRequest, context: Context
    ) -> AsyncIterator[messages_pb2.MessageEvent]:
        owner = current_owner()
        ids = list(request.message_ids)
        if len(ids) > _WATCH_MAX_IDS:
            raise InvalidArgument("message_ids", f"at most {_WATCH_MAX_IDS}; watch all and filter instead")
        cursor = await announce_start(
            context, start_cursor(request.HasField("after_event_id"), request.after_event_id), self.service.last_event_id
        )

        wanted = frozenset(ids)

        async def read(after: int, upto: int) -> list[EventRecord]:
            return await self.service.events_after(owner, after, limit=WATCH_BATCH, message_ids=ids, upto=upto)

        def from_ring(ring: EventRing, after: int) -> tuple[list[EventRecord], int] | None:
            return ring.message_events(owner, after, WATCH_BATCH, wanted)

        async for e in follow(self.feed, cursor, self.service.last_event_id, read, from_ring):
            yield event_to_pb(e)


def _send_many_response(
    parsed: list[NewMessage | InvalidArgument],
    valid: list[tuple[int, NewMessage]],
    outcomes: list[SendOutcome],
    stop: threading.Event,
) -> messages_pb2.SendMessagesResponse:
    """One result per item, in order: its parse error, or its stored message or storage error.
    Raises Abandoned once `stop` is set (the call was cancelled)."""
    results: list[messages_pb2.SendMessageResult | None] = []
    for item in parsed:
        if stop.is_set():
            raise Abandoned
        results.append(messages_pb2.SendMessageResult(error=status_of(item)) if isinstance(item, InvalidArgument) else None)
    for (i, _), outcome in zip(valid, outcomes, strict=True):
        if outcome.message is not None:
            results[i] = messages_pb2.SendMessageResult(message=message_to_pb(outcome.message), created=outcome.created)
        else:
            error = outcome.error
            assert error is not None, "an outcome is a message or an error"
            # Storage names its fields as for one message (`device_id`): put them in the item.
            results[i] = messages_pb2.SendMessageResult(
                error=status_of(in_item(error, i) if isinstance(error, InvalidArgument) else error)
            )
    return messages_pb2.SendMessagesResponse(results=results)


def _filter(request: messages_pb2.ListMessagesRequest | messages_pb2.ExportMessagesRequest) -> MessageFilter:
    bad: list[tuple[str, str]] = []
    if request.state and request.state not in State.__members__.values():
        bad.append(("state", "unknown state"))
    after = timestamp_field(request.created_after, "created_after", bad) if request.HasField("created_after") else None
    before = timestamp_field(request.created_before, "created_before", bad) if request.HasField("created_before") else None
    InvalidArgument.raise_if_any(bad)
    return MessageFilter(
        state=State(request.state) if request.state else None,
        device_id=request.device_id,
        created_after=after,
        created_before=before,
    )

