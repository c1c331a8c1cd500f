"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from gateway.storage.engine import Database
from tests.helpers.postgres import throwaway_database

# Expression indexes (priority DESC) do not round-trip through reflection; the migration
# writes this one by hand and the tests check it by name instead.
_HAND_WRITTEN = {"ix_message_dispatch"}


def _diff(db: Database) -> list[object]:
    def include(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
        return not (type_ == "index" and name in _HAND_WRITTEN)

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": include})
        diff = list(compare_metadata(context, SQLModel.metadata))
    indexes = {i["name"] for i in inspect(db.engine).get_indexes("message")}
    assert _HAND_WRITTEN <= indexes
    return diff


def test_sqlite_migrations_match_models_and_rerun_is_a_no_op(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    assert _diff(db) == []
    db.migrate()  # a restart migrates again: nothing to do
    assert _diff(db) == []
    db.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway database on the machine's PostgreSQL (dropped afterwards)."""
    with throwaway_database() as url:
        yield url


def test_postgresql_migrations_match_models(pg_database: str) -> None:
    db = Database(pg_database)
    db.migrate()
    assert _diff(db) == []
    db.close()


def test_the_adoption_at_session_open_reads_the_partial_index(tmp_path: Path) -> None:
    """A session open adopts the owner's unrouted messages; its statement must imply the
    partial index's WHERE, or SQLite scans every pending message of every owner instead."""
    from sqlalchemy import text

    from gateway.messages.repository import MessageRepository

    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    statement = MessageRepository._ADOPT.text.replace(":k_device_id", "'d'").replace(":k_owner_id", "'o'")
    with db.engine.connect() as connection:
        plan = [row[3] for row in connection.execute(text("EXPLAIN QUERY PLAN " + statement))]
    db.close()
    assert any("USING INDEX ix_message_adoptable" in step for step in plan), plan


def test_postgresql_log_ids_are_64_bit_on_uncached_sequences(pg_database: str) -> None:
    """Migration 0008: the append-only tables' ids and their sequences are bigint. The
    sequences keep CACHE 1 (the default): ids are handed out in the order they are asked for,
    which the event log's commit order relies on (docs/scale-out-plan.md)."""
    from sqlalchemy import text

    db = Database(pg_database)
    db.migrate()
    with db.engine.connect() as c:
        for table in ("event", "dispatch_log", "audit", "webhook_attempt"):
            column = c.execute(
                text("SELECT data_type FROM information_schema.columns WHERE table_name = :t AND column_name = 'id'"), {"t": table}
            ).scalar_one()
            sequence = c.execute(
                text("SELECT data_type, cache_size FROM pg_sequences WHERE sequencename = :s"), {"s": f"{table}_id_seq"}
            ).one()
            assert (column, sequence.data_type, sequence.cache_size) == ("bigint", "bigint", 1), table
        c.execute(text("SELECT setval('event_id_seq', 3000000000)"))  # past 2^31
    from datetime import UTC, datetime

    from tests.helpers.accounts import create_owner

    owner = create_owner(db, "owner", datetime.now(UTC))
    with db.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO event (owner_id, kind, message_id, recipient_index, state, message_state, error, inbound_id,"
                " created_at) VALUES (:o, 'message', 'm', 0, 1, 1, '', '', now())"
            ),
            {"o": owner},
        )
        assert c.execute(text("SELECT max(id) FROM event")).scalar_one() == 3000000001
    db.close()
