"""Index chunks.state: a processing batch asks for the sessions with chunks still `registered`
(GET /work/pending), which without it scans every chunk row ever registered.

Revision ID: 0002_chunks_state_index
Revises: 0001_baseline
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_chunks_state_index"
down_revision: str | Sequence[str] | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_chunks_state", "chunks", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_chunks_state", table_name="chunks")
