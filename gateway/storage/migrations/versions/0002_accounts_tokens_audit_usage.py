"""Accounts (username, password hash, scopes), JWT bookkeeping, the audit log, daily usage.

The bootstrap `api_token` table goes: accounts and JWTs replace it (issue 3). Existing
owners keep their id and get their name as username; they sign in once a password is set
(`smsgw users passwd`).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('time', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index('ix_audit_owner', ['owner_id', 'id'], unique=False)

    op.create_table('daily_usage',
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('day', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('segments', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('owner_id', 'day')
    )
    op.create_table('token_family',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('scopes', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('access_ttl', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('revoked_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('token_family', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_token_family_owner_id'), ['owner_id'], unique=False)

    op.create_table('auth_token',
    sa.Column('jti', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('family_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('issued_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('rotated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('rotated_by_source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('successor_access_jti', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('successor_refresh_jti', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['family_id'], ['token_family.id'], ),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('jti')
    )
    with op.batch_alter_table('auth_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_token_family_id'), ['family_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auth_token_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index('ix_auth_token_revoked', ['revoked_at', 'expires_at'], unique=False)

    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_token_owner_id'))

    op.drop_table('api_token')
    with op.batch_alter_table('owner', schema=None) as batch_op:
        batch_op.add_column(sa.Column('username', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('scopes', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('disabled', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Names were not unique before: the first owner of a name keeps it, later ones get their id.
    connection = op.get_bind()
    taken: set[str] = set()
    for owner_id, name in connection.execute(sa.text("SELECT id, name FROM owner ORDER BY created_at, id")).all():
        username = name if name and name not in taken else owner_id
        taken.add(username)
        connection.execute(sa.text("UPDATE owner SET username = :u WHERE id = :i"), {"u": username, "i": owner_id})
    with op.batch_alter_table('owner', schema=None) as batch_op:
        batch_op.alter_column('username', existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False)
        batch_op.alter_column('password_hash', server_default=None)
        batch_op.alter_column('scopes', server_default=None)
        batch_op.alter_column('disabled', server_default=None)
        batch_op.create_unique_constraint('uq_owner_username', ['username'])


def downgrade() -> None:
    with op.batch_alter_table('owner', schema=None) as batch_op:
        batch_op.drop_constraint('uq_owner_username', type_='unique')
        batch_op.drop_column('disabled')
        batch_op.drop_column('scopes')
        batch_op.drop_column('password_hash')
        batch_op.drop_column('username')

    op.create_table('api_token',
    sa.Column('token_hash', sa.VARCHAR(), nullable=False),
    sa.Column('owner_id', sa.VARCHAR(), nullable=False),
    sa.Column('created_at', sa.DATETIME(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('token_hash')
    )
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_token_owner_id'), ['owner_id'], unique=False)

    with op.batch_alter_table('auth_token', schema=None) as batch_op:
        batch_op.drop_index('ix_auth_token_revoked')
        batch_op.drop_index(batch_op.f('ix_auth_token_owner_id'))
        batch_op.drop_index(batch_op.f('ix_auth_token_family_id'))

    op.drop_table('auth_token')
    with op.batch_alter_table('token_family', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_token_family_owner_id'))

    op.drop_table('token_family')
    op.drop_table('daily_usage')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_owner')

    op.drop_table('audit')
