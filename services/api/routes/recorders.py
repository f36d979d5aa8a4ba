"""/v1/recorders (admin, issue 17): the recorders that announced themselves, their load and whether
their heartbeat is current (a lapsed one had its live sessions finalized)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from lucid_assets.models import RecorderList
from services.common.errors import ERRORS

from ..auth import Principal, admin
from ..deps import Gw
from .sessions import AUTH

router = APIRouter(prefix="/v1/recorders", tags=["recorders"], responses={**ERRORS, **AUTH})


@router.get("", response_model=RecorderList, summary="Every recorder: where, capacity, load, heartbeat")
def recorders(gw: Gw, _: Principal = Depends(admin)):
    return {"items": gw.pipeline.recorders()}
