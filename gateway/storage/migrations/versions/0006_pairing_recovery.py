"""Recoverable pairing: a pairing code remembers the device its first use made (so a retry after a
lost Welcome re-issues that device's token instead of making another), and a device records its
first session opened with its own token (which spends the code for good).

Devices paired before this revision count as connected with their token: their codes are spent
(`used_at` set, no `device_id`), as they were under the old single-use rule.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.add_column(sa.Column('connected_with_token_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.execute("UPDATE device SET connected_with_token_at = created_at")
    with op.batch_alter_table('pairing_code', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pairing_code', schema=None) as batch_op:
        batch_op.drop_column('device_id')
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_column('connected_with_token_at')
