"""The webhook service the gRPC API calls: validation (events, the SSRF guard), storage in
worker threads, and test pings sent at once through the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlmodel import Session

from gateway.errors import InvalidArgument
from gateway.types import utcnow
from gateway.webhooks.formats import Format
from gateway.webhooks.records import AttemptRecord, DeliveryRecord, DeliveryState, WebhookEvent, WebhookRecord
from gateway.webhooks.repository import WebhookRepository
from gateway.webhooks.signing import new_secret
from gateway.webhooks.ssrf import ForbiddenTarget, Policy, check_url
from gateway.webhooks.worker import WebhookWorker

__all__ = ["WebhookService", "parse_events"]

_EVENT_NAMES = ", ".join(str(e) for e in WebhookEvent)


def parse_events(names: Sequence[str]) -> tuple[WebhookEvent, ...]:
    """Distinct known event names, in the order given; InvalidArgument names the bad one."""
    if not names:
        raise InvalidArgument("events", f"at least one of: {_EVENT_NAMES}")
    out: list[WebhookEvent] = []
    for i, name in enumerate(names):
        try:
            event = WebhookEvent(name)
        except ValueError:
            raise InvalidArgument(f"events[{i}]", f"unknown event; one of: {_EVENT_NAMES}") from None
        if event not in out:
            out.append(event)
    return tuple(out)


class WebhookService:
    def __init__(self, repo: WebhookRepository, worker: WebhookWorker, policy: Policy) -> None:
        self.repo = repo
        self.worker = worker
        self.policy = policy

    async def create(
        self, owner_id: str, url: str, events: Sequence[str], device_id: str
    ) -> tuple[WebhookRecord, str]:
        """(webhook, secret); the secret is not stored anywhere the owner can read it again."""
        parsed = parse_events(events)
        if not url:
            raise InvalidArgument("url", "required")
        try:
            await check_url(url, self.policy)
        except ForbiddenTarget as exc:
            raise InvalidArgument("url", str(exc)) from None
        secret = new_secret()
        record = await asyncio.to_thread(self.repo.create, owner_id, url, parsed, device_id, secret, utcnow())
        return record, secret

    async def upsert_external(
        self, owner_id: str, external_id: str, url: str, event: WebhookEvent, device_id: str, fmt: Format,
        secret: Callable[[Session], str], now: datetime,
    ) -> WebhookRecord:
        """Create or replace the webhook known as `external_id` (SMSGate's API; the caller has
        checked the URL). `secret(s)` gives its signing secret in the storing transaction."""
        return await asyncio.to_thread(self.repo.upsert_external, owner_id, external_id, url, event, device_id, fmt, secret, now)

    async def delete_external(self, owner_id: str, external_id: str) -> bool:
        return await asyncio.to_thread(self.repo.delete_external, owner_id, external_id, utcnow())

    async def list(self, owner_id: str) -> list[WebhookRecord]:
        return await asyncio.to_thread(self.repo.list, owner_id)

    async def delete(self, owner_id: str, webhook_id: str) -> None:
        await asyncio.to_thread(self.repo.delete, owner_id, webhook_id, utcnow())

    async def enable(self, owner_id: str, webhook_id: str) -> WebhookRecord:
        record = await asyncio.to_thread(self.repo.enable, owner_id, webhook_id, utcnow())
        self.worker.wake()
        return record

    async def rotate(self, owner_id: str, webhook_id: str) -> tuple[WebhookRecord, str]:
        secret = new_secret()
        return await asyncio.to_thread(self.repo.rotate, owner_id, webhook_id, secret, utcnow()), secret

    async def test(self, owner_id: str, webhook_id: str) -> AttemptRecord:
        """A system:ping, sent now and once; the attempt is logged like any other."""
        claim = await asyncio.to_thread(self.repo.create_ping, owner_id, webhook_id, utcnow())
        # Shielded: a caller that gives up early still leaves the attempt sent and recorded.
        return await asyncio.shield(self.worker.attempt(claim))

    async def deliveries(
        self, owner_id: str, webhook_id: str, *, state: DeliveryState | None, limit: int, before_id: str | None
    ) -> list[DeliveryRecord]:
        return await asyncio.to_thread(
            self.repo.deliveries, owner_id, webhook_id, state=state, limit=limit, before_id=before_id
        )

    async def replay(self, owner_id: str, delivery_id: str) -> DeliveryRecord:
        record = await asyncio.to_thread(self.repo.replay, owner_id, delivery_id, utcnow())
        self.worker.wake()
        return record

    async def prune(self, retention: float) -> int:
        """Drop finished deliveries older than `retention` seconds."""
        return await asyncio.to_thread(self.repo.prune, utcnow() - timedelta(seconds=retention))
