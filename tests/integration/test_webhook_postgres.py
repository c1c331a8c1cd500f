"""The webhook outbox on PostgreSQL (the scale-out engine): workers claiming at the same time
never take the same delivery (FOR UPDATE SKIP LOCKED), and results record as on SQLite."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from gateway.config import WebhookSettings
from gateway.storage.engine import Database
from gateway.webhooks.outbox import enqueue
from gateway.webhooks.records import DeliveryState, WebhookEvent
from gateway.webhooks.repository import Claim, WebhookRepository
from gateway.webhooks.schedule import Outcome, Verdict
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_concurrent_claims_take_each_delivery_once() -> None:
    with throwaway_database() as url:
        db = Database(url)
        try:
            db.migrate()
            owner = create_owner(db, "pg", T0)
            repo = WebhookRepository(db, WebhookSettings())
            hook = repo.create(owner, "https://example.com/hook", [WebhookEvent.SMS_RECEIVED], "", "whsec_" + "A" * 43 + "=", T0)
            with db.write() as s:
                for i in range(40):
                    enqueue(s, owner, WebhookEvent.SMS_RECEIVED, "dev", lambda i=i: {"n": i}, T0)  # type: ignore[misc]
            claimed: list[list[Claim]] = [[] for _ in range(4)]
            start = threading.Barrier(4)

            # One Database each, like separate worker processes (a Database serialises its own writes).
            engines = [Database(url) for _ in range(4)]

            def worker(k: int) -> None:
                mine = WebhookRepository(engines[k], WebhookSettings())
                start.wait()
                for _ in range(20):
                    got = mine.claim_due(T0 + timedelta(seconds=1), 3)
                    if not got:
                        return
                    claimed[k].extend(got)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            for engine in engines:
                engine.close()
            ids = [c.delivery_id for batch in claimed for c in batch]
            assert len(ids) == 40 and len(set(ids)) == 40
            recorded = repo.record(claimed[0][0], Outcome(Verdict.SUCCEEDED, 200), 12, T0 + timedelta(seconds=2))
            assert recorded.state is DeliveryState.SUCCEEDED
            assert repo.get(owner, hook.id).pending_deliveries == 39
        finally:
            db.close()
