"""Inbound SMS get a `truncated` flag: a body over the bridge's bound (16,384 characters of
text, 8,192 bytes of data) is stored cut and flagged instead of refused, so it is not lost.
Every existing row was stored whole.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('truncated', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.alter_column('truncated', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.drop_column('truncated')
