"""Playback and export: the playable prefix (HLS), the whole recording as MPEG-TS, and as a
seekable fragmented MP4 (size, ETag, Range)."""

from __future__ import annotations

import hashlib
import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lucid_assets.core import catalog
from lucid_assets.models import Playlist
from lucid_assets.playback import DamagedChunk, Mp4Export, NotExportable, coalesce, plain_chunks, plain_size
from lucid_assets.trust import API, DAGSTER
from services.common.errors import ERRORS, RANGE_ERRORS, ApiError, not_found
from services.common.guard import allow
from services.common.streaming import ProducedResponse

from ..deps import Ctx, Sid, Storage
from ..ranges import parse_range

log = logging.getLogger("lucid.storage")
router = APIRouter(
    prefix="/sessions/{session_id}", tags=["exports"], responses=ERRORS, dependencies=[allow(API, DAGSTER)]
)
MP4 = {
    200: {"content": {"video/mp4": {}}},
    206: {"description": "the requested range", "content": {"video/mp4": {}}},
    **RANGE_ERRORS,
}


def stored_prefix(ctx: Storage, sid: str) -> list[int]:
    """The stored seqs 0..k-1 without a gap: what can be played so far."""
    seqs: list[int] = []
    for seq in ctx.store.stored_seqs(sid):
        if seq != len(seqs):
            break
        seqs.append(seq)
    return seqs


def playable(ctx: Storage, sid: str) -> tuple[list[int], str | None]:
    """A sealed session's chunks per its signed manifest, with a key naming exactly those
    envelopes (their hashes); a live one's durable prefix, with no key."""
    doc = ctx.store.latest_manifest_doc(sid)
    if doc is not None and "_error" not in doc:
        chunks = doc["body"]["chunks"]
        seqs, key = [c["seq"] for c in chunks], hashlib.sha256(json.dumps(chunks, sort_keys=True).encode()).hexdigest()
    else:
        seqs, key = stored_prefix(ctx, sid), None
    if not seqs:
        raise not_found(f"session {sid} has no stored chunks yet")
    return seqs, key


def checked(sid: str, parts):
    """Pull the first piece now, so damage there is a clear 409 before any byte is sent; damage
    met later cuts the stream (the status line is gone), never sends bad video."""
    parts = iter(parts)
    try:
        first = next(parts)
    except DamagedChunk as exc:
        raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None

    def body():
        try:
            yield first
            yield from parts
        except DamagedChunk as exc:
            log.error("stopped streaming %s: %s", sid, exc)
            raise

    return body()


@router.get("/playlist", response_model=Playlist)
def playlist(sid: Sid, ctx: Ctx):
    """The catalogued chunks 0..k-1 without a gap, for the HLS playlist."""
    out = []
    for r in ctx.lake.rows(catalog.CHUNKS, sid):
        if r["seq"] != len(out):
            break
        out.append({"seq": r["seq"], "duration_ms": r["duration_ms"], "size": r["raw_size"]})
    return {"items": out}


@router.get("/recording.ts", response_class=ProducedResponse, responses={200: {"content": {"video/mp2t": {}}}})
def recording_ts(sid: Sid, ctx: Ctx):
    seqs, _ = playable(ctx, sid)
    try:
        size = plain_size(ctx.store, sid, seqs)
    except DamagedChunk as exc:
        raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None
    return ProducedResponse(
        checked(sid, plain_chunks(ctx.store, ctx.keyring, sid, seqs)),
        media_type="video/mp2t",
        headers={
            "Content-Disposition": f'attachment; filename="{sid}.ts"',
            "Content-Length": str(size),
            "Cache-Control": "no-store",
        },
    )


@router.get("/recording.mp4", response_class=ProducedResponse, responses=MP4)
@router.head("/recording.mp4", response_class=ProducedResponse, responses=MP4)
def recording_mp4(sid: Sid, request: Request, ctx: Ctx):
    """Fragmented MP4 with a size, an ETag and Range: a browser seeks anywhere in it by
    fetching only the fragments (chunks) it needs."""
    seqs, key = playable(ctx, sid)
    try:
        export = Mp4Export(ctx.store, ctx.keyring, sid, seqs, cache_key=key)
    except DamagedChunk as exc:
        raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None
    except NotExportable as exc:
        raise ApiError(422, "not_exportable", f"no MP4 for session {sid}: {exc}") from None
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-store",
        "ETag": export.etag,
        "Content-Disposition": f'attachment; filename="{sid}.mp4"',
    }
    if_range = request.headers.get("if-range")
    rng = parse_range(request.headers.get("range"), export.size) if if_range in (None, export.etag) else None
    start, end = rng if rng is not None else (0, export.size - 1)
    headers["Content-Length"] = str(end - start + 1)
    status = 200
    if rng is not None:
        status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{export.size}"
    if request.method == "HEAD":
        return Response(status_code=status, media_type="video/mp4", headers=headers)
    return ProducedResponse(
        checked(sid, coalesce(export.byte_range(start, end))),
        status_code=status,
        media_type="video/mp4",
        headers=headers,
    )
