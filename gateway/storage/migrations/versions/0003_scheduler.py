"""The dispatch scheduler: recipients become the unit of dispatch (attempt, session, SIM,
schedule/retry gate, part progress), messages get schedule_at, devices their pacing
overrides, and the dispatch log holds the history the pacing windows are computed over.

A message's DISPATCHED session moves to its dispatched recipients.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dispatch_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sim', sa.Integer(), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('parts', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('recipient_index', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dispatch_log', schema=None) as batch_op:
        batch_op.create_index('ix_dispatch_log_device', ['device_id', 'at'], unique=False)

    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settings_json', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default='{}'))

    with op.batch_alter_table('recipient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('session_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('sim', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('not_before', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('paced_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('parts_sent', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('parts_delivered', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=''))
        batch_op.create_index('ix_recipient_session', ['session_id'], unique=False)
    # DISPATCHED recipients (state 2) keep the session their message was dispatched on.
    op.execute(
        "UPDATE recipient SET session_id = (SELECT m.session_id FROM message m WHERE m.id = recipient.message_id) "
        "WHERE state = 2"
    )
    with op.batch_alter_table('recipient', schema=None) as batch_op:
        for column in ('attempt', 'sim', 'parts_sent', 'parts_delivered'):
            batch_op.alter_column(column, existing_type=sa.Integer(), server_default=None)
        for column in ('session_id', 'last_error'):
            batch_op.alter_column(column, existing_type=sqlmodel.sql.sqltypes.AutoString(), server_default=None)
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.alter_column('settings_json', existing_type=sqlmodel.sql.sqltypes.AutoString(), server_default=None)

    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('schedule_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('drop_pending', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.drop_column('session_id')
        batch_op.create_index('ix_message_drop', ['drop_pending', 'device_id'], unique=False)
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.alter_column('drop_pending', existing_type=sa.Boolean(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_id', sa.VARCHAR(), nullable=False, server_default=''))
        batch_op.drop_index('ix_message_drop')
        batch_op.drop_column('drop_pending')
        batch_op.drop_column('schedule_at')

    with op.batch_alter_table('recipient', schema=None) as batch_op:
        batch_op.drop_index('ix_recipient_session')
        batch_op.drop_column('last_error')
        batch_op.drop_column('parts_delivered')
        batch_op.drop_column('parts_sent')
        batch_op.drop_column('paced_until')
        batch_op.drop_column('not_before')
        batch_op.drop_column('sim')
        batch_op.drop_column('session_id')
        batch_op.drop_column('attempt')

    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_column('settings_json')

    with op.batch_alter_table('dispatch_log', schema=None) as batch_op:
        batch_op.drop_index('ix_dispatch_log_device')

    op.drop_table('dispatch_log')
