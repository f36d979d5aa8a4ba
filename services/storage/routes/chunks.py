"""Stored chunks: the catalogue, decrypted bytes, raw envelopes, inclusion proofs, checkpoints and
the signed manifest."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lucid_assets.core import catalog, envelope, merkle
from lucid_assets.models import CheckpointList, Proof
from lucid_assets.trust import API, DAGSTER
from services.common.errors import ERRORS, RANGE_ERRORS, ApiError, not_found
from services.common.guard import allow
from services.common.ids import Seq

from ..deps import Ctx, Sid
from ..ranges import parse_range

router = APIRouter(
    prefix="/sessions/{session_id}", tags=["chunks"], responses=ERRORS, dependencies=[allow(API, DAGSTER)]
)
OCTETS = {200: {"content": {"application/octet-stream": {}}}}


@router.get("/chunks", summary="The session's rows of lucid.chunks")
def chunks(sid: Sid, ctx: Ctx) -> dict:
    rows = ctx.lake.rows(catalog.CHUNKS, sid)
    for r in rows:
        for k in ("recorded_at", "stored_at"):
            r[k] = r[k].isoformat()
    return {"items": rows}


@router.get(
    "/chunks/{seq}",
    response_class=Response,
    responses={**RANGE_ERRORS, 200: {"content": {"video/mp2t": {}}}, 206: {"content": {"video/mp2t": {}}}},
)
def chunk(sid: Sid, seq: Seq, request: Request, ctx: Ctx):
    """One chunk decrypted (its tag checked first), Range supported."""
    data = ctx.store.read_envelope(sid, seq)
    if data is None:
        raise not_found(f"chunk {seq} of session {sid} is not stored")
    try:
        _, raw = envelope.open_envelope(data, dek=ctx.dek(sid), session_id=uuid.UUID(sid), seq=seq)
    except envelope.EnvelopeError as exc:
        raise ApiError(409, "chunk_damaged", f"chunk {seq} failed authentication and is not served: {exc}") from None
    rng = parse_range(request.headers.get("range"), len(raw))
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    body = memoryview(raw)
    if rng is None:
        return Response(body, media_type="video/mp2t", headers=headers)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end}/{len(raw)}"
    return Response(body[start : end + 1], status_code=206, media_type="video/mp2t", headers=headers)


@router.get("/chunks/{seq}/envelope", response_class=Response, responses=OCTETS)
def raw_envelope(sid: Sid, seq: Seq, ctx: Ctx):
    """The stored envelope as it is: what an auditor hashes to check storage without any key."""
    data = ctx.store.read_envelope(sid, seq)
    if data is None:
        raise not_found(f"chunk {seq} of session {sid} is not stored")
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


@router.get("/chunks/{seq}/proof", response_model=Proof)
def proof(sid: Sid, seq: Seq, ctx: Ctx):
    """Inclusion of chunk `seq` in the sealed manifest's tree or, while recording, in the latest
    signed checkpoint that covers it."""
    found = ctx.store.latest_manifest_doc(sid)
    if found is not None and "_error" not in found:
        anchor, signed = "manifest", found
        leaves = [bytes.fromhex(c["envelope_sha256"]) for c in found["body"]["chunks"]]
    else:
        cps = [c for c in ctx.store.checkpoints(sid) if "_error" not in c and c["body"]["tree_size"] > seq]
        if not cps:
            raise not_found(f"no manifest or checkpoint of {sid} covers chunk {seq} yet")
        anchor, signed = "checkpoint", cps[0]
        rows = ctx.lake.rows(catalog.CHUNKS, sid)[: signed["body"]["tree_size"]]
        leaves = [bytes.fromhex(r["envelope_sha256"]) for r in rows]
    if not 0 <= seq < len(leaves):
        raise not_found(f"chunk {seq} is not in the {anchor} of {sid} ({len(leaves)} chunks)")
    return {
        "session_id": sid,
        "seq": seq,
        "leaf": leaves[seq].hex(),
        "tree_size": len(leaves),
        "root": merkle.root(leaves).hex(),
        "proof": [p.hex() for p in merkle.inclusion_proof(seq, leaves)],
        "anchor": anchor,
        "signed": signed,
    }


@router.get("/checkpoints", response_model=CheckpointList)
def checkpoints(sid: Sid, ctx: Ctx):
    return {"items": ctx.store.checkpoints(sid)}


@router.get("/manifest", response_class=Response, responses={200: {"content": {"application/json": {}}}})
def manifest(sid: Sid, ctx: Ctx):
    """The signed manifest, byte for byte as signed and stored."""
    found = ctx.store.latest_manifest(sid)
    if found is None:
        raise not_found(f"session {sid} has no manifest yet")
    return Response(found[1], media_type="application/json")
