"""Playback and export: the playable prefix (HLS), the whole recording as MPEG-TS, and as a
seekable fragmented MP4 (size, ETag, Range)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from lucid_assets.core import catalog
from lucid_assets.core.states import State
from lucid_assets.evidence.bundle import EvidenceBundle, NotSealed, OutOfScope
from lucid_assets.models import Playlist
from lucid_assets.playback import (
    DamagedChunk,
    Mp4Export,
    NotExportable,
    coalesce,
    plain_chunks,
    plain_size,
    sealed_cache_key,
)
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


@dataclass(frozen=True)
class Scope:
    """A contiguous run of chunks (a share's window, chosen by the gateway); none = all of them."""

    first: int | None
    last: int | None

    def of(self, seqs: list[int]) -> list[int]:
        if self.first is None and self.last is None:
            return seqs
        first = 0 if self.first is None else self.first
        last = seqs[-1] if self.last is None else self.last
        if not (seqs and first <= last and first in seqs and last in seqs):
            raise ApiError(
                422,
                "invalid_range",
                f"chunks {first}..{last} are not within the playable chunks 0..{seqs[-1] if seqs else -1}",
            )
        return [q for q in seqs if first <= q <= last]


def scope(
    first: Annotated[int | None, Query(ge=0, description="the first chunk (seq) to include")] = None,
    last: Annotated[int | None, Query(ge=0, description="the last chunk (seq) to include")] = None,
) -> Scope:
    return Scope(first, last)


Scoped = Annotated[Scope, Depends(scope)]


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
        seqs, key = [c["seq"] for c in chunks], sealed_cache_key(chunks)
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
def recording_ts(sid: Sid, ctx: Ctx, only: Scoped):
    seqs = only.of(playable(ctx, sid)[0])
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
def recording_mp4(sid: Sid, request: Request, ctx: Ctx, only: Scoped):
    """Fragmented MP4 with a size, an ETag and Range: a browser seeks anywhere in it by
    fetching only the fragments (chunks) it needs."""
    seqs, key = playable(ctx, sid)
    if only != Scope(None, None):
        seqs, key = only.of(seqs), None
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


@router.get(
    "/evidence",
    response_class=ProducedResponse,
    responses={
        200: {"content": {"application/x-tar": {}}},
        409: ERRORS[409] | {"description": "not sealed yet (`not_sealed`), or a chunk is damaged (`chunk_damaged`)"},
    },
)
def evidence(
    sid: Sid,
    ctx: Ctx,
    only: Scoped,
    from_ms: Annotated[int | None, Query(ge=0, description="the share window these chunks were chosen for")] = None,
    to_ms: Annotated[int | None, Query(ge=0)] = None,
):
    """The evidence bundle (docs/FORMAT.md §10) of a sealed session, or of a run of its chunks:
    a deterministic tar with the chunks, the MP4, the signed manifest and checkpoints, the proofs,
    the signed audit log, the public key and a standalone verifier."""
    session = ctx.pipeline.session(sid)
    if session.state != State.SEALED:
        raise ApiError(409, "not_sealed", f"session {sid} is {session.state}: only a sealed session has evidence")
    rows = [e.model_dump() for e in ctx.pipeline.events(sid)]
    window = (from_ms, to_ms) if from_ms is not None and to_ms is not None else None
    try:
        bundle = EvidenceBundle(
            ctx.store, ctx.keyring, ctx.public_key, sid, rows, first=only.first, last=only.last, window_ms=window
        )
    except NotSealed as exc:
        raise ApiError(409, "not_sealed", str(exc)) from None
    except OutOfScope as exc:
        raise ApiError(422, "invalid_range", str(exc)) from None
    except DamagedChunk as exc:
        raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None
    except NotExportable as exc:
        raise ApiError(422, "not_exportable", f"no evidence for session {sid}: {exc}") from None
    return ProducedResponse(
        checked(sid, bundle.stream()),
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{bundle.name}"',
            "Content-Length": str(bundle.size),
            "Cache-Control": "no-store",
        },
    )
