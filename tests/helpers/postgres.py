"""A throwaway database on the machine's PostgreSQL (TEST_PG_ADMIN names the admin database; not an
SMSGW_ name: the servers the tests start would read it as a setting and refuse it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

__all__ = ["PG_ADMIN", "BACKENDS", "backend_env", "throwaway_database"]

PG_ADMIN = os.environ.get("TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a fresh database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"smsgw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The storage backends the end-to-end, scheduler, inbound and webhook suites run on (issue 16).
BACKENDS = ("sqlite", "postgresql")


@contextmanager
def backend_env(backend: str) -> Iterator[dict[str, str]]:
    """The environment that puts `smsgw serve` on `backend`: nothing for SQLite (the data
    directory's file), a throwaway PostgreSQL database's URL otherwise."""
    if backend == "sqlite":
        yield {}
        return
    with throwaway_database() as url:
        yield {"SMSGW_DATABASE__URL": url}
