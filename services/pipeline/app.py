"""lucid-session-pipeline (8083): the state machine, the registry, the audit log, the work queue."""
from __future__ import annotations

from fastapi import Query
from sqlalchemy import func
from sqlmodel import select

from lucid_assets.settings import get_settings
from services.common.app import make_app
from services.common.db import Database
from services.common.schemas import (AuditNote, ChunkStored, CreateSession, ManifestSummary, RegisterChunk, Transition,
                                     VerificationSummary)

from . import registry
from .models import TABLES, AuditRow, ChunkRow, SessionRow, WorkItem


def create_app(database_url: str | None = None):
    db = Database(database_url or get_settings().pipeline_db)
    db.create_all(*TABLES)

    async def db_check():
        with db.read() as s:
            s.exec(select(SessionRow.id).limit(1)).all()
        return True, "registry database reachable"

    app = make_app("pipeline", checks={"database": db_check})
    app.state.db = db

    @app.post("/sessions", status_code=201)
    def create_session(body: CreateSession, actor: str = "api"):
        with db.write() as s:
            row = registry.create(s, body, actor)
            return registry.session_dict(s, row)

    @app.get("/sessions")
    def list_sessions(state: str | None = None, label: list[str] = Query(default=[]),
                      limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        with db.read() as s:
            q = select(SessionRow)
            if state:
                q = q.where(SessionRow.state == state)
            for lab in label:  # label=key or label=key=value, filtered in the database
                k, _, v = lab.partition("=")
                q = q.where(SessionRow.labels[k].as_string() == v) if v else q.where(SessionRow.labels[k].is_not(None))
            total = s.exec(select(func.count()).select_from(q.subquery())).one()
            page = s.exec(q.order_by(SessionRow.created_at.desc()).offset(offset).limit(limit)).all()
            t = registry.totals(s, [r.id for r in page])
            return {"items": [registry.to_dict(r, t.get(r.id)) for r in page], "total": total,
                    "limit": limit, "offset": offset}

    @app.get("/sessions/{session_id}")
    def get_session(session_id: str):
        with db.read() as s:
            return registry.session_dict(s, registry.get_row(s, session_id))

    @app.post("/sessions/{session_id}/transitions")
    def transition(session_id: str, body: Transition):
        with db.write() as s:
            row = registry.get_row(s, session_id, lock=True)
            registry.transition(s, row, body)
            s.flush()
            return registry.session_dict(s, row)

    @app.post("/sessions/{session_id}/chunks")
    def register_chunk(session_id: str, body: RegisterChunk):
        with db.write() as s:
            row = registry.get_row(s, session_id, lock=True)
            chunk, created = registry.register_chunk(s, row, body)
            s.flush()
            return {"created": created, "chunk": registry.chunk_dict(chunk)}

    @app.get("/sessions/{session_id}/chunks")
    def list_chunks(session_id: str):
        with db.read() as s:
            registry.get_row(s, session_id)
            rows = s.exec(select(ChunkRow).where(ChunkRow.session_id == session_id).order_by(ChunkRow.seq)).all()
            return {"items": [registry.chunk_dict(c) for c in rows]}

    @app.post("/sessions/{session_id}/chunks/{seq}/stored")
    def chunk_stored(session_id: str, seq: int, body: ChunkStored):
        with db.write() as s:
            registry.get_row(s, session_id)
            return registry.chunk_dict(registry.mark_stored(s, session_id, seq, body))

    @app.put("/sessions/{session_id}/manifest")
    def manifest_recorded(session_id: str, body: ManifestSummary):
        with db.write() as s:
            row = registry.get_row(s, session_id, lock=True)
            registry.record_manifest(s, row, body)
            s.flush()
            return registry.session_dict(s, row)

    @app.post("/sessions/{session_id}/audit", status_code=201)
    def audit_note(session_id: str, body: AuditNote):
        """An audited event that is not a transition (a forced reprocess)."""
        with db.write() as s:
            registry.get_row(s, session_id, lock=True)
            row = registry.append_audit(s, session_id, {"event": body.event, "from": None, "to": None,
                                                        "actor": body.actor, "detail": body.detail})
            s.flush()
            return {"entry": row.entry, "hash": row.hash}

    @app.put("/sessions/{session_id}/verification")
    def verification(session_id: str, body: VerificationSummary):
        with db.write() as s:
            row = registry.get_row(s, session_id, lock=True)
            row.verification = body.model_dump()
            s.add(row)
            return body.model_dump()

    @app.get("/sessions/{session_id}/events")
    def events(session_id: str):
        with db.read() as s:
            registry.get_row(s, session_id)
            rows = s.exec(select(AuditRow).where(AuditRow.session_id == session_id).order_by(AuditRow.idx)).all()
            return {"items": registry.audit_dicts(rows)}

    @app.get("/work")
    def work(after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)):
        """The queue Dagster's sensor reads by cursor (the id of the last item it saw)."""
        with db.read() as s:
            rows = s.exec(select(WorkItem).where(WorkItem.id > after).order_by(WorkItem.id).limit(limit)).all()
            return {"items": [{"id": w.id, "session_id": w.session_id, "up_to_seq": w.up_to_seq,
                               "reason": w.reason, "created_at": w.created_at.isoformat()} for w in rows]}

    return app
