"""Two processes changing the same messages on one PostgreSQL (issue 16): each of their
read-modify-write transactions locks the message rows it reads for change, so no change is
lost and no state moves back (gateway/messages/rows.py, "Row locks").

Two `Database` objects stand for two processes (each has its own connections and its own
writer thread, as a process would): one cancels messages, one way (the API), the other
expires the same messages (the worker's sweep). Both refusals are fine; what must never
happen is a recipient reaching two final states, or its stored state differing from the last
event logged for it."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import timedelta

import psycopg
from sqlalchemy import text

from gateway.bus.postgres import libpq_url
from gateway.errors import FailedPrecondition
from gateway.messages.repository import MessageRepository
from gateway.storage.engine import Database
from gateway.types import FINAL_STATES, State
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.gateway.test_gw_repository import T0, UNPACED, new_message

_MESSAGES = 300
_ROUNDS = 3  # the race is run this many times, each on fresh messages


def _race(api: MessageRepository, worker: MessageRepository, owner: str) -> None:
    ids = [
        api.create(owner, new_message(2, valid_until=T0 + timedelta(seconds=1)), T0)[0].id for _ in range(_MESSAGES)
    ]
    later = T0 + timedelta(seconds=2)
    errors: list[BaseException] = []

    def cancel_all() -> None:
        for message_id in ids:
            try:
                api.cancel(owner, message_id, later)
            except FailedPrecondition:  # the sweep expired it first
                pass
            except BaseException as exc:  # noqa: BLE001 — reported below
                errors.append(exc)

    def expire_all() -> None:
        try:
            for _ in range(_MESSAGES):  # bounded; each call takes at most 5
                if not worker.expire_due(later, batch=5):
                    break
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=cancel_all), threading.Thread(target=expire_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]


def test_cancel_and_expiry_from_two_processes_lose_nothing() -> None:
    with throwaway_database() as url:
        api_db, worker_db = Database(url), Database(url)
        try:
            api_db.migrate()
            owner = create_owner(api_db, "owner", T0)  # no phone: the messages wait unrouted
            api, worker = MessageRepository(api_db, UNPACED), MessageRepository(worker_db, UNPACED)
            for _ in range(_ROUNDS):
                _race(api, worker, owner)
            with api_db.engine.connect() as c:
                events = c.execute(
                    text("SELECT message_id, recipient_index, state FROM event WHERE kind = 'message' ORDER BY id")
                ).all()
                stored = dict(
                    ((m, i), s) for m, i, s in c.execute(text("SELECT message_id, idx, state FROM recipient")).all()
                )
        finally:
            api_db.close()
            worker_db.close()
    finals: dict[tuple[str, int], list[int]] = defaultdict(list)
    last: dict[tuple[str, int], int] = {}
    for message_id, idx, state in events:
        last[(message_id, idx)] = state
        if State(state) in FINAL_STATES:
            finals[(message_id, idx)].append(state)
    assert len(stored) == _ROUNDS * _MESSAGES * 2
    twice = {k: [State(s).name for s in v] for k, v in finals.items() if len(v) > 1}
    assert not twice, f"{len(twice)} recipients reached two final states, e.g. {list(twice.items())[:3]}"
    differ = {k: (State(stored[k]).name, State(last[k]).name) for k in stored if stored[k] != last[k]}
    assert not differ, f"{len(differ)} recipients' stored state is not their last event's, e.g. {list(differ.items())[:3]}"
    assert all(State(s) in (State.CANCELLED, State.EXPIRED) for s in stored.values())



def test_an_expiry_sweep_that_loses_a_deadlock_runs_again() -> None:
    """Another process holds a lock on the second of two due messages while the sweep, which
    locks in id order, holds the first; then it asks for the first. PostgreSQL ends the
    sweep's transaction as a deadlock (the other side waits longer before checking), and the
    sweep runs again (Database.transact) once the other side has finished: both messages
    expire, once. Without the retry the sweep fails with the deadlock error."""
    with throwaway_database() as url:
        db = Database(url)
        try:
            db.migrate()
            owner = create_owner(db, "owner", T0)
            repo = MessageRepository(db, UNPACED)
            first, second = sorted(
                repo.create(owner, new_message(1, valid_until=T0 + timedelta(seconds=1)), T0)[0].id for _ in range(2)
            )
            outcome: list[object] = []
            with psycopg.connect(libpq_url(url)) as other:
                other.execute("SET deadlock_timeout = '10s'")  # so the sweep is the one PostgreSQL ends
                other.execute("SELECT 1 FROM message WHERE id = %s FOR UPDATE", (second,))
                sweep = threading.Thread(target=lambda: outcome.append(_expire(repo)))
                sweep.start()
                deadline = time.monotonic() + 30
                while not other.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()[0]:  # type: ignore[index]
                    assert time.monotonic() < deadline, "the sweep never waited on the held row"
                    time.sleep(0.01)
                other.execute("SELECT 1 FROM message WHERE id = %s FOR UPDATE", (first,))  # the cycle
                other.rollback()
                sweep.join(timeout=60)
            assert outcome == [None], outcome
            assert {repo.get(owner, m).state for m in (first, second)} == {State.EXPIRED}
            with db.engine.connect() as c:
                expired = c.execute(text("SELECT count(*) FROM event WHERE state = :s"), {"s": int(State.EXPIRED)}).scalar()
            assert expired == 2
        finally:
            db.close()


def _expire(repo: MessageRepository) -> BaseException | None:
    try:
        repo.expire_due(T0 + timedelta(seconds=2))
    except BaseException as exc:  # noqa: BLE001 — the test reports it
        return exc
    return None
