"""64-bit ids for the append-only tables on PostgreSQL (issue 16): `event`, `dispatch_log`,
`audit` and `webhook_attempt` were `integer` columns on `integer` sequences, which run out
(2^31) in about 8 days of events at 3,000 a second. SQLite's INTEGER PRIMARY KEY is already
the 64-bit rowid: nothing changes there.

PostgreSQL rewrites each table under an ACCESS EXCLUSIVE lock: on a large event log the
first start after the upgrade waits for it (docs/design.md, "Migrations").

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_TABLES = ("event", "dispatch_log", "audit", "webhook_attempt")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.alter_column(table, "id", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS integer")
        op.alter_column(table, "id", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
