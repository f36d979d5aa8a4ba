"""Share links (issue 16): one row per share of a session, only the SHA-256 of its token stored.

Revision ID: 0002_shares
Revises: 0001_baseline
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_shares"
down_revision: str | Sequence[str] | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shares",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_from_ms", sa.Integer(), nullable=True),
        sa.Column("window_to_ms", sa.Integer(), nullable=True),
        sa.Column("may_download", sa.Boolean(), nullable=False),
        sa.Column("note", sa.String(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_shares_session_id", "shares", ["session_id"], unique=False)
    op.create_index("ix_shares_token_hash", "shares", ["token_hash"], unique=True)
    op.create_index("ix_shares_created_by", "shares", ["created_by"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_shares_created_by", table_name="shares")
    op.drop_index("ix_shares_token_hash", table_name="shares")
    op.drop_index("ix_shares_session_id", table_name="shares")
    op.drop_table("shares")
