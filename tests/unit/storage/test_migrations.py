"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from gateway.storage.engine import Database

PG_ADMIN = os.environ.get("SMSGW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


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
    name = f"smsgw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_migrations_match_models(pg_database: str) -> None:
    db = Database(pg_database)
    db.migrate()
    assert _diff(db) == []
    db.close()
