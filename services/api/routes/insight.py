"""Finding what happened inside recordings (issue 15): search across sessions (every search is
logged with who asked what), a session's screen text, activity and seek previews, and markers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator
from sqlmodel import select

from lucid_assets.core.states import Note, State
from lucid_assets.models import Activity, AuditNote, Marker, MarkerIn, MarkerList, SearchQuery, SearchResult, TextPage
from services.common.errors import ERRORS, ApiError
from services.common.ids import LabelFilter, SessionId
from services.common.peers import call

from ..auth import Principal, admin, operator, viewer
from ..deps import Gateway, Gw
from ..searches import SearchLogRow
from .sessions import AUTH

router = APIRouter(prefix="/v1", tags=["insight"], responses={**ERRORS, **AUTH})
JPEG = {200: {"content": {"image/jpeg": {}}}}
VTT = {200: {"content": {"text/vtt": {}}}}
MARKABLE = (State.RECORDING, State.PAUSED, State.FINALIZING, State.PROCESSING, State.SEALED, State.FAILED)


def _iso_only(v):
    """A time is ISO 8601: pydantic would also take a number as seconds since 1970."""
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return v
        raise ValueError("an ISO 8601 time (2026-12-01T09:00:00Z), not a number")
    return v


Time = Annotated[datetime | None, BeforeValidator(_iso_only)]


class SearchLogEntry(BaseModel):
    at: str
    actor: str
    role: str
    query: str
    filters: dict
    sessions_searched: int


class SearchLog(BaseModel):
    items: list[SearchLogEntry]


def _sessions(gw: Gateway, labels: list[str], start: datetime | None, end: datetime | None) -> list[str]:
    """The sessions a filtered search covers, newest first (labels and a time window): one call for
    ids and spans only, not pages of full sessions."""
    out = []
    for s in gw.pipeline.spans(labels=labels).items:
        _NAMES[s.id] = s.name
        began = _aware(datetime.fromisoformat(s.started_at or s.created_at))
        ended = _aware(datetime.fromisoformat(s.stopped_at)) if s.stopped_at else datetime.now(UTC)
        if (end is None or began <= end) and (start is None or ended >= start):
            out.append(s.id)
    return out


class _Names(dict):
    """Session id -> name (a session's name never changes), bounded."""

    def __setitem__(self, key, value):
        if len(self) >= 100_000:
            self.clear()
        super().__setitem__(key, value)


_NAMES = _Names()


def _name(gw: Gateway, session_id: str) -> str:
    if session_id not in _NAMES:
        _NAMES[session_id] = gw.pipeline.session(session_id).name
    return _NAMES[session_id]


def _aware(t: datetime | None) -> datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=UTC)


@router.get("/search", summary="Search the text that was on screen, across sessions", response_model=SearchResult)
def search(
    gw: Gw,
    q: str = Query(..., min_length=1, max_length=500, description='words, "a phrase", prefix*'),
    label: list[LabelFilter] = Query(default=[], description="only sessions with this label (key or key=value)"),
    start: Annotated[Time, Query(alias="from", description="only sessions recording at or after this time")] = None,
    end: Annotated[Time, Query(alias="to", description="only sessions recording at or before this time")] = None,
    limit: int = Query(20, ge=1, le=200),
    who: Principal = Depends(viewer),
):
    start, end = _aware(start), _aware(end)
    if start and end and start > end:
        raise ApiError(422, "bad_window", "from is after to")
    filtered = bool(label or start or end)
    sessions = _sessions(gw, label, start, end) if filtered else None
    result = gw.storage.search(SearchQuery(q=q, sessions=sessions, limit=limit))
    for hit in result.items:
        hit.session_name = _name(gw, hit.session_id)
        hit.thumbnail = f"/v1/sessions/{hit.session_id}/thumbnail?t_ms={hit.t_ms}"
        hit.play = f"/viewer/#{hit.session_id}?t={hit.t_ms / 1000:.1f}"
    filters = {"label": label, "from": start.isoformat() if start else None, "to": end.isoformat() if end else None}
    with gw.keys_db.write() as s:
        s.add(
            SearchLogRow(
                at=datetime.now(UTC),
                actor=who.actor,
                role=who.role.name.lower(),
                query=q,
                filters=json.dumps(filters, sort_keys=True),
                sessions_searched=result.sessions_searched,
            )
        )
        s.commit()
    return result


