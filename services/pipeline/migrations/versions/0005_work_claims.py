"""Work claims (issue 17): a processing run leases the sessions it takes, so several processing
workers (hosts, or concurrent batch runs) split the queue instead of each taking all of it. And an
index on sessions.updated_at: the live insight follower asks for the sessions that changed in the
last hour instead of looking at every session in the store.

Revision ID: 0005_work_claims
Revises: 0004_recorders
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_work_claims"
down_revision: str | Sequence[str] | None = "0004_recorders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "work_claims",
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("ix_work_claims_holder", "work_claims", ["holder"])
    op.create_index("ix_work_claims_expires_at", "work_claims", ["expires_at"])
    op.create_index("ix_sessions_updated_at", "sessions", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_updated_at", table_name="sessions")
    op.drop_index("ix_work_claims_expires_at", table_name="work_claims")
    op.drop_index("ix_work_claims_holder", table_name="work_claims")
    op.drop_table("work_claims")
