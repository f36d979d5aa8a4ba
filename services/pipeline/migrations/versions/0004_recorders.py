"""Many recorders (issue 17): the recorders table (each recorder's heartbeat: where the gateway reaches
it, its capacity, the source kinds it opens) and sessions.recorder (which recorder started the
session: its authenticated identity). Sessions started before this revision have none (the one
recorder there was).

Revision ID: 0004_recorders
Revises: 0003_chunk_drops_salvage
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_recorders"
down_revision: str | Sequence[str] | None = "0003_chunk_drops_salvage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recorders",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lapsed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.add_column("sessions", sa.Column("recorder", sa.String(), nullable=True))
    op.create_index("ix_sessions_recorder", "sessions", ["recorder"])


def downgrade() -> None:
    op.drop_index("ix_sessions_recorder", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("recorder")
    op.drop_table("recorders")
