"""/sessions/{id}/chunks: registration by the recorder, the list, and stored marks from Dagster."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import select

from lucid_assets.models import RegisterChunk, RegisteredChunkList, Registration
from services.common.errors import ERRORS
from services.common.ids import SessionId

from .. import fleet, registry
from ..deps import ANY, RECORDER, Caller, Db, allow
from ..models import ChunkRow

router = APIRouter(prefix="/sessions/{session_id}/chunks", tags=["chunks"], responses=ERRORS, dependencies=[ANY])


@router.post("", response_model=Registration, dependencies=[allow(RECORDER)])
def register_chunk(session_id: SessionId, body: RegisterChunk, db: Db, who: Caller):
    with db.write() as s:
        row = registry.get_row(s, session_id, lock=True)
        fleet.check_owner(row, who)
        chunk, created = registry.register_chunk(s, row, body)
        s.flush()
        return {"created": created, "chunk": registry.chunk_dict(chunk)}


@router.get("", response_model=RegisteredChunkList)
def list_chunks(session_id: SessionId, db: Db):
    with db.read() as s:
        registry.get_row(s, session_id)
        rows = s.exec(select(ChunkRow).where(ChunkRow.session_id == session_id).order_by(ChunkRow.seq)).all()
        return {"items": [registry.chunk_dict(c) for c in rows]}
