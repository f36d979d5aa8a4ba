"""/recordings: start, pause, resume and stop captures; push ingest; what runs here; /metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from lucid_assets.core.states import Event, State
from lucid_assets.models import CaptureList, Registration, Session
from lucid_assets.trust import API
from services.common.errors import ERRORS, ApiError
from services.common.guard import allow
from services.common.ids import CHUNK_BODY, ChunkDurationMs, ChunkSha256, Seq, SessionId

from .. import push
from ..recorder import Recorder

router = APIRouter(tags=["recordings"], responses=ERRORS, dependencies=[allow(API)])


def get_recorder(request: Request) -> Recorder:
    return request.app.state.recorder


Rec = Annotated[Recorder, Depends(get_recorder)]


@router.post("/recordings/{session_id}/start", response_model=Session)
def start(session_id: SessionId, rec: Rec):
    session = rec.pipeline.session(session_id)
    if session.state != State.CREATED:
        raise ApiError(
            409, "illegal_transition", f"cannot start a session that is {session.state}", state=session.state
        )
    if session.source.get("kind") == "push":
        return rec.transition(session_id, Event.START, encoder="push")
    return rec.begin(session)


def _hold(event: Event):
    """Pause or resume: the pipeline decides (409 when illegal), then this process's capture follows."""

    def route(session_id: SessionId, rec: Rec):
        result = rec.transition(session_id, event)
        if cap := rec.active(session_id):
            (cap.pause if event == Event.PAUSE else cap.resume)()
        return result

    route.__name__ = str(event)
    return route


for _event in (Event.PAUSE, Event.RESUME):
    router.add_api_route(
        f"/recordings/{{session_id}}/{_event}", _hold(_event), methods=["POST"], response_model=Session
    )


@router.post("/recordings/{session_id}/stop", response_model=Session)
def stop(session_id: SessionId, rec: Rec):
    session = rec.pipeline.session(session_id)
    if not (session.source.get("kind") == "push" and session.state == State.FINALIZING):
        rec.transition(session_id, Event.STOP, reason="stopped by operator")
    failed = rec.end(session_id)
    return failed if failed is not None else rec.finalize(session_id)


@router.put("/recordings/{session_id}/chunks/{seq}", response_model=Registration, openapi_extra=CHUNK_BODY)
async def push_chunk(
    session_id: SessionId,
    seq: Seq,
    request: Request,
    rec: Rec,
    _sha256: ChunkSha256,  # declared and checked here; uploads.declared reads them again with the body
    _duration_ms: ChunkDurationMs = 0,
):
    seg, placed = await push.receive(rec, session_id, seq, request)
    registered = await run_in_threadpool(rec.register, session_id, seg)
    return {"created": placed and registered.created, "chunk": registered.chunk}


@router.get("/recordings", response_model=CaptureList)
def recordings_list(rec: Rec):
    with rec.lock:
        return {
            "items": [{"session_id": sid, "encoder": c.encoder, **vars(c.stats)} for sid, c in rec.captures.items()]
        }


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(rec: Rec):
    return rec.metrics()
