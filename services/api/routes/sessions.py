"""/v1/sessions: validated at the edge, then routed to the pipeline, recorder and storage."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from lucid_assets.clients import ServiceError
from lucid_assets.core.states import Event, ShareRevocation, State
from lucid_assets.models import (
    CheckpointList,
    ChunkList,
    CreateSession,
    DeletedSession,
    EventList,
    Proof,
    PushResult,
    RemoteDesktop,
    Session,
    SessionPage,
    VerifyReport,
)
from services.common.errors import ERRORS, RANGE_ERRORS, ApiError
from services.common.ids import CHUNK_BODY, ChunkDurationMs, ChunkSha256, LabelFilter, Seq, SessionId
from services.common.peers import call

from .. import shares
from ..auth import Principal, admin, operator, viewer
from ..deps import Gateway, Gw

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=ERRORS)
MAX_OFFSET = 2**31 - 1  # beyond any real list; larger numbers are a 422, not a database overflow
AUTH = {401: ERRORS[404] | {"description": "no valid API key"}, 403: ERRORS[404] | {"description": "role too low"}}


@router.post("", status_code=201, summary="Create a session", response_model=Session, responses=AUTH)
def create_session(body: CreateSession, gw: Gw, who: Principal = Depends(operator)):
    if isinstance(body.source, RemoteDesktop) and body.source.credential is not None:
        check_credential(gw, body.source.kind, body.source.credential)
    return gw.pipeline.create_session(body, actor=who.actor)


def check_credential(gw: Gateway, kind: str, name: str) -> None:
    """A vnc/rdp source names a stored credential of its own kind (422 otherwise)."""
    try:
        info = gw.storage.credential(name)
    except ServiceError as exc:
        if exc.status != 404:
            raise
        raise ApiError(422, "unknown_credential", f"source.credential: no credential is named {name!r}") from None
    if info.kind != kind:
        raise ApiError(
            422, "credential_kind_mismatch", f"source.credential: {name!r} is a {info.kind} credential, not {kind}"
        )


@router.get(
    "",
    summary="List sessions (filter by state and label=key[=value], paginated)",
    response_model=SessionPage,
    responses=AUTH,
)
def list_sessions(
    gw: Gw,
    state: State | None = None,
    label: list[LabelFilter] = Query(default=[], description="key (has the label) or key=value"),
    limit: int = Query(50, ge=1, le=500, description="page size"),
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="sessions to skip (newest first); `total` says how many"),
    _: Principal = Depends(viewer),
):
    return gw.pipeline.sessions(state=state, labels=label, limit=limit, offset=offset)


@router.get("/{session_id}", summary="One session", response_model=Session, responses=AUTH)
def get_session(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    return gw.pipeline.session(session_id)


def _control(event: Event):
    async def control(session_id: SessionId, gw: Gw, _: Principal = Depends(operator)):
        url = await run_in_threadpool(gw.recorder_for, session_id, placing=event == Event.START)
        return await call("POST", f"{url}/recordings/{session_id}/{event}")

    control.__name__ = f"{event}_session"
    return control


for _event in (Event.START, Event.PAUSE, Event.RESUME, Event.STOP):
    router.add_api_route(
        f"/{{session_id}}/{_event}",
        _control(_event),
        methods=["POST"],
        response_model=Session,
        responses=AUTH,
        summary=f"{_event.capitalize()} a session (409 with the current state when illegal)",
    )


@router.get("/{session_id}/events", summary="The hash-chained audit log", response_model=EventList, responses=AUTH)
def events(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    return {"items": gw.pipeline.events(session_id)}


@router.get(
    "/{session_id}/chunks",
    summary="Chunk list: seq, sizes, hashes, times, state",
    response_model=ChunkList,
    responses=AUTH,
)
def chunks(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    return {"items": gw.pipeline.chunks(session_id)}  # the response model leaves out staging paths


@router.put(
    "/{session_id}/chunks/{seq}",
    summary="Push ingest of one chunk (external agents)",
    response_model=PushResult,
    responses={
        **AUTH,
        201: {"description": "stored under this seq"},
        200: {"description": "identical bytes were already there"},
        409: ERRORS[409] | {"description": "other bytes under this seq, or not a push session"},
        413: ERRORS[413] | {"description": "larger than LUCID_MAX_CHUNK_BYTES"},
    },
    openapi_extra=CHUNK_BODY,
)
async def push_chunk(
    session_id: SessionId,
    seq: Seq,
    request: Request,
    response: Response,
    gw: Gw,
    x_content_sha256: ChunkSha256,
    x_chunk_duration_ms: ChunkDurationMs = 0,
    _: Principal = Depends(operator),
):
    declared = request.headers.get("content-length")
    limit = gw.settings.max_chunk_bytes
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "chunk_too_large", f"chunk is {declared} bytes; the limit is {limit}")
    headers = {"x-content-sha256": x_content_sha256, "x-chunk-duration-ms": str(x_chunk_duration_ms)}
    if declared:
        headers["content-length"] = declared
    url = await run_in_threadpool(gw.recorder_for, session_id)
    body = await call("PUT", f"{url}/recordings/{session_id}/chunks/{seq}", headers=headers, content=request.stream())
    response.status_code = 201 if body["created"] else 200
    return body


@router.get(
    "/{session_id}/chunks/{seq}",
    summary="Decrypted chunk bytes (Range supported)",
    response_class=Response,
    responses={
        **AUTH,
        **RANGE_ERRORS,
        200: {"content": {"video/mp2t": {}}},
        206: {"description": "the requested range", "content": {"video/mp2t": {}}},
    },
)
async def chunk_bytes(session_id: SessionId, seq: Seq, request: Request, gw: Gw, _: Principal = Depends(viewer)):
    return await proxy_chunk(gw, session_id, seq, request)


async def proxy_chunk(gw: Gateway, session_id: str, seq: int, request: Request) -> Response:
    """One decrypted chunk from the storage service, the client's Range passed through."""
    headers = {"range": request.headers["range"]} if "range" in request.headers else {}
    r = await call("GET", f"{gw.storage_url}/sessions/{session_id}/chunks/{seq}", headers=headers, raw=True)
    passed = {k: v for k, v in r.headers.items() if k.lower() in ("content-range", "accept-ranges", "cache-control")}
    return Response(r.content, status_code=r.status_code, media_type="video/mp2t", headers=passed)


