"""The search log (issue 15): every search across recordings, who ran it and what it asked (not
what it found: a hit count would tell that the words were on someone's screen).

Revision ID: 0003_search_log
Revises: 0002_shares
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_search_log"
down_revision: str | Sequence[str] | None = "0002_shares"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "search_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("query", sa.String(), nullable=False),
        sa.Column("filters", sa.String(), nullable=False),
        sa.Column("sessions_searched", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_search_log_actor", "search_log", ["actor"], unique=False)
    op.create_index("ix_search_log_at", "search_log", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_search_log_at", table_name="search_log")
    op.drop_index("ix_search_log_actor", table_name="search_log")
    op.drop_table("search_log")
