"""rucio_registrations: the archive ingest's registrations in Rucio (archive_ingest/rucio_book).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rucio_registrations",
        sa.Column("file_id", sa.Integer(), sa.ForeignKey("archive_files.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("container", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("adler32", sa.String(8), nullable=False),
        sa.Column("md5", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True)),
    )
    op.create_index(op.f("ix_rucio_registrations_state"), "rucio_registrations", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rucio_registrations_state"), table_name="rucio_registrations")
    op.drop_table("rucio_registrations")