@router.get(
    "/{session_id}/chunks/{seq}/envelope",
    summary="The encrypted envelope as stored (for key-less audits)",
    response_class=Response,
    responses={**AUTH, 200: {"content": {"application/octet-stream": {}}}},
)
async def chunk_envelope(session_id: SessionId, seq: Seq, gw: Gw, _: Principal = Depends(viewer)):
    await run_in_threadpool(gw.pipeline.session, session_id)
    r = await call("GET", f"{gw.storage_url}/sessions/{session_id}/chunks/{seq}/envelope", raw=True)
    return Response(r.content, media_type="application/octet-stream")


@router.get(
    "/{session_id}/chunks/{seq}/proof",
    summary="Merkle inclusion proof of one chunk",
    response_model=Proof,
    responses=AUTH,
)
def chunk_proof(session_id: SessionId, seq: Seq, gw: Gw, _: Principal = Depends(viewer)):
    gw.pipeline.session(session_id)
    return gw.storage.proof(session_id, seq)


@router.get(
    "/{session_id}/checkpoints",
    summary="Signed checkpoints with consistency proofs, oldest first",
    response_model=CheckpointList,
    responses=AUTH,
)
def checkpoints(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    gw.pipeline.session(session_id)
    return gw.storage.checkpoints(session_id)


@router.delete(
    "/{session_id}",
    summary="Crypto-shred and delete a session (created, sealed or failed)",
    response_model=DeletedSession,
    responses=AUTH,
)
def delete_session(session_id: SessionId, gw: Gw, who: Principal = Depends(admin)):
    s = gw.pipeline.session(session_id)
    if s.state != State.DELETED:  # a repeated DELETE finishes an interrupted shred
        s = gw.pipeline.transition(session_id, Event.DELETE, actor=who.actor)
    # every use of a share checks its session is not deleted; its rows say so too
    revoked = shares.revoke_where(gw.keys_db, shares.ShareRow.session_id == session_id)
    shares.note_revoked(gw, revoked, who.actor, ShareRevocation.SESSION_DELETED)
    return {**s.model_dump(), "shredded": gw.storage.shred(session_id).model_dump()}


@router.get(
    "/{session_id}/manifest",
    summary="The signed manifest",
    response_class=Response,
    responses={**AUTH, 200: {"content": {"application/json": {}}}},
)
async def manifest(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    r = await call("GET", f"{gw.storage_url}/sessions/{session_id}/manifest", raw=True)
    return Response(r.content, media_type="application/json")


@router.post("/{session_id}/verify", summary="Full verification report", response_model=VerifyReport, responses=AUTH)
def verify(session_id: SessionId, gw: Gw, _: Principal = Depends(viewer)):
    """Relays the storage service's report; storage records the outcome with the pipeline itself
    (`pending` for a session not sealed yet, never recorded)."""
    gw.pipeline.session(session_id)  # 404 for unknown sessions
    return gw.storage.verify(session_id)
