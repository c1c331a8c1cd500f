"""The inbound service the gRPC API calls: the repository's reads in worker threads.

Writes come from the bridge only (InboundRepository.store, then Ack, then a bus signal).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from gateway.inbound.records import InboundEventRecord, InboundRecord
from gateway.inbound.repository import InboundRepository

__all__ = ["InboundService"]


class InboundService:
    def __init__(self, repo: InboundRepository) -> None:
        self.repo = repo

    async def list(
        self,
        owner_id: str,
        device_id: str,
        received_after: datetime | None,
        received_before: datetime | None,
        *,
        limit: int,
        before_id: str | None = None,
    ) -> list[InboundRecord]:
        return await asyncio.to_thread(
            self.repo.list, owner_id, device_id, received_after, received_before, limit=limit, before_id=before_id
        )

    async def events_after(
        self, owner_id: str, after_id: int, *, limit: int, device_id: str = "", upto: int | None = None
    ) -> list[InboundEventRecord]:
        return await asyncio.to_thread(
            self.repo.events_after, owner_id, after_id, limit=limit, device_id=device_id, upto=upto
        )

    async def last_event_id(self) -> int:
        return await asyncio.to_thread(self.repo.last_event_id)
