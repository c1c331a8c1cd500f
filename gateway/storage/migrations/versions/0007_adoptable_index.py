"""A partial index of what a phone coming online may adopt (the owner's unpinned,
never-dispatched PENDING messages), so a session open reads those instead of every pending
message of every owner (issue 15: opens grew with the backlog).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# As gateway.storage.models.ADOPTABLE at this revision (a migration never imports the models).
_ADOPTABLE = "state = 1 AND pinned = false AND ever_dispatched = false"


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.create_index(
            'ix_message_adoptable', ['owner_id', 'device_id'], unique=False,
            sqlite_where=sa.text(_ADOPTABLE), postgresql_where=sa.text(_ADOPTABLE),
        )


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index('ix_message_adoptable')
