"""controller_handoffs.extra_targets: the staged paths of a hand-off's targets beyond the OODS
and the archive (JSON, target name → path; NULL for none), recorded with the hand-off so that
one begun before a target was configured (or removed) finishes with the targets it began with.
controller_handoffs.adler32, oods_files.adler32, archive_files.adler32: the file's Adler-32 as
its writer summed it (NULL: unknown, e.g. files from before), carried to Rucio's registration.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("controller_handoffs") as batch:  # batch: SQLite's ALTER TABLE
        batch.add_column(sa.Column("extra_targets", sa.Text(), nullable=True))
        batch.add_column(sa.Column("adler32", sa.String(8), nullable=True))
    for table in ("oods_files", "archive_files"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("adler32", sa.String(8), nullable=True))


def downgrade() -> None:
    for table in ("oods_files", "archive_files"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("adler32")
    with op.batch_alter_table("controller_handoffs") as batch:
        batch.drop_column("adler32")
        batch.drop_column("extra_targets")
