"""smsgw.v1.InboundService: the SMS the owner's phones received, listed and watched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from smsgw.v1 import inbound_pb2, inbound_pb2_grpc

from gateway.api.convert import inbound_event_to_pb, inbound_to_pb
from gateway.api.cursors import (
    WATCH_BATCH,
    decode_page_token,
    encode_page_token,
    announce_start,
    follow,
    page_limit,
    start_cursor,
)
from gateway.api.interceptors import current_owner
from gateway.api.validation import timestamp_field
from gateway.errors import InvalidArgument
from gateway.events.ring import EventRing
from gateway.inbound.records import InboundEventRecord
from gateway.inbound.service import InboundService
from gateway.messages.service import EventFeed

__all__ = ["InboundServicer"]

_MAX_DEVICE_ID = 64  # device ids are ULIDs; anything longer cannot be one

Context = grpc.aio.ServicerContext[Any, Any]


class InboundServicer(inbound_pb2_grpc.InboundServiceServicer):
    def __init__(self, service: InboundService, feed: EventFeed) -> None:
        self.service = service
        self.feed = feed

    async def ListInbound(
        self, request: inbound_pb2.ListInboundRequest, context: Context
    ) -> inbound_pb2.ListInboundResponse:
        limit = page_limit(request.page_size)
        before_id = decode_page_token(request.page_token) if request.page_token else None
        bad: list[tuple[str, str]] = []
        _check_device_id(request.device_id, bad)
        after = timestamp_field(request.received_after, "received_after", bad) if request.HasField("received_after") else None
        before = (
            timestamp_field(request.received_before, "received_before", bad) if request.HasField("received_before") else None
        )
        if after is not None and before is not None and before <= after:
            bad.append(("received_before", "must be later than received_after"))
        InvalidArgument.raise_if_any(bad)
        records = await self.service.list(
            current_owner(), request.device_id, after, before, limit=limit, before_id=before_id
        )
        token = encode_page_token(records[-1].id) if len(records) == limit else ""
        return inbound_pb2.ListInboundResponse(messages=[inbound_to_pb(r) for r in records], next_page_token=token)

    async def WatchInbound(
        self, request: inbound_pb2.WatchInboundRequest, context: Context
    ) -> AsyncIterator[inbound_pb2.InboundEvent]:
        owner, device_id = current_owner(), request.device_id
        bad: list[tuple[str, str]] = []
        _check_device_id(device_id, bad)
        InvalidArgument.raise_if_any(bad)
        cursor = await announce_start(
            context, start_cursor(request.HasField("after_event_id"), request.after_event_id), self.service.last_event_id
        )

        async def read(after: int, upto: int) -> list[InboundEventRecord]:
            return await self.service.events_after(owner, after, limit=WATCH_BATCH, device_id=device_id, upto=upto)

        def from_ring(ring: EventRing, after: int) -> tuple[list[InboundEventRecord], int] | None:
            return ring.inbound_events(owner, after, WATCH_BATCH, device_id)

        async for e in follow(self.feed, cursor, self.service.last_event_id, read, from_ring):
            yield inbound_event_to_pb(e)


def _check_device_id(device_id: str, bad: list[tuple[str, str]]) -> None:
    """"" means every phone; another owner's or an unknown phone simply matches nothing."""
    if len(device_id) > _MAX_DEVICE_ID or not device_id.isprintable() or device_id != device_id.strip():
        bad.append(("device_id", "not a device id (see ListDevices)"))
