"""/work: what Dagster reads and reports: the queue its sensor reads by cursor, the sessions a
processing batch should take, and the chunks a batch stored."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlmodel import select

from lucid_assets.models import Marked, PendingPage, StoredMarks, WorkPage
from services.common.errors import ERRORS
from services.common.ids import MAX_OFFSET

from .. import registry
from ..deps import DAGSTER, Db, allow
from ..models import WorkItem

router = APIRouter(prefix="/work", tags=["work"], responses=ERRORS, dependencies=[allow(DAGSTER)])


@router.get("", response_model=WorkPage)
def work(db: Db, after: int = Query(0, ge=0, le=MAX_OFFSET), limit: int = Query(100, ge=1, le=1000)):
    """Work items after `after` (the id of the last item the sensor saw), oldest first."""
    with db.read() as s:
        rows = s.exec(select(WorkItem).where(WorkItem.id > after).order_by(WorkItem.id).limit(limit)).all()
        return {
            "items": [
                {
                    "id": w.id,
                    "session_id": w.session_id,
                    "up_to_seq": w.up_to_seq,
                    "reason": w.reason,
                    "created_at": w.created_at.isoformat(),
                }
                for w in rows
            ]
        }


@router.get("/pending", response_model=PendingPage)
def pending(db: Db, limit: int = Query(200, ge=1, le=2000)):
    """Sessions a processing batch should take: finalized ones first (sealing waits on them), then
    those with chunks not stored yet, the longest waiting first; each with every registered chunk."""
    with db.read() as s:
        page, more = registry.pending(s, limit)
        return {"items": [{"session": ses, "chunks": ch, "final": final} for ses, ch, final in page], "more": more}


@router.post("/stored", response_model=Marked)
def stored(body: StoredMarks, db: Db):
    """A processing batch's stored chunks, over any sessions, marked all or none (one transaction)."""
    with db.write() as s:
        for mark in body.items:
            registry.mark_stored(s, mark)
        return {"marked": len(body.items)}
