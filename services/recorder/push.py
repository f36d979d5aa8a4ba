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
from services.common.ids import MAX_CHUNK_DURATION_MS, MAX_SEQ

from .capture import Segment, segment_name
from .recorder import Recorder


def declared(request: Request, seq: int, limit: int) -> tuple[str, int]:
    """The upload's declared SHA-256 and duration, every header checked before a byte is read or
    written."""
    want = request.headers.get("x-content-sha256", "").lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ApiError(422, "invalid_request", "header X-Content-SHA256 must be the chunk's SHA-256 in hex")
    if seq < 0 or seq > MAX_SEQ:
        raise ApiError(422, "invalid_request", f"seq must be between 0 and {MAX_SEQ}")
    try:
        duration_ms = int(request.headers.get("x-chunk-duration-ms", "0"))
        length = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise ApiError(422, "invalid_request", "X-Chunk-Duration-Ms and Content-Length must be integers") from None
    if not 0 <= duration_ms <= MAX_CHUNK_DURATION_MS:
        raise ApiError(422, "invalid_request", f"X-Chunk-Duration-Ms must be between 0 and {MAX_CHUNK_DURATION_MS}")
    if length < 0:
        raise ApiError(422, "invalid_request", "Content-Length must not be negative")
    if length > limit:
        raise ApiError(413, "chunk_too_large", f"chunk is {length} bytes; the limit is {limit}")
    return want, duration_ms


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
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as f:
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise ApiError(413, "chunk_too_large", f"chunk exceeds the limit of {limit} bytes")
                digest.update(part)
                f.write(part)
        if digest.hexdigest() != want:
            raise ApiError(422, "sha256_mismatch", f"the body hashes to {digest.hexdigest()}, not {want}")
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
