"""/work: what Dagster reads and reports: the queue its sensor reads by cursor, the sessions a
processing batch should take (claimed, so several runs split them), and the chunks a batch stored."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query
from sqlmodel import select

from lucid_assets.models import HOLDER, Lease, LeaseRenewal, Marked, PendingPage, StoredMarks, WorkClaim, WorkPage
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


def _page(page: registry.Page, more: bool, held: dict[str, str]) -> dict:
    items = [{"session": ses, "chunks": ch, "final": fin, "claimed_by": held.get(ses["id"])} for ses, ch, fin in page]
    return {"items": items, "more": more}


@router.get("/pending", response_model=PendingPage)
def pending(db: Db, limit: int = Query(200, ge=1, le=2000)):
    """Sessions with work: finalized ones first (sealing waits on them), then those with chunks not
    stored yet, the longest waiting first; each with every registered chunk and the run that holds
    it, if one does. What a processing run takes is `POST /work/claims`."""
    with db.read() as s:
        page, more = registry.pending(s, limit)
        return _page(page, more, registry.holders(s, [ses["id"] for ses, _, _ in page]))


@router.post("/claims", response_model=PendingPage)
def claim(body: WorkClaim, db: Db):
    """Take pending sessions (in /work/pending's order) that no other run holds, and hold them for
    `lease_seconds`: other runs leave them alone until the holder releases them or stops renewing.
    Several processing workers split the queue this way. `more`: work is left for another claim."""
    with db.write() as s:
        page, more = registry.claim(s, body.holder, body.limit, body.lease_seconds)
        return _page(page, more, {ses["id"]: body.holder for ses, _, _ in page})


@router.put("/claims/{holder}", response_model=Lease)
def renew(body: LeaseRenewal, db: Db, holder: str = Path(..., pattern=HOLDER)):
    """Extend every claim `holder` still holds (a running batch renews while it works)."""
    with db.write() as s:
        n, until = registry.renew(s, holder, body.lease_seconds)
        return {"holder": holder, "sessions": n, "expires_at": registry.iso(until)}


@router.delete("/claims/{holder}", response_model=Lease)
def release(db: Db, holder: str = Path(..., pattern=HOLDER)):
    """Give back what `holder` holds (a batch run, when it ends); its sessions are free at once."""
    with db.write() as s:
        n = registry.release(s, holder)
        return {"holder": holder, "sessions": n, "expires_at": None}


@router.post("/stored", response_model=Marked)
def stored(body: StoredMarks, db: Db):
    """A processing batch's stored chunks, over any sessions, marked all or none (one transaction)."""
    with db.write() as s:
        for mark in body.items:
            registry.mark_stored(s, mark)
        return {"marked": len(body.items)}
