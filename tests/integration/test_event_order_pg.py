"""The event log's ids become visible in id order on PostgreSQL with several writer processes
(issue 16; gateway/storage/event_log.py).

Four processes each run transactions that log events through `Database.write`; between the
event insert and the commit a transaction may stall a few milliseconds, and some roll back.
A reader in this process does what WatchMessages does: read up to the largest id, then
resume after it. Without the event lock a transaction that drew a smaller id can commit after
one with a larger id that the reader already passed, and the reader never sees it. With it,
the reader must see every committed event exactly once, in id order."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from gateway.storage.engine import Database
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database

_WRITERS = 4
_TRANSACTIONS = 120  # per writer
_DEADLINE = 120.0  # seconds for the whole run

_WRITER = r"""
import random, sys, time
from datetime import UTC, datetime
from sqlalchemy import event
from sqlmodel import Session
from gateway.storage.engine import Database
from gateway.storage.event_log import log_events

url, owner, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
db = Database(url)

@event.listens_for(Session, "before_commit")
def stall(session):  # after the event insert, before COMMIT: where commit order can differ from id order
    if rng.random() < 0.5:
        time.sleep(rng.random() * 0.004)

class Rollback(Exception):
    pass

for n in range(count):
    try:
        with db.write() as s:
            rows = [{"owner_id": owner, "kind": "message", "message_id": f"w{seed}-{n}", "recipient_index": i,
                     "state": 1, "message_state": 1, "error": "", "created_at": datetime.now(UTC)}
                    for i in range(rng.randint(1, 4))]
            log_events(s, rows)
            if rng.random() < 0.1:
                raise Rollback
    except Rollback:
        pass
db.close()
print("done", flush=True)
"""


def test_a_reader_up_to_the_largest_id_sees_every_event_once_in_order(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    with throwaway_database() as url:
        db = Database(url)
        db.migrate()
        owner = create_owner(db, "owner", datetime.now(UTC))
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, url, owner, str(seed), str(_TRANSACTIONS)],
                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for seed in range(_WRITERS)
        ]
        seen: list[int] = []
        try:
            cursor, deadline = 0, time.monotonic() + _DEADLINE
            while time.monotonic() < deadline:
                finished = all(w.poll() is not None for w in writers)
                with db.engine.connect() as c:
                    upto = c.execute(text("SELECT coalesce(max(id), 0) FROM event")).scalar_one()
                    ids = c.execute(
                        text("SELECT id FROM event WHERE id > :after AND id <= :upto ORDER BY id"),
                        {"after": cursor, "upto": upto},
                    ).scalars().all()
                seen.extend(ids)
                cursor = upto
                if finished:
                    break
                time.sleep(0.001)
            for w in writers:
                out, err = w.communicate(timeout=30)
                assert w.returncode == 0 and "done" in out, err[-2000:]
            with db.engine.connect() as c:
                stored = c.execute(text("SELECT id FROM event ORDER BY id")).scalars().all()
        finally:
            for w in writers:
                if w.poll() is None:
                    w.kill()
                    w.wait(timeout=10)
            db.close()
    assert len(stored) > _WRITERS * _TRANSACTIONS  # most commit, with 1-4 events each
    missed = sorted(set(stored) - set(seen))
    assert not missed, f"{len(missed)} of {len(stored)} committed events were never read: {missed[:10]}"
    assert seen == stored  # each once, in id order
