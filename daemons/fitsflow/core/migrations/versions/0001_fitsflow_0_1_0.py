"""The schema of fitsflow 0.1.0 (whose daemons made it with metadata.create_all).

A database that 0.1.0 created has these tables and no version row: ``migrate`` stamps it at
this revision, then upgrades it.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('archive_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('instrument', sa.String(length=32), nullable=False),
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('group_id', sa.String(length=64), nullable=False),
    sa.Column('snap', sa.Integer(), nullable=False),
    sa.Column('raft', sa.String(length=16), nullable=False),
    sa.Column('sensor', sa.String(length=16), nullable=False),
    sa.Column('obs_day', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('checksum', sa.String(length=80), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protected', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('instrument', 'image', 'raft', 'sensor', name='archive_files_data_id')
    )
    op.create_index(op.f('ix_archive_files_ingested_at'), 'archive_files', ['ingested_at'], unique=False)
    op.create_index(op.f('ix_archive_files_obs_day'), 'archive_files', ['obs_day'], unique=False)
    op.create_table('controller_assignments',
    sa.Column('assignment', sa.String(length=200), nullable=False),
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('forwarder', sa.String(length=64), nullable=True),
    sa.Column('sensors', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('sent', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('assignment')
    )
    op.create_index(op.f('ix_controller_assignments_image'), 'controller_assignments', ['image'], unique=False)
    op.create_table('controller_expected',
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('sensors', sa.Text(), nullable=False),
    sa.Column('announced_at', sa.Float(), nullable=False),
    sa.Column('resends', sa.Integer(), nullable=False),
    sa.Column('last_resend_at', sa.Float(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('image')
    )
    op.create_index(op.f('ix_controller_expected_state'), 'controller_expected', ['state'], unique=False)
    op.create_table('controller_handoffs',
    sa.Column('key', sa.String(length=120), nullable=False),
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('incoming', sa.String(length=512), nullable=False),
    sa.Column('oods', sa.String(length=512), nullable=False),
    sa.Column('archive', sa.String(length=512), nullable=False),
    sa.Column('size', sa.String(length=20), nullable=False),
    sa.Column('checksum', sa.String(length=80), nullable=False),
    sa.Column('inode', sa.String(length=80), nullable=False),
    sa.Column('data_id', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_index(op.f('ix_controller_handoffs_image'), 'controller_handoffs', ['image'], unique=False)
    op.create_table('oods_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('instrument', sa.String(length=32), nullable=False),
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('group_id', sa.String(length=64), nullable=False),
    sa.Column('snap', sa.Integer(), nullable=False),
    sa.Column('raft', sa.String(length=16), nullable=False),
    sa.Column('sensor', sa.String(length=16), nullable=False),
    sa.Column('obs_day', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('checksum', sa.String(length=80), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protected', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('instrument', 'image', 'raft', 'sensor', name='oods_files_data_id')
    )
    op.create_index(op.f('ix_oods_files_ingested_at'), 'oods_files', ['ingested_at'], unique=False)
    op.create_index(op.f('ix_oods_files_obs_day'), 'oods_files', ['obs_day'], unique=False)
    op.create_table('rec_daemons',
    sa.Column('ident', sa.String(length=200), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=16), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('ident')
    )
    op.create_table('rec_files',
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('sensor', sa.String(length=40), nullable=False),
    sa.Column('delivered_at', sa.Float(), nullable=True),
    sa.Column('oods_requested_at', sa.Float(), nullable=True),
    sa.Column('archive_requested_at', sa.Float(), nullable=True),
    sa.Column('oods_at', sa.Float(), nullable=True),
    sa.Column('oods_status', sa.Integer(), nullable=True),
    sa.Column('archive_at', sa.Float(), nullable=True),
    sa.Column('archive_status', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('image', 'sensor')
    )
    op.create_table('rec_images',
    sa.Column('image', sa.String(length=80), nullable=False),
    sa.Column('group_id', sa.String(length=64), nullable=True),
    sa.Column('sensors_expected', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('end_readout_at', sa.Float(), nullable=True),
    sa.Column('readout_at', sa.Float(), nullable=True),
    sa.Column('missing', sa.Integer(), nullable=False),
    sa.Column('header_at', sa.Float(), nullable=True),
    sa.Column('header_partial', sa.Boolean(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('image')
    )
    op.create_index(op.f('ix_rec_images_updated_at'), 'rec_images', ['updated_at'], unique=False)
    op.create_table('rec_messages',
    sa.Column('msg_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('destination', sa.String(length=200), nullable=False),
    sa.Column('image', sa.String(length=80), nullable=True),
    sa.Column('sender', sa.String(length=200), nullable=False),
    sa.Column('sent', sa.String(length=40), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('msg_id')
    )
    op.create_index(op.f('ix_rec_messages_image'), 'rec_messages', ['image'], unique=False)
    op.create_index(op.f('ix_rec_messages_received_at'), 'rec_messages', ['received_at'], unique=False)
    op.create_index(op.f('ix_rec_messages_type'), 'rec_messages', ['type'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_rec_messages_type'), table_name='rec_messages')
    op.drop_index(op.f('ix_rec_messages_received_at'), table_name='rec_messages')
    op.drop_index(op.f('ix_rec_messages_image'), table_name='rec_messages')
    op.drop_table('rec_messages')
    op.drop_index(op.f('ix_rec_images_updated_at'), table_name='rec_images')
    op.drop_table('rec_images')
    op.drop_table('rec_files')
    op.drop_table('rec_daemons')
    op.drop_index(op.f('ix_oods_files_obs_day'), table_name='oods_files')
    op.drop_index(op.f('ix_oods_files_ingested_at'), table_name='oods_files')
    op.drop_table('oods_files')
    op.drop_index(op.f('ix_controller_handoffs_image'), table_name='controller_handoffs')
    op.drop_table('controller_handoffs')
    op.drop_index(op.f('ix_controller_expected_state'), table_name='controller_expected')
    op.drop_table('controller_expected')
    op.drop_index(op.f('ix_controller_assignments_image'), table_name='controller_assignments')
    op.drop_table('controller_assignments')
    op.drop_index(op.f('ix_archive_files_obs_day'), table_name='archive_files')
    op.drop_index(op.f('ix_archive_files_ingested_at'), table_name='archive_files')
    op.drop_table('archive_files')
