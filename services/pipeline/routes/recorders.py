"""/recorders (issue 17): recorders announce themselves here; the gateway places sessions from the list."""

from __future__ import annotations

from fastapi import APIRouter

from lucid_assets.models import RecorderBeat, RecorderInfo, RecorderList
from lucid_assets.settings import get_settings
from services.common.errors import ERRORS

from .. import fleet
from ..deps import API, DAGSTER, RECORDER, Caller, Db, allow

router = APIRouter(prefix="/recorders", tags=["recorders"], responses=ERRORS)


@router.put("/self", response_model=RecorderInfo, dependencies=[allow(RECORDER)], summary="A recorder's heartbeat")
def beat(body: RecorderBeat, db: Db, who: Caller):
    """The calling recorder (its identity is its service token's) is alive, reachable at `url`."""
    with db.write() as s:
        fleet.heartbeat(s, who, body)
    with db.read() as s:
        return next(r for r in fleet.infos(s, get_settings().recorder_lapse_seconds) if r["name"] == who)


@router.get("", response_model=RecorderList, dependencies=[allow(API, DAGSTER)], summary="Every recorder")
def recorders(db: Db):
    with db.read() as s:
        return {"items": fleet.infos(s, get_settings().recorder_lapse_seconds)}
