"""Database.group: concurrent writers share one transaction, and one failing job fails alone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from gateway.storage.engine import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'g.db'}")
    with database.engine.begin() as c:
        c.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    yield database
    database.close()


def _insert(k: int, v: str = "x"):
    def job(s: Session) -> int:
        s.execute(text("INSERT INTO t (k, v) VALUES (:k, :v)"), {"k": k, "v": v})
        return k

    return job


def _rows(db: Database) -> list[tuple[int, str]]:
    with db.read() as s:
        return [tuple(r) for r in s.execute(text("SELECT k, v FROM t ORDER BY k"))]


def test_concurrent_jobs_all_commit_and_return_their_results(db: Database) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        value = db.group(_insert(k))
        with lock:
            results.append(value)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(200))
    assert [k for k, _ in _rows(db)] == list(range(200))


def test_a_failing_job_fails_alone_and_leaves_nothing(db: Database) -> None:
    db.group(_insert(1))
    errors: list[BaseException] = []
    gate = threading.Barrier(41)

    def writer(k: int) -> None:
        gate.wait(10)
        try:
            db.group(_insert(1 if k == 7 else 100 + k))  # k == 7 repeats a primary key
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def half_then_fail(s: Session) -> None:
        s.execute(text("INSERT INTO t (k, v) VALUES (99, 'half')"))
        raise ValueError("changed its mind")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(40)]
    for t in threads:
        t.start()
    gate.wait(10)
    with pytest.raises(ValueError, match="changed its mind"):
        db.group(half_then_fail)
    for t in threads:
        t.join(30)
    assert len(errors) == 1 and "UNIQUE" in str(errors[0])
    keys = [k for k, _ in _rows(db)]
    assert 99 not in keys
    assert keys == [1, *(100 + k for k in range(40) if k != 7)]


def test_closed_database_refuses_new_jobs(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.group(lambda s: None)


def test_a_job_that_lost_a_deadlock_runs_again_alone(tmp_path: Path) -> None:
    """PostgreSQL aborts one side of a deadlock between two processes' transactions (40P01);
    the job changed nothing, so the group commit runs it again (a few times at most)."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    db = Database(f"sqlite:///{tmp_path / 'd.db'}", sqlite_synchronous="NORMAL")
    db.create_all()
    calls: list[int] = []

    def deadlocked(_: Any) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE ...", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
        return "stored"

    def always(_: Any) -> str:
        raise OperationalError("UPDATE ...", {}, psycopg.errors.DeadlockDetected("deadlock detected"))

    try:
        assert db.group(deadlocked) == "stored" and len(calls) == 3
        with pytest.raises(OperationalError):
            db.group(always)  # given up after the retries
    finally:
        db.close()
