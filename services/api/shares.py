"""Share links (issue 16): a read-only credential for one session, made by an operator, that needs
no API key. Only the SHA-256 of its token is stored (like API keys); every use re-reads the row and
the session, so revocation, expiry and crypto-shredding cut it at once. A share does not depend on
the master key: its row lives in the gateway's own database."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import ColumnElement
from sqlmodel import Field, SQLModel, select

from lucid_assets.clients import ServiceError
from lucid_assets.core.states import Note, ShareRevocation, ShareStatus, State
from lucid_assets.models import AuditNote, CreateShare, Playlist, PlaylistItem, Session, ShareWindow
from services.common.db import Database
from services.common.errors import ApiError, not_found
from services.common.peers import call

from .auth import bearer, hash_key
from .deps import Gateway

PREFIX = "lucid_share_"
INVALID = "this share link is invalid, expired or revoked"


def _now() -> datetime:
    return datetime.now(UTC)


class ShareRow(SQLModel, table=True):
    __tablename__ = "shares"
    id: str = Field(primary_key=True)
    session_id: str = Field(index=True)
    token_hash: str = Field(index=True, unique=True)
    created_by: str = Field(index=True)  # the id of the API key that made it
    created_at: datetime = Field(default_factory=_now)
    expires_at: datetime
    window_from_ms: int | None = None
    window_to_ms: int | None = None
    may_download: bool = False
    note: str | None = None
    revoked_at: datetime | None = None


def utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def window(row: ShareRow) -> ShareWindow | None:
    if row.window_from_ms is None or row.window_to_ms is None:
        return None
    return ShareWindow(from_ms=row.window_from_ms, to_ms=row.window_to_ms)


def status(row: ShareRow, now: datetime | None = None) -> ShareStatus:
    if row.revoked_at is not None:
        return ShareStatus.REVOKED
    if utc(row.expires_at) <= (now or _now()):
        return ShareStatus.EXPIRED
    return ShareStatus.ACTIVE


def info_dict(row: ShareRow) -> dict:
    """What the share's holder sees of it."""
    w = window(row)
    return {
        "id": row.id,
        "expires_at": utc(row.expires_at).isoformat(),
        "window": w.model_dump() if w else None,
        "may_download": row.may_download,
        "note": row.note,
    }


def share_dict(row: ShareRow) -> dict:
    """What an operator sees (never the token: only its hash is kept)."""
    return {
        **info_dict(row),
        "session_id": row.session_id,
        "created_by": f"key:{row.created_by}",
        "created_at": utc(row.created_at).isoformat(),
        "status": status(row),
    }


def create(db: Database, session_id: str, key_id: str, body: CreateShare) -> tuple[ShareRow, str]:
    token = PREFIX + secrets.token_urlsafe(32)
    row = ShareRow(
        id=secrets.token_hex(8),
        session_id=session_id,
        token_hash=hash_key(token),
        created_by=key_id,
        expires_at=_now() + timedelta(seconds=body.expires_in),
        window_from_ms=body.window.from_ms if body.window else None,
        window_to_ms=body.window.to_ms if body.window else None,
        may_download=body.may_download,
        note=body.note,
    )
    return db.insert(row), token


def forget(db: Database, share_id: str) -> None:
    """Undo a create whose audit note could not be written (a refused request writes nothing)."""
    with db.write() as s:
        row = s.get(ShareRow, share_id)
        if row is not None:
            s.delete(row)


def list_for(db: Database, session_id: str) -> list[ShareRow]:
    with db.read() as s:
        return list(
            s.exec(select(ShareRow).where(ShareRow.session_id == session_id).order_by(ShareRow.created_at)).all()
        )


