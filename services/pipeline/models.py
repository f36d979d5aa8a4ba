"""The pipeline's registry: sessions, chunks, the hash-chained audit log and the work queue."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from lucid_assets.core.states import ChunkState


def now() -> datetime:
    return datetime.now(UTC)


class SessionRow(SQLModel, table=True):
    __tablename__ = "sessions"
    id: str = Field(primary_key=True)
    name: str
    state: str = Field(index=True)
    labels: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    video: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    chunk_seconds: int = 10
    retention_days: int | None = None
    encoder: str | None = None
    created_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    sealed_at: datetime | None = None
    updated_at: datetime = Field(default_factory=now, index=True)  # indexed (0005): the insight follower's recent ones
    expected_chunks: int | None = None  # known once the recorder has finalized
    merkle_root: str | None = None
    manifest_version: int | None = None
    manifest_sha256: str | None = None
    failure_reason: str | None = None
    verification: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # last verify
    end_reason: str | None = None  # why the recording ended: operator stop, source ended, recorder restart
    # added in 0004 (issue 17): the recorder that started it (its authenticated identity, never a claim)
    recorder: str | None = Field(default=None, index=True)


class ChunkRow(SQLModel, table=True):
    __tablename__ = "chunks"
    session_id: str = Field(primary_key=True, foreign_key="sessions.id")
    seq: int = Field(primary_key=True)
    sha256: str
    size: int
    duration_ms: int = 0
    frames: int = 0
    path: str
    # added in 0003: server defaults fill the rows registered before (none dropped, none salvaged)
    dropped_frames: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    salvaged: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    registered_at: datetime = Field(default_factory=now)
    state: str = Field(
        default=ChunkState.REGISTERED.value, index=True
    )  # ChunkState; indexed: batches look for registered ones
    envelope_sha256: str | None = None
    stored_size: int | None = None
    compressed: bool | None = None
    stored_at: datetime | None = None


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("session_id", "idx"),)
    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(index=True)
    idx: int
    entry: dict = Field(sa_column=Column(JSON, nullable=False))
    prev_hash: str
    hash: str


class WorkItem(SQLModel, table=True):
    __tablename__ = "work_queue"
    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(index=True)
    up_to_seq: int
    reason: str
    created_at: datetime = Field(default_factory=now)


class RecorderRow(SQLModel, table=True):
    """A recorder that announced itself (added in 0004, issue 17): its identity is its service token's."""

    __tablename__ = "recorders"
    name: str = Field(primary_key=True)  # recorder, recorder-<id>
    url: str
    capacity: int
    sources: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # SourceKind values
    first_seen: datetime = Field(default_factory=now)
    heartbeat_at: datetime = Field(default_factory=now)
    lapsed_at: datetime | None = None  # its heartbeat lapsed and its live sessions were finalized


class ClaimRow(SQLModel, table=True):
    """A processing run's lease on a session (added in 0005, issue 17): while it holds, other runs
    leave the session to it, so several processing workers split the queue instead of repeating
    each other's work. A lease that is not renewed lapses; the work is idempotent either way."""

    __tablename__ = "work_claims"
    session_id: str = Field(primary_key=True)
    holder: str = Field(index=True)  # the run that holds it (a Dagster run id)
    claimed_at: datetime = Field(default_factory=now)
    expires_at: datetime = Field(index=True)


TABLES = (SessionRow, ChunkRow, AuditRow, WorkItem, RecorderRow, ClaimRow)
