"""An index on controller_handoffs.state: the hand-off resumer asks for the unfinished ones
every few seconds, and the table keeps a row per file ever handed off.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_controller_handoffs_state"), "controller_handoffs", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_controller_handoffs_state"), table_name="controller_handoffs")