@router.get("/search/log", summary="Who searched for what (admin)", response_model=SearchLog)
def search_log(
    gw: Gw,
    actor: str | None = Query(None, max_length=200),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(admin),
):
    with gw.keys_db.read() as s:
        stmt = select(SearchLogRow).order_by(SearchLogRow.id.desc()).limit(limit)
        if actor:
            stmt = stmt.where(SearchLogRow.actor == actor)
        rows = s.exec(stmt).all()
        items = [
            {**r.model_dump(exclude={"id", "filters", "at"}), "at": r.at.isoformat(), "filters": json.loads(r.filters)}
            for r in rows
        ]
    return {"items": items}


@router.get(
    "/sessions/{session_id}/text", summary="Screen text, line by line, with time and box", response_model=TextPage
)
def text(
    session_id: SessionId,
    gw: Gw,
    start: int = Query(0, alias="from", ge=0, le=10**10, description="ms from the recording's start"),
    end: int | None = Query(None, alias="to", ge=0, le=10**10, description="ms (exclusive)"),
    _: Principal = Depends(viewer),
):
    gw.pipeline.session(session_id)  # 404 for an unknown session
    return gw.storage.text(session_id, from_ms=start, to_ms=end)


@router.get(
    "/sessions/{session_id}/activity", summary="Change score per second, idle spans, scenes", response_model=Activity
)
def activity(
    session_id: SessionId,
    gw: Gw,
    idle_seconds: int = Query(5, ge=1, le=3600, description="nothing changed for at least this long is idle"),
    _: Principal = Depends(viewer),
):
    gw.pipeline.session(session_id)
    return gw.storage.activity(session_id, idle_seconds=idle_seconds)


async def _relay(gw: Gateway, session_id: str, path: str, media_type: str, **params) -> Response:
    await run_in_threadpool(gw.pipeline.session, session_id)
    r = await call("GET", f"{gw.storage_url}/sessions/{session_id}/{path}", raw=True, params=params or None)
    return Response(r.content, media_type=media_type, headers={"cache-control": "private, max-age=60"})


@router.get(
    "/sessions/{session_id}/thumbnails.vtt", summary="WebVTT seek-preview track", response_class=Response, responses=VTT
)
async def thumbnails_vtt(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    return await _relay(gw, session_id, "thumbnails.vtt", "text/vtt")


@router.get(
    "/sessions/{session_id}/thumbnails/{sheet}.jpg",
    summary="A sprite sheet (10x10)",
    response_class=Response,
    responses=JPEG,
)
async def sprite(session_id: SessionId, sheet: int, gw: Gw, _: Principal = Depends(viewer)):
    if not 0 <= sheet < 10**6:
        raise ApiError(404, "not_found", f"no sprite sheet {sheet}")
    return await _relay(gw, session_id, f"thumbnails/{sheet}.jpg", "image/jpeg")


@router.get(
    "/sessions/{session_id}/thumbnail",
    summary="The thumbnail at or before t_ms",
    response_class=Response,
    responses=JPEG,
)
async def thumbnail(
    session_id: SessionId, gw: Gw, t_ms: int = Query(0, ge=0, le=10**10), _: Principal = Depends(viewer)
):
    return await _relay(gw, session_id, "thumbnail", "image/jpeg", t_ms=t_ms)


def _markers(gw: Gateway, session_id: str) -> list[dict]:
    out = []
    for e in gw.pipeline.events(session_id):
        if e.entry.get("event") == Note.MARKER:
            d = e.entry.get("detail") or {}
            out.append(
                {
                    "t_ms": d.get("t_ms", 0),
                    "note": d.get("note", ""),
                    "actor": e.entry["actor"],
                    "at": e.entry["at"],
                    "idx": e.entry["idx"],
                }
            )
    return sorted(out, key=lambda m: m["t_ms"])


@router.post(
    "/sessions/{session_id}/markers", status_code=201, summary="Mark a moment (audited)", response_model=Marker
)
def add_marker(session_id: SessionId, body: MarkerIn, gw: Gw, who: Principal = Depends(operator)):
    s = gw.pipeline.session(session_id)
    if s.state not in MARKABLE:
        raise ApiError(409, "not_markable", f"session {session_id} is {s.state}: nothing to mark", state=s.state)
    receipt = gw.pipeline.audit_note(
        session_id, AuditNote(event=Note.MARKER, detail=body.model_dump()), actor=who.actor
    )
    e = receipt.entry
    return {**body.model_dump(), "actor": e["actor"], "at": e["at"], "idx": e["idx"]}


@router.get("/sessions/{session_id}/markers", summary="The session's markers, by time", response_model=MarkerList)
def markers(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    return {"items": _markers(gw, session_id)}
