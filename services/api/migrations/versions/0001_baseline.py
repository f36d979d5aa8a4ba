"""Baseline: the gateway's API keys exactly as Lucid 0.1 made them with SQLModel's create_all.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-01

Read off `CreateTable(...).compile()` of the 0.1 model on SQLite and PostgreSQL: AutoString is a
plain VARCHAR, UTCDateTime is DateTime(timezone=True); only the SHA-256 of a key is stored, looked up
through the unique index ix_api_keys_key_hash. A database made by 0.1 is stamped here, not re-created.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: that would drop every API key")
