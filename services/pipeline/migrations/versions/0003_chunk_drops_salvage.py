"""chunks.dropped_frames and chunks.salvaged: how many frame slots of a chunk's span the recorder
could not capture (CPU starvation, a stalled source), and whether the chunk is a segment cut short
by a recorder crash and salvaged up to its last complete frame. Rows registered before this
revision get 0 and false (their drops were never counted; nothing was salvaged then).

Revision ID: 0003_chunk_drops_salvage
Revises: 0002_chunks_state_index
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_chunk_drops_salvage"
down_revision: str | Sequence[str] | None = "0002_chunks_state_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("chunks", sa.Column("dropped_frames", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.add_column("chunks", sa.Column("salvaged", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("salvaged")
        batch.drop_column("dropped_frames")
