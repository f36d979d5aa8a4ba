"""Baseline: the pipeline registry exactly as Lucid 0.1 made it with SQLModel's create_all.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-01

The DDL was read off `CreateTable(...).compile()` of the 0.1 models on SQLite and PostgreSQL:
SQLModel's AutoString is a plain VARCHAR (sa.String()), its UTCDateTime is DateTime(timezone=True)
(TIMESTAMP WITH TIME ZONE on PostgreSQL, DATETIME on SQLite), the integer primary keys of audit_log
and work_queue autoincrement (SERIAL on PostgreSQL, the rowid on SQLite), constraint names are left
to the database as create_all left them. A database made by 0.1 is stamped here, not re-created.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("video", sa.JSON(), nullable=False),
        sa.Column("chunk_seconds", sa.Integer(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("encoder", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("stopped_at", TS, nullable=True),
        sa.Column("sealed_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("expected_chunks", sa.Integer(), nullable=True),
        sa.Column("merkle_root", sa.String(), nullable=True),
        sa.Column("manifest_version", sa.Integer(), nullable=True),
        sa.Column("manifest_sha256", sa.String(), nullable=True),
        sa.Column("failure_reason", sa.String(), nullable=True),
        sa.Column("verification", sa.JSON(), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sessions_state", "sessions", ["state"], unique=False)
    op.create_table(
        "chunks",
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("registered_at", TS, nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("envelope_sha256", sa.String(), nullable=True),
        sa.Column("stored_size", sa.Integer(), nullable=True),
        sa.Column("compressed", sa.Boolean(), nullable=True),
        sa.Column("stored_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("session_id", "seq"),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "idx"),
    )
    op.create_index("ix_audit_log_session_id", "audit_log", ["session_id"], unique=False)
    op.create_table(
        "work_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("up_to_seq", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_work_queue_session_id", "work_queue", ["session_id"], unique=False)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: that would drop every recording's registry")
