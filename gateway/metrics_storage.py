"""Metrics read off the storage (issue 18): what every commit logged, and the backlogs.

- `StorageMetrics` observes each committed write transaction (gateway.storage.engine's
  `CommitObserver`): its COMMIT time, the group-commit writer's batch sizes, and from the event
  rows it logged, recipients' state changes (by state and failure class) and how long after
  the message's creation each recipient was dispatched, accepted, sent and delivered. Nothing
  is read again: the rows are in hand. A message's creation time is in its id (a ULID's first
  48 bits are its milliseconds), so no column is fetched for the latency either.
- `BacklogCollector` answers at scrape time, from two indexed queries cached for 5 s: PENDING
  messages and how long the oldest due one has waited, and the webhook outbox's backlog and
  its oldest delivery's age. Exposed by the processes that run the jobs (`serve`, `worker`):
  the database is one, so one exporter of it is enough.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from gateway.messages.retry import FINAL, RETRYABLE
from gateway.storage.engine import Database
from gateway.storage.models import MessageRow, WebhookDeliveryRow
from gateway.types import State

__all__ = ["StorageMetrics", "BacklogCollector", "ulid_milliseconds", "LATENCY_BUCKETS"]

log = logging.getLogger(__name__)

# 1 ms to 1 h: a connected phone's Deliver in milliseconds, a paced or dozing one's in minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600)
_STAGES = {State.DISPATCHED: "dispatched", State.ACCEPTED: "accepted", State.SENT: "sent", State.DELIVERED: "delivered"}
_CLASSES = RETRYABLE | FINAL
_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}
_CACHE_SECONDS = 5.0


def ulid_milliseconds(ulid: str) -> int | None:
    """The creation time (ms since the epoch) a ULID's first 10 characters encode."""
    value = 0
    try:
        for char in ulid[:10]:
            value = value * 32 + _CROCKFORD[char]
    except KeyError:
        return None
    return value if len(ulid) >= 10 else None


def failure_class(state: int, error: str) -> str:
    """The label of a FAILED event: the class its reason starts with (gateway.messages
    .repository writes "class" or "class: text"); "other" for a server-side failure."""
    if state != State.FAILED:
        return ""
    head = error.partition(":")[0]
    return head if head in _CLASSES else "other"


class StorageMetrics:
    """The commit observer of one process's `Database` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commit_seconds = Histogram(
            "smsgw_storage_commit_seconds", "Time of a write transaction's COMMIT (the fsync on SQLite)",
            registry=registry, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
        )
        self.commit_batch = Histogram(
            "smsgw_storage_commit_batch_size", "Write jobs the group-commit writer put in one transaction",
            registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.transitions = Counter(
            "smsgw_message_transitions_total",
            "Recipients' state changes, by the state reached and, for FAILED, the failure class "
            "(other: the server failed it, e.g. a deleted phone's pinned message)",
            ["state", "failure_class"],
            registry=registry,
        )
        self.latency = Histogram(
            "smsgw_message_latency_seconds",
            "From a message's creation to a recipient's stage: dispatched (its Deliver is written right "
            "after the commit), accepted, sent, delivered",
            ["stage"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._transition_children: dict[tuple[int, str], Any] = {}
        self._latency_children = {state: self.latency.labels(stage) for state, stage in _STAGES.items()}

    def attach(self, db: Database) -> StorageMetrics:
        db.observer = self
        return self

    def group(self, jobs: int) -> None:
        self.commit_batch.observe(jobs)

    def committed(self, events: Sequence[Mapping[str, Any]], seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        if not events:
            return
        now_ms = time.time() * 1000
        children = self._transition_children
        for row in events:
            if row.get("kind", "message") != "message":
                continue
            state, error = row["state"], row.get("error") or ""
            key = (state, failure_class(state, error))
            child = children.get(key)
            if child is None:
                child = children[key] = self.transitions.labels(State(state).name, key[1])
            child.inc()
            latency = self._latency_children.get(state)
            if latency is not None:
                created = ulid_milliseconds(row["message_id"])
                if created is not None:
                    latency.observe(max(0.0, (now_ms - created) / 1000))


class BacklogCollector(Collector):
    """PENDING messages and the webhook outbox, read at scrape time (cached 5 s)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._at = -_CACHE_SECONDS
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at >= _CACHE_SECONDS:
                self._at = time.monotonic()
                try:
                    self._families = self._read()
                except Exception:  # the database is down: the rest of /metrics still answers
                    log.warning("could not read the backlog gauges from the database", exc_info=True)
                    self._families = []
            yield from self._families

    def _read(self) -> list[GaugeMetricFamily]:
        now = datetime.now(UTC)
        m, w = MessageRow.__table__.c, WebhookDeliveryRow.__table__.c  # type: ignore[attr-defined]
        due = func.coalesce(m.schedule_at, m.created_at)
        with self.db.read() as s:
            pending, oldest = s.execute(
                select(func.count(), func.min(due)).where(m.state == int(State.PENDING), due <= now)
            ).one()
            outbox, oldest_delivery = s.execute(select(func.count(), func.min(w.created_at)).where(w.state == 1)).one()
        return [
            _gauge("smsgw_messages_pending", "PENDING messages whose time has come (scheduled ones count from schedule_at)",
                   pending),
            _gauge("smsgw_messages_oldest_pending_age_seconds",
                   "How long the oldest due PENDING message has waited (0 when none)", _age(oldest, now)),
            _gauge("smsgw_webhook_outbox_pending", "Webhook deliveries not yet delivered or given up", outbox),
            _gauge("smsgw_webhook_outbox_oldest_age_seconds", "Age of the oldest undelivered webhook delivery (0 when none)",
                   _age(oldest_delivery, now)),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _age(at: datetime | None, now: datetime) -> float:
    if at is None:
        return 0.0
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (now - at).total_seconds())
