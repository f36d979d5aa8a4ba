"""/sessions: create, list, read, transitions, and what Dagster records on a session (manifest,
verification, audit notes)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from sqlalchemy import func
from sqlmodel import select

from lucid_assets.core.states import State
from lucid_assets.models import (
    AuditNote,
    AuditReceipt,
    CreateSession,
    ErrorBody,
    EventList,
    ManifestSummary,
    Session,
    SessionPage,
    SessionSpans,
    Transition,
    VerificationSummary,
)
from services.common.errors import ERRORS
from services.common.ids import MAX_OFFSET, LabelFilter, SessionId

from .. import fleet, registry
from ..deps import ANY, API, DAGSTER, RECORDER, STORAGE, Actor, Caller, Db, actor_of, allow, may, may_note
from ..models import AuditRow, SessionRow

# the gateway's calls must name the API key they act for (X-Lucid-Actor)
NO_ACTOR = {400: {"model": ErrorBody, "description": "the gateway named no API key to act for (`no_actor`)"}}
router = APIRouter(prefix="/sessions", tags=["sessions"], responses=ERRORS, dependencies=[ANY])


@router.post("", status_code=201, response_model=Session, dependencies=[allow(API)], responses=NO_ACTOR)
def create_session(body: CreateSession, db: Db, actor: Actor):
    with db.write() as s:
        row = registry.create(s, body, actor)
        return registry.session_dict(s, row)


@router.get("", response_model=SessionPage)
def list_sessions(
    db: Db,
    state: State | None = None,
    label: list[LabelFilter] = Query(default=[], description="key (has the label) or key=value"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    changed_since: datetime | None = Query(None, description="only those whose state changed at or after this time"),
):
    with db.read() as s:
        q = select(SessionRow)
        if state:
            q = q.where(SessionRow.state == state)
        if changed_since is not None:
            # stored as UTC (SQLite keeps no offset): compare in UTC whatever offset the caller gave
            since = changed_since.astimezone(UTC) if changed_since.tzinfo else changed_since.replace(tzinfo=UTC)
            q = q.where(SessionRow.updated_at >= since)
        for lab in label:  # label=key or label=key=value, filtered in the database
            k, _, v = lab.partition("=")
            q = q.where(SessionRow.labels[k].as_string() == v) if v else q.where(SessionRow.labels[k].is_not(None))
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        # newest first; the id breaks ties so offset pages neither repeat nor skip a session
        page = s.exec(q.order_by(SessionRow.created_at.desc(), SessionRow.id.desc()).offset(offset).limit(limit)).all()
        t = registry.totals(s, [r.id for r in page])
        return {
            "items": [registry.to_dict(r, t.get(r.id)) for r in page],
            "total": total,
            "limit": limit,
            "offset": offset,
        }


@router.get("/spans", response_model=SessionSpans)
def session_spans(
    db: Db,
    label: list[LabelFilter] = Query(default=[], description="key (has the label) or key=value"),
    limit: int = Query(100_000, ge=1, le=1_000_000),
):
    """Every matching session's id, name and recording span, newest first, and nothing else: what a
    search across sessions filters by (GET /v1/search with label/from/to), without paging full rows."""
    cols = (SessionRow.id, SessionRow.name, SessionRow.created_at, SessionRow.started_at, SessionRow.stopped_at)
    with db.read() as s:
        q = select(*cols)
        for lab in label:
            k, _, v = lab.partition("=")
            q = q.where(SessionRow.labels[k].as_string() == v) if v else q.where(SessionRow.labels[k].is_not(None))
        rows = s.exec(q.order_by(SessionRow.created_at.desc(), SessionRow.id.desc()).limit(limit)).all()
        keys = ("id", "name", "created_at", "started_at", "stopped_at")
        return {"items": [dict(zip(keys, (r[0], r[1], *map(registry.iso, r[2:])), strict=True)) for r in rows]}


@router.get("/{session_id}", response_model=Session)
def get_session(session_id: SessionId, db: Db):
    with db.read() as s:
        return registry.session_dict(s, registry.get_row(s, session_id))


@router.post("/{session_id}/transitions", response_model=Session, responses=NO_ACTOR)
def transition(session_id: SessionId, body: Transition, db: Db, request: Request, who: Caller):
    may(who, body.event)  # may this component do this at all, before whom it says it acts for
    actor = actor_of(request)
    with db.write() as s:
        row = registry.get_row(s, session_id, lock=True)
        fleet.check_owner(row, who, body.event)
        registry.transition(s, row, body, actor)
        s.flush()
        return registry.session_dict(s, row)


@router.put("/{session_id}/manifest", response_model=Session, dependencies=[allow(DAGSTER)])
def manifest_recorded(session_id: SessionId, body: ManifestSummary, db: Db):
    with db.write() as s:
        row = registry.get_row(s, session_id, lock=True)
        registry.record_manifest(s, row, body)
        s.flush()
        return registry.session_dict(s, row)


@router.post(
    "/{session_id}/audit",
    status_code=201,
    response_model=AuditReceipt,
    dependencies=[allow(API, DAGSTER, RECORDER)],
    responses=NO_ACTOR,
)
def audit_note(session_id: SessionId, body: AuditNote, db: Db, actor: Actor, who: Caller):
    """An audited event that is not a transition: a forced reprocess (Dagster), a share link made,
    revoked or used, an evidence bundle exported (the gateway, naming the key or share), a remote
    desktop's connection lost or back (the recorder)."""
    may_note(who, body.event)
    with db.write() as s:
        registry.get_row(s, session_id, lock=True)
        row = registry.append_audit(
            s, session_id, {"event": body.event, "from": None, "to": None, "actor": actor, "detail": body.detail}
        )
        s.flush()
        return {"entry": row.entry, "hash": row.hash}


# recorded by the storage service, which computed it; no one else's claim of a status is taken
@router.put("/{session_id}/verification", response_model=VerificationSummary, dependencies=[allow(STORAGE)])
def verification(session_id: SessionId, body: VerificationSummary, db: Db):
    with db.write() as s:
        row = registry.get_row(s, session_id, lock=True)
        row.verification = body.model_dump(mode="json")
        s.add(row)
        return row.verification


@router.get("/{session_id}/events", response_model=EventList)
def events(session_id: SessionId, db: Db):
    with db.read() as s:
        registry.get_row(s, session_id)
        rows = s.exec(select(AuditRow).where(AuditRow.session_id == session_id).order_by(AuditRow.idx)).all()
        return {"items": registry.audit_dicts(rows)}
