"""/work: the queue Dagster's sensor reads by cursor."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlmodel import select

from lucid_assets.models import WorkPage
from services.common.errors import ERRORS

from ..deps import Db
from ..models import WorkItem

router = APIRouter(prefix="/work", tags=["work"], responses=ERRORS)


@router.get("", response_model=WorkPage)
def work(db: Db, after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)):
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
