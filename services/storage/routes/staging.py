"""Staging (issue 17): a recorder on another host uploads each finished segment here before it
registers it, so any host's processing run can store it. The segment is checked against its
declared SHA-256, sealed under the session's data key and placed in the chunk store (a local
directory or a bucket) at most once per seq; a processing run opens it, envelopes it and drops it."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from lucid_assets.core import envelope
from lucid_assets.core.states import REGISTRABLE
from lucid_assets.models import Staged
from lucid_assets.trust import RECORDER
from services.common.errors import ERRORS, ApiError
from services.common.guard import allow, check_recorder
from services.common.ids import Seq
from services.common.uploads import declared, receive_checked

from ..deps import Ctx, Sid

router = APIRouter(prefix="/sessions/{session_id}/staging", tags=["staging"], responses=ERRORS)


@router.put(
    "/{seq}",
    response_model=Staged,
    dependencies=[allow(RECORDER)],
    summary="Stage a recorded segment (the recorder; body: the MPEG-TS bytes, X-Content-SHA256)",
)
async def stage(sid: Sid, seq: Seq, request: Request, ctx: Ctx) -> Staged:
    limit = ctx.max_chunk_bytes
    want, _ = declared(request, seq, limit)
    session = await run_in_threadpool(ctx.pipeline.session, sid)
    check_recorder(request, session)
    if session.state not in REGISTRABLE:
        raise ApiError(
            409, "illegal_state", f"segments are staged while recording, not while {session.state}", state=session.state
        )
    parts: list[bytes] = []
    size = await receive_checked(request, limit, want, parts.append)
    created = await run_in_threadpool(_place, ctx, sid, seq, b"".join(parts), want)
    return Staged(path=ctx.store.staged_ref(sid, seq), sha256=want, size=size, created=created)


def _place(ctx, sid: str, seq: int, raw: bytes, sha: str) -> bool:
    """Placed (True), or identical bytes were there (False); other bytes there: 409."""
    dek = ctx.store.data_key(sid, ctx.keyring, create=True)
    if ctx.store.write_staged(sid, seq, raw, dek=dek):
        return True
    try:
        there = ctx.store.read_staged(sid, seq, dek=dek)
    except envelope.EnvelopeError:  # damaged at rest: nothing could ever read it, the upload replaces it
        ctx.store.objects.delete(ctx.store.staging_key(sid, seq))
        return ctx.store.write_staged(sid, seq, raw, dek=dek)
    if there is None:  # stored and dropped meanwhile: staged again, the registry decides (same bytes or 409)
        return ctx.store.write_staged(sid, seq, raw, dek=dek)
    if hashlib.sha256(there).hexdigest() == sha:
        return False
    raise ApiError(409, "chunk_conflict", f"segment {seq} was already staged with other bytes")
