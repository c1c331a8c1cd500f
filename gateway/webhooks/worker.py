"""The delivery worker (asyncio): claim what is due, send it with bounded concurrency,
record each result, sleep until the next delivery is due or a writer signals new events.

`deliver_due` is one round and takes its time from `clock`, so a test can walk the whole
retry schedule (about 75 hours) with a fake clock and a real receiver.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from gateway.config import WebhookSettings
from gateway.metrics import GatewayMetrics
from gateway.types import utcnow
from gateway.webhooks.records import AttemptRecord
from gateway.webhooks.outbox import ENQUEUED
from gateway.webhooks.repository import Claim, WebhookRepository
from gateway.webhooks.sender import WebhookSender

__all__ = ["WebhookWorker"]

log = logging.getLogger(__name__)

_IDLE = 30.0  # look again at least this often, in case a signal was missed
_RECHECK = 0.05


class WebhookWorker:
    def __init__(
        self,
        repo: WebhookRepository,
        sender: WebhookSender,
        settings: WebhookSettings,
        metrics: GatewayMetrics | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.repo = repo
        self.sender = sender
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New deliveries may be due (call on the worker's loop)."""
        self._wake.set()

    def wake_if_enqueued(self) -> None:
        """The bus's "events were logged": worth a round only if some were for a webhook."""
        if ENQUEUED.is_set():
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled: keep up to `concurrency` attempts in flight, claiming more as slots
        free up, so one slow receiver never holds up the others. A failing database is
        logged and retried, never fatal."""
        in_flight: set[asyncio.Task[AttemptRecord | None]] = set()
        per_webhook: Counter[str] = Counter()
        share = max(1, self.settings.concurrency // 4)  # one receiver's backlog leaves room for the others

        def done(task: asyncio.Task[AttemptRecord | None], webhook_id: str) -> None:
            in_flight.discard(task)
            per_webhook[webhook_id] -= 1
            self._wake.set()

        try:
            while True:
                self._wake.clear()
                wait = _IDLE
                free = self.settings.concurrency - len(in_flight)
                if free <= 0:  # saturated: the next finished attempt wakes us
                    await self._wake.wait()
                    continue
                try:
                    busy = [w for w, n in per_webhook.items() if n >= share]
                    ENQUEUED.clear()  # before the claim: what commits later sets it again
                    claims = await asyncio.to_thread(self.repo.claim_due, self.clock(), free, busy=busy)
                    for claim in claims:
                        task = asyncio.create_task(self._attempt_logged(claim))
                        in_flight.add(task)
                        per_webhook[claim.webhook_id] += 1
                        task.add_done_callback(functools.partial(done, webhook_id=claim.webhook_id))
                    if claims and len(claims) == free:
                        continue  # maybe more are due: claim again once a slot is free
                    due = await asyncio.to_thread(self.repo.next_due)
                    if due is not None:
                        wait = min(_IDLE, max(0.0, (due - self.clock()).total_seconds()))
                        if not claims:
                            wait = max(wait, _RECHECK)  # due but not claimable (another worker holds it)
                except Exception:
                    log.exception("webhook delivery round failed; will retry")
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                    except TimeoutError:
                        pass
        finally:
            for task in in_flight:
                task.cancel()

    async def _attempt_logged(self, claim: Claim) -> AttemptRecord | None:
        try:
            return await self.attempt(claim)
        except Exception:
            # The claim's lease runs out and the delivery is tried again (same webhook-id).
            log.exception("webhook delivery %s: attempt could not be recorded", claim.delivery_id)
            return None

    async def deliver_due(self) -> int:
        """One round: send everything due now, `concurrency` at a time, and wait for the
        results; returns how many were sent (the fake-clock tests drive this)."""
        sent = 0
        limit = self.settings.concurrency
        while True:
            claims = await asyncio.to_thread(self.repo.claim_due, self.clock(), limit)
            if not claims:
                return sent
            async with asyncio.TaskGroup() as group:
                for claim in claims:
                    group.create_task(self.attempt(claim))
            sent += len(claims)
            if len(claims) < limit:
                return sent

    async def attempt(self, claim: Claim) -> AttemptRecord:
        """One attempt of a claimed delivery, sent and recorded."""
        started = self.clock()
        outcome, latency_ms = await self.sender.send(claim, started)
        recorded = await asyncio.to_thread(self.repo.record, claim, outcome, latency_ms, self.clock())
        if self.metrics is not None:
            self.metrics.webhook_attempts.labels(outcome.verdict.value).inc()
            self.metrics.webhook_latency.observe(latency_ms / 1000)
            if recorded.webhook_changed:
                self.metrics.webhook_state_changes.labels(recorded.webhook_state.name.lower()).inc()
        if outcome.error:
            log.info(
                "webhook %s delivery %s attempt %d: %s", claim.webhook_id, claim.delivery_id, claim.attempt, outcome.error
            )
        if recorded.webhook_changed:
            log.warning("webhook %s is now %s", claim.webhook_id, recorded.webhook_state.name)
        return AttemptRecord(claim.delivery_id, claim.attempt, started, outcome.status_code, latency_ms, outcome.error)
