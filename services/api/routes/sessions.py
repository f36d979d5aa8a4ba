"""/v1/sessions: validated at the edge, then routed to the pipeline, recorder and storage."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from lucid_assets.settings import get_settings
from services.common.errors import ApiError
from services.common.peers import call
from services.common.schemas import CreateSession

from ..auth import Principal, admin, operator, viewer

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
S = get_settings()


def _public_chunk(c: dict) -> dict:
    return {k: v for k, v in c.items() if k != "path"}


@router.post("", status_code=201, summary="Create a session")
async def create_session(body: CreateSession, who: Principal = Depends(operator)):
    return await call("POST", f"{S.pipeline_url}/sessions", json=body.model_dump(), params={"actor": who.actor})


@router.get("", summary="List sessions (filter by state and label=key[=value], paginated)")
async def list_sessions(state: str | None = None, label: list[str] = Query(default=[]),
                        limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
                        _: Principal = Depends(viewer)):
    params = {"limit": limit, "offset": offset, "label": label}
    if state:
        params["state"] = state
    return await call("GET", f"{S.pipeline_url}/sessions", params=params)


@router.get("/{session_id}", summary="One session")
async def get_session(session_id: str, _: Principal = Depends(viewer)):
    return await call("GET", f"{S.pipeline_url}/sessions/{session_id}")


def _control(action: str):
    async def control(session_id: str, _: Principal = Depends(operator)):
        return await call("POST", f"{S.recorder_url}/recordings/{session_id}/{action}")
    control.__name__ = f"{action}_session"
    return control


for _action in ("start", "pause", "resume", "stop"):
    router.add_api_route(f"/{{session_id}}/{_action}", _control(_action), methods=["POST"],
                         summary=f"{_action.capitalize()} a session (409 with the current state when illegal)")


@router.get("/{session_id}/events", summary="The hash-chained audit log")
async def events(session_id: str, _: Principal = Depends(viewer)):
    return await call("GET", f"{S.pipeline_url}/sessions/{session_id}/events")


@router.get("/{session_id}/chunks", summary="Chunk list: seq, sizes, hashes, times, state")
async def chunks(session_id: str, _: Principal = Depends(viewer)):
    body = await call("GET", f"{S.pipeline_url}/sessions/{session_id}/chunks")
    return {"items": [_public_chunk(c) for c in body["items"]]}


@router.put("/{session_id}/chunks/{seq}", summary="Push ingest of one chunk (external agents)",
            responses={201: {"description": "stored under this seq"}, 200: {"description": "identical bytes were already there"},
                       409: {"description": "other bytes under this seq, or not a push session"},
                       413: {"description": "larger than LUCID_MAX_CHUNK_BYTES"}})
async def push_chunk(session_id: str, seq: int, request: Request, response: Response,
                     x_content_sha256: str = Header(..., description="SHA-256 of the body, hex"),
                     x_chunk_duration_ms: int = Header(0, ge=0), _: Principal = Depends(operator)):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > S.max_chunk_bytes:
        raise ApiError(413, "chunk_too_large", f"chunk is {declared} bytes; the limit is {S.max_chunk_bytes}")
    headers = {"x-content-sha256": x_content_sha256, "x-chunk-duration-ms": str(x_chunk_duration_ms)}
    if declared:
        headers["content-length"] = declared
    body = await call("PUT", f"{S.recorder_url}/recordings/{session_id}/chunks/{seq}", headers=headers,
                      content=request.stream())
    response.status_code = 201 if body["created"] else 200
    return {**body, "chunk": _public_chunk(body["chunk"])}


@router.get("/{session_id}/chunks/{seq}", summary="Decrypted chunk bytes (Range supported)",
            response_class=Response)
async def chunk_bytes(session_id: str, seq: int, request: Request, _: Principal = Depends(viewer)):
    return await proxy_chunk(session_id, seq, request)


async def proxy_chunk(session_id: str, seq: int, request: Request) -> Response:
    """One decrypted chunk from the storage service, the client's Range passed through."""
    headers = {"range": request.headers["range"]} if "range" in request.headers else {}
    r = await call("GET", f"{S.storage_url}/sessions/{session_id}/chunks/{seq}", headers=headers, raw=True)
    passed = {k: v for k, v in r.headers.items() if k.lower() in ("content-range", "accept-ranges", "cache-control")}
    return Response(r.content, status_code=r.status_code, media_type="video/mp2t", headers=passed)


@router.get("/{session_id}/chunks/{seq}/envelope", summary="The encrypted envelope as stored (for key-less audits)",
            response_class=Response)
async def chunk_envelope(session_id: str, seq: int, _: Principal = Depends(viewer)):
    await call("GET", f"{S.pipeline_url}/sessions/{session_id}")
    r = await call("GET", f"{S.storage_url}/sessions/{session_id}/chunks/{seq}/envelope", raw=True)
    return Response(r.content, media_type="application/octet-stream")


@router.get("/{session_id}/chunks/{seq}/proof", summary="Merkle inclusion proof of one chunk")
async def chunk_proof(session_id: str, seq: int, _: Principal = Depends(viewer)):
    await call("GET", f"{S.pipeline_url}/sessions/{session_id}")
    return await call("GET", f"{S.storage_url}/sessions/{session_id}/chunks/{seq}/proof")


@router.get("/{session_id}/checkpoints", summary="Signed checkpoints with consistency proofs, oldest first")
async def checkpoints(session_id: str, _: Principal = Depends(viewer)):
    await call("GET", f"{S.pipeline_url}/sessions/{session_id}")
    return await call("GET", f"{S.storage_url}/sessions/{session_id}/checkpoints")


@router.delete("/{session_id}", summary="Crypto-shred and delete a session (created, sealed or failed)")
async def delete_session(session_id: str, who: Principal = Depends(admin)):
    s = await call("GET", f"{S.pipeline_url}/sessions/{session_id}")
    if s["state"] != "deleted":  # a repeated DELETE finishes an interrupted shred
        s = await call("POST", f"{S.pipeline_url}/sessions/{session_id}/transitions",
                       json={"event": "delete", "actor": who.actor})
    shredded = await call("DELETE", f"{S.storage_url}/sessions/{session_id}/data")
    return {**s, "shredded": shredded}


@router.get("/{session_id}/manifest", summary="The signed manifest")
async def manifest(session_id: str, _: Principal = Depends(viewer)):
    r = await call("GET", f"{S.storage_url}/sessions/{session_id}/manifest", raw=True)
    return Response(r.content, media_type="application/json")


@router.post("/{session_id}/verify", summary="Full verification report")
async def verify(session_id: str, _: Principal = Depends(viewer)):
    await call("GET", f"{S.pipeline_url}/sessions/{session_id}")  # 404 for unknown sessions
    report = await call("POST", f"{S.storage_url}/sessions/{session_id}/verify")
    await call("PUT", f"{S.pipeline_url}/sessions/{session_id}/verification",  # shown in session lists
               json={"status": report["status"], "problems": len(report["problems"]),
                     "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return report
