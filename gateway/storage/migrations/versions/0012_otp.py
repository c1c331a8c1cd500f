"""One-time passwords (issue 20): verifications (the code only as an HMAC) and their sends.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('otp_verification',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('to_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('prefix', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('code_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('code_length', sa.Integer(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('sends', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('last_sent_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('locale', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner_id', 'idempotency_key', name='uq_otp_owner_key')
    )
    op.create_index('ix_otp_owner_to', 'otp_verification', ['owner_id', 'to_number', 'status'], unique=False)
    op.create_index('ix_otp_prefix_created', 'otp_verification', ['prefix', 'created_at'], unique=False)
    op.create_index('ix_otp_pending_expiry', 'otp_verification', ['status', 'expires_at'], unique=False)
    op.create_index('ux_otp_pending_number', 'otp_verification', ['owner_id', 'to_number'], unique=True,
                    sqlite_where=sa.text('status = 1'), postgresql_where=sa.text('status = 1'))
    op.create_table('otp_send',
    sa.Column('id', _LOG_ID, autoincrement=True, nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('verification_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('to_number', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('prefix', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner_id', 'idempotency_key', name='uq_otp_send_owner_key')
    )
    op.create_index('ix_otp_send_number', 'otp_send', ['to_number', 'at'], unique=False)
    op.create_index('ix_otp_send_prefix', 'otp_send', ['prefix', 'at'], unique=False)
    op.create_index('ix_otp_send_owner', 'otp_send', ['owner_id', 'at'], unique=False)
    # Accounts that may send messages may send codes: the new scopes join theirs (an account
    # made later gets every scope anyway). Scopes are a sorted, space-separated list.
    owner = sa.table('owner', sa.column('id', sa.String()), sa.column('scopes', sa.String()))
    bind = op.get_bind()
    for owner_id, scopes in bind.execute(sa.select(owner.c.id, owner.c.scopes)).all():
        have = set(scopes.split())
        if 'messages:send' in have:
            bind.execute(owner.update().where(owner.c.id == owner_id)
                         .values(scopes=' '.join(sorted(have | {'otp:send', 'otp:check'}))))


def downgrade() -> None:
    owner = sa.table('owner', sa.column('id', sa.String()), sa.column('scopes', sa.String()))
    bind = op.get_bind()
    for owner_id, scopes in bind.execute(sa.select(owner.c.id, owner.c.scopes)).all():
        kept = [x for x in scopes.split() if x not in ('otp:send', 'otp:check')]
        bind.execute(owner.update().where(owner.c.id == owner_id).values(scopes=' '.join(kept)))
    op.drop_index('ix_otp_send_owner', table_name='otp_send')
    op.drop_index('ix_otp_send_prefix', table_name='otp_send')
    op.drop_index('ix_otp_send_number', table_name='otp_send')
    op.drop_table('otp_send')
    op.drop_index('ux_otp_pending_number', table_name='otp_verification')
    op.drop_index('ix_otp_pending_expiry', table_name='otp_verification')
    op.drop_index('ix_otp_prefix_created', table_name='otp_verification')
    op.drop_index('ix_otp_owner_to', table_name='otp_verification')
    op.drop_table('otp_verification')
