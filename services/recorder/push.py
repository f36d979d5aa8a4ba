"""Push ingest: an external agent uploads a chunk; it is hashed while it streams to a temporary
file, checked against the SHA-256 the agent declared, placed durably under its seq (never over
other bytes), then registered like a recorded segment."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from lucid_assets.core.states import REGISTRABLE
from lucid_assets.files import publish
from lucid_assets.models import Session
from services.common.errors import ApiError
from services.common.uploads import declared, receive_checked

from .capture import Segment, segment_name
from .recorder import Recorder


def check_pushable(session: Session) -> None:
    if session.source.get("kind") != "push":
        raise ApiError(
            409, "not_push", "this session records its own source; chunks cannot be pushed", state=session.state
        )
    if session.state not in REGISTRABLE:
        raise ApiError(
            409, "illegal_state", f"chunks are accepted while recording, not while {session.state}", state=session.state
        )


async def receive(rec: Recorder, session_id: str, seq: int, request: Request) -> tuple[Segment, bool]:
    """Stream the body to disk, hashing it; True with the segment if it was placed, False if the
    same bytes were already there."""
    want, duration_ms = declared(request, seq, rec.settings.max_chunk_bytes)
    check_pushable(await run_in_threadpool(rec.pipeline.session, session_id))
    limit = rec.settings.max_chunk_bytes
    d = rec.recordings / session_id
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{segment_name(seq)}.partial-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            size = await receive_checked(request, limit, want, f.write)
        final = d / segment_name(seq)
        placed = await run_in_threadpool(place, tmp, final, want)
    finally:
        tmp.unlink(missing_ok=True)
    return Segment(seq, final, want, size, 0, duration_ms), placed


def place(tmp: Path, final: Path, sha: str) -> bool:
    """Move the upload into place unless the seq exists: True if placed, False if identical
    bytes were already there, 409 if other bytes are."""
    if publish(tmp, final, exclusive=True):
        return True
    if hashlib.sha256(final.read_bytes()).hexdigest() == sha:
        return False
    raise ApiError(409, "chunk_conflict", f"chunk {final.stem} was already pushed with other bytes")
