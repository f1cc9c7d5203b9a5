"""rec_files: when each file was announced in Rucio (IMAGE_IN_RUCIO) and with which status.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rec_files") as batch:  # batch: SQLite's ALTER TABLE
        batch.add_column(sa.Column("rucio_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rucio_status", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rec_files") as batch:
        batch.drop_column("rucio_status")
        batch.drop_column("rucio_at")
