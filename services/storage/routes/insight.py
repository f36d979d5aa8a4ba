"""Insight (issue 15): a session's screen text, activity and seek previews, and the search across
sessions. Built in memory from the sealed records with the keys this service holds; for the gateway
only (it checked the caller's role and writes the search log)."""

from __future__ import annotations

import bisect

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from lucid_assets.insight import index
from lucid_assets.insight.view import IDLE_SECONDS, SessionView, search
from lucid_assets.models import Activity, SearchQuery, SearchResult, TextPage
from lucid_assets.trust import API
from services.common.errors import ERRORS, ApiError
from services.common.guard import allow
from services.common.ids import SessionId

from ..deps import Ctx, Storage

router = APIRouter(tags=["insight"], responses=ERRORS, dependencies=[allow(API)])
JPEG = {200: {"content": {"image/jpeg": {}}}}
VTT = {200: {"content": {"text/vtt": {}}}}


def view(ctx: Storage, sid: str) -> SessionView:
    return SessionView(ctx.store, ctx.keyring, sid, dek=ctx.dek(sid))  # 410 once shredded


@router.get("/sessions/{session_id}/text", response_model=TextPage)
def text(
    session_id: SessionId,
    ctx: Ctx,
    from_ms: int = Query(0, ge=0, le=10**10),
    to_ms: int | None = Query(None, ge=0, le=10**10),
):
    v = view(ctx, session_id)
    lines = v.text(from_ms, to_ms)
    items = [
        {**ln, "t_ms": ln["t"], "words": [{"text": w[0], "box": w[1:5], "conf": w[5]} for w in ln["words"]]}
        for ln in lines
    ]
    return {"items": items, "chunks_derived": v.derived()["text"]}


@router.get("/sessions/{session_id}/activity", response_model=Activity)
def activity(session_id: SessionId, ctx: Ctx, idle_seconds: int = Query(IDLE_SECONDS, ge=1, le=3600)):
    return view(ctx, session_id).activity(idle_seconds)


@router.get("/sessions/{session_id}/thumbnails.vtt", response_class=Response, responses=VTT)
def thumbnails_vtt(session_id: SessionId, ctx: Ctx):
    """Cues point at sprite sheets relative to this URL (`thumbnails/<sheet>.jpg#xywh=...`)."""
    return Response(view(ctx, session_id).vtt("thumbnails/{sheet}.jpg"), media_type="text/vtt")


@router.get("/sessions/{session_id}/thumbnails/{sheet}.jpg", response_class=Response, responses=JPEG)
def sprite(session_id: SessionId, ctx: Ctx, sheet: int):
    if not 0 <= sheet < 10**6:
        raise ApiError(404, "not_found", f"no sprite sheet {sheet}")
    jpeg = view(ctx, session_id).sprite(sheet)
    if jpeg is None:
        raise ApiError(404, "not_found", f"session {session_id} has no sprite sheet {sheet} (yet)")
    return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=60"})


@router.get("/sessions/{session_id}/thumbnail", response_class=Response, responses=JPEG)
def thumbnail(session_id: SessionId, ctx: Ctx, t_ms: int = Query(0, ge=0, le=10**10)):
    """The thumbnail at or before t_ms (a search hit's picture)."""
    thumbs = view(ctx, session_id).thumbnails()
    if not thumbs:
        raise ApiError(404, "not_found", f"session {session_id} has no thumbnails (yet)")
    i = max(0, bisect.bisect_right([t for t, _ in thumbs], t_ms) - 1)
    return Response(thumbs[i][1], media_type="image/jpeg", headers={"cache-control": "private, max-age=60"})


@router.post("/search", response_model=SearchResult)
async def search_sessions(body: SearchQuery, ctx: Ctx):
    try:
        query = index.parse_query(body.q)
    except ValueError as exc:
        raise ApiError(422, "bad_query", f"q: {exc}") from None
    return await run_in_threadpool(_search, ctx, query, body)


def _search(ctx: Storage, query: index.Query, body: SearchQuery) -> dict:
    sessions = [str(s) for s in body.sessions] if body.sessions is not None else ctx.text_index.sessions_newest_first()
    keys = ctx.search_keys.get(sessions)
    hits = search(ctx.store, ctx.keyring, ctx.text_index, keys, query, limit=body.limit)
    return {"items": [{**h, "t_ms": h["t"]} for h in hits], "sessions_searched": len(keys)}