def revoke(db: Database, session_id: str, share_id: str) -> tuple[ShareRow, bool]:
    """The share, revoked; True if this call revoked it (False: it already was)."""
    with db.write() as s:
        row = s.get(ShareRow, share_id)
        if row is None or row.session_id != session_id:
            raise not_found(f"share {share_id} of session {session_id} does not exist")
        changed = row.revoked_at is None
        if changed:
            row.revoked_at = _now()
            s.add(row)
        s.flush()
        s.refresh(row)
        s.expunge(row)
        return row, changed


def revoke_where(db: Database, condition: ColumnElement[bool]) -> list[ShareRow]:
    """Revoke every share matching `condition` that was not revoked yet; returns those."""
    with db.write() as s:
        rows = list(s.exec(select(ShareRow).where(condition, ShareRow.revoked_at.is_(None))).all())
        for row in rows:
            row.revoked_at = _now()
            s.add(row)
        s.flush()
        for row in rows:
            s.refresh(row)
            s.expunge(row)
        return rows


def note(gw: Gateway, session_id: str, event: Note, detail: dict, actor: str) -> None:
    gw.pipeline.audit_note(session_id, AuditNote(event=event, detail=detail), actor=actor)


def note_revoked(gw: Gateway, rows: Iterable[ShareRow], actor: str, reason: ShareRevocation) -> None:
    for row in rows:
        note(gw, row.session_id, Note.SHARE_REVOKED, {"share": row.id, "reason": reason}, actor)


def invalid() -> ApiError:
    return ApiError(401, "share_invalid", INVALID, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Grant:
    """A share that is valid right now, and its session (read on this request)."""

    row: ShareRow
    session: Session

    @property
    def actor(self) -> str:
        return f"share:{self.row.id}"

    @property
    def session_id(self) -> str:
        return self.row.session_id

    @property
    def window(self) -> ShareWindow | None:
        return window(self.row)


def _grant(gw: Gateway, row: ShareRow | None) -> Grant:
    if row is None or status(row) != ShareStatus.ACTIVE:
        raise invalid()
    try:
        session = gw.pipeline.session(row.session_id)
    except ServiceError as exc:
        if exc.status == 404:
            raise invalid() from None
        raise
    if session.state == State.DELETED:
        raise invalid()
    return Grant(row, session)


def by_token(gw: Gateway, token: str) -> Grant:
    digest = hash_key(token)
    with gw.keys_db.read() as s:
        row = s.exec(select(ShareRow).where(ShareRow.token_hash == digest)).first()
    if row is not None and not hmac.compare_digest(row.token_hash, digest):
        row = None
    return _grant(gw, row)


def by_id(gw: Gateway, share_id: str, session_id: str) -> Grant:
    """The share a media link was made through (the link names its session, checked already)."""
    with gw.keys_db.read() as s:
        row = s.get(ShareRow, share_id)
    if row is not None and row.session_id != session_id:
        row = None
    return _grant(gw, row)


def share_credential(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Grant:
    """`Authorization: Bearer lucid_share_…`: the only credential the /v1/share routes take."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise invalid()
    return by_token(request.app.state.gateway, creds.credentials)


def window_seqs(items: Iterable[PlaylistItem], w: ShareWindow | None) -> list[int]:
    """The seqs of the chunks overlapping [from_ms, to_ms): chunk i spans [sum of the earlier
    durations, + its own). A zero-length chunk counts where it starts. No window: every chunk."""
    ordered = sorted(items, key=lambda i: i.seq)
    if w is None:
        return [i.seq for i in ordered]
    out, start = [], 0
    for i in ordered:
        end = start + i.duration_ms
        if start < w.to_ms and (end > w.from_ms or (i.duration_ms == 0 and start >= w.from_ms)):
            out.append(i.seq)
        start = end
    return out


async def window_of(gw: Gateway, grant: Grant) -> list[int]:
    """The seqs of the grant's session's catalogued chunks within its window (all of them: none)."""
    items = Playlist.model_validate(await call("GET", f"{gw.storage_url}/sessions/{grant.session_id}/playlist")).items
    return window_seqs(items, grant.window)
