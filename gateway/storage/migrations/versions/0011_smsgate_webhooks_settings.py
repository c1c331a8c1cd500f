"""SMSGate's API, webhooks and settings (issue 19): a webhook's format ("" = Standard Webhooks,
"smsgate") and SMSGate's own id for it (unique per account), and each account's SMSGate
settings map. Existing webhooks keep the Standard Webhooks format.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook', schema=None) as batch_op:
        batch_op.add_column(sa.Column('format', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('external_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index('ux_webhook_owner_external', ['owner_id', 'external_id'], unique=True)
    op.create_table('smsgate_settings',
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('data', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('owner_id')
    )


def downgrade() -> None:
    op.drop_table('smsgate_settings')
    with op.batch_alter_table('webhook', schema=None) as batch_op:
        batch_op.drop_index('ux_webhook_owner_external')
        batch_op.drop_column('external_id')
        batch_op.drop_column('format')
