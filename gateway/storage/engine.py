"""Engine set-up: SQLite in WAL with synchronous=FULL by default (RELIABILITY 6), or PostgreSQL.

All storage calls are synchronous and run in worker threads (asyncio.to_thread /
trio.to_thread); `Database.write()` serialises writers inside the process so SQLite
never answers "database is locked" to its own threads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from gateway.private_files import create_private_file, ensure_private_dir
from gateway.storage import models  # noqa: F401  (registers the tables)
from gateway.storage.event_log import write_events

__all__ = ["Database", "CommitObserver", "AFTER_COMMIT", "ON_ROLLBACK", "sqlite_file"]

# session.info key: callables a writer registers to run once its transaction is durable.
AFTER_COMMIT = "smsgw.after_commit"
# session.info key: callables that undo in memory what a writer did, should its transaction
# roll back (a group commit rolls back every job of the group, then runs each again alone).
ON_ROLLBACK = "smsgw.on_rollback"

log = logging.getLogger(__name__)

T = TypeVar("T")
_MIGRATION_LOCK_KEY = 0x736D736777_02  # pg_advisory_xact_lock: "smsgw", then 2 for migrations


class Database:
    """An engine plus the session helpers every repository uses."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            path = sqlite_file(url)
            if path is not None:
                # Owner-only from the start (accounts, secrets, bodies); SQLite gives its
                # -wal and -shm files the database file's mode.
                ensure_private_dir(path.parent)
                create_private_file(path)
            else:
                kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_size"] = 10
            kwargs["pool_pre_ping"] = True
        # hide_parameters: an error logged with its SQL must not carry bodies or numbers.
        self.engine: Engine = create_engine(url, hide_parameters=True, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine, sqlite_synchronous)
        self._write_lock = threading.Lock()
        self._committer = _GroupCommitter(self)
        # Told of every commit and the event rows it logged (gateway/metrics_storage.py); the
        # process that owns the metrics sets it.
        self.observer: CommitObserver | None = None

    def create_all(self) -> None:
        """Tables straight from the models, for tests that need no migration history."""
        SQLModel.metadata.create_all(self.engine)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (what `smsgw serve` and `smsgw db
        upgrade` run). On PostgreSQL one runner at a time: a second waits, then finds nothing
        to do."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
            command.upgrade(_alembic_config(connection), "head")

    def schema_revisions(self) -> tuple[str | None, str | None]:
        """(the database's Alembic revision, None before the first migration; the newest this code has)."""
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
        return current, head

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._write_lock, Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.flush()  # everything else first: see gateway.storage.event_log
                events = write_events(session)
                started = time.perf_counter()
                session.commit()
            except BaseException:
                session.rollback()
                for undo in session.info.pop(ON_ROLLBACK, ()):
                    undo()
                raise
            observer = self.observer
            if observer is not None:
                try:  # committed: nothing the observer does may look like a failed write
                    observer.committed(events, time.perf_counter() - started)
                except Exception:
                    log.exception("commit observer failed")
            for callback in session.info.pop(AFTER_COMMIT, ()):
                callback()

    def transact(self, fn: Callable[[Session], T]) -> T:
        """`with write() as s: return fn(s)`, run again (at most 3 times) when the transaction
        lost a deadlock or a serialization conflict to another process on PostgreSQL (40P01,
        40001): it changed nothing, and the other side has gone on. So `fn` must only change
        the database (and what it returns), as for `group`."""
        for attempt in range(_RETRIES + 1):
            try:
                with self.write() as session:
                    return fn(session)
            except DBAPIError as exc:
                if attempt == _RETRIES or not _retryable(exc):
                    raise
            time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))  # let the other side finish
        raise AssertionError("unreachable")

    def group(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` as a write transaction that shares its commit with the other
        callers waiting at that moment (group commit): one fsync for a whole burst of
        sends, dispatch rounds and receipts instead of one each.

        Same outcome as `with write() as s: return fn(s)`: the call returns once its
        changes are durable, and an exception from `fn` leaves nothing of it stored. When
        one function of a group raises, the group is rolled back and each of its functions
        runs again on its own, so the others are unaffected; `fn` must therefore only
        change the database (and what it returns), never state outside it.
        """
        return self._committer.submit(fn).result()

    def group_future(self, fn: Callable[[Session], T]) -> Future[T]:
        """`group` without waiting: the job's future, for a caller that waits on its own
        loop (asyncio.wrap_future) instead of in a worker thread, so a call costs one hand-off
        to the writer and one back. Cancelling the future before the writer takes the job
        skips it (nothing stored); once taken, it runs and commits regardless."""
        return self._committer.submit(fn)

    def close(self) -> None:
        self._committer.close()
        self.engine.dispose()


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


class CommitObserver(Protocol):
    def committed(self, events: Sequence[Mapping[str, Any]], seconds: float) -> None:
        """A write transaction committed (in `seconds`), with these event rows."""

    def group(self, jobs: int) -> None:
        """The group-commit writer took this many jobs into one transaction."""


_Job = tuple[Callable[[Session], Any], "Future[Any]"]


class _GroupCommitter:
    """One writer thread: takes every queued job, runs them in one transaction, commits once."""

    _MAX_GROUP = 256  # jobs per transaction: bounds how long one commit holds the writers

    def __init__(self, db: Database) -> None:
        self._db = db
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[[Session], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("database closed")
            self._jobs.append((fn, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="smsgw-group-commit", daemon=True)
                self._thread.start()
            self._ready.notify()
        return future

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return  # closed and drained
                group = [self._jobs.popleft() for _ in range(min(len(self._jobs), self._MAX_GROUP))]
            # A job whose caller cancelled it before now is skipped; the others can no longer be.
            group = [(fn, future) for fn, future in group if future.set_running_or_notify_cancel()]
            if group:
                self._commit(group)

    def _commit(self, group: list[_Job]) -> None:
        observer = self._db.observer
        if observer is not None:
            try:
                observer.group(len(group))
            except Exception:
                log.exception("commit observer failed")
        if len(group) > 1:
            try:
                with self._db.write() as session:
                    results = [fn(session) for fn, _ in group]
            except Exception:
                pass  # one by one below: only the failing job fails
            else:
                for (_, future), result in zip(group, results, strict=True):
                    future.set_result(result)
                return
        for fn, future in group:
            try:
                result = self._db.transact(fn)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)


# A transaction that lost a deadlock or a serialization conflict to another process
# (PostgreSQL 40P01 / 40001: the row locks of gateway.messages.rows, unique keys two inserts
# wait on) changed nothing: it runs again (Database.transact; a group's jobs each alone).
_RETRIES = 3
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES


def _alembic_config(connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
