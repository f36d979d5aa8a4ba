"""lucid-session-storage (8086): the read path over the catalog and the chunk store."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import uuid
from datetime import datetime, timezone

from fastapi import Request
from fastapi.responses import Response

from lucid_assets.core import catalog, envelope, keys, merkle
from lucid_assets.keyring import Keyring
from lucid_assets.lake import Lake
from lucid_assets.playback import DamagedChunk, Mp4Export, NotExportable, coalesce, plain_chunks, plain_size
from lucid_assets.settings import get_settings
from lucid_assets.store import ChunkStore
from lucid_assets.verification import verify_stored
from services.common.app import make_app, peer_check, writable_dir_check
from services.common.errors import ApiError, not_found
from services.common.peers import call_sync
from services.common.streaming import ProducedResponse


log = logging.getLogger("lucid.storage")


def _sid(session_id: str) -> str:
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        raise not_found(f"session {session_id!r} does not exist (not a session id)") from None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b` range as (start, end inclusive); None for the whole body; 416 if unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ApiError(416, "range_not_satisfiable", "only one bytes=start-end range is supported")
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            n = int(b)
            start, end = max(0, size - n), size - 1
        else:
            start, end = int(a), (int(b) if b else size - 1)
    except ValueError:
        raise ApiError(416, "range_not_satisfiable", f"malformed range {header!r}") from None
    end = min(end, size - 1)
    if start > end or start >= size:
        raise ApiError(416, "range_not_satisfiable", f"range {header!r} is outside 0-{size - 1}")
    return start, end


def create_app():
    settings = get_settings()
    store = ChunkStore(settings.chunk_store_path)
    lake = Lake.sql(settings.catalog, settings.warehouse_uri)
    keyring = Keyring.load(settings, with_signing=False)
    public_key = Keyring.public_key(settings)

    async def catalog_check():
        lake.ensure_tables()
        return True, "iceberg catalog reachable"

    app = make_app("storage", checks={"chunk_store": writable_dir_check(store.root), "catalog": catalog_check,
                                       "pipeline": peer_check(settings.pipeline_url)})

    def dek_of(sid: str) -> bytes:
        try:
            dek = store.data_key(sid, keyring)
        except keys.KeyMaterialError as exc:
            raise ApiError(409, "key_unavailable", f"the data key of {sid} does not open: {exc}") from None
        if dek is None:
            raise ApiError(410, "shredded", f"session {sid} has no data key (never stored, or crypto-shredded)")
        return dek

    @app.get("/sessions/{session_id}/chunks")
    def chunks(session_id: str):
        sid = _sid(session_id)
        rows = lake.rows(catalog.CHUNKS, sid)
        for r in rows:
            for k in ("recorded_at", "stored_at"):
                r[k] = r[k].isoformat()
        return {"items": rows}

    @app.get("/sessions/{session_id}/chunks/{seq}")
    def chunk(session_id: str, seq: int, request: Request):
        sid = _sid(session_id)
        data = store.read_envelope(sid, seq)
        if data is None:
            raise not_found(f"chunk {seq} of session {sid} is not stored")
        try:
            _, raw = envelope.open_envelope(data, dek=dek_of(sid), session_id=uuid.UUID(sid), seq=seq)
        except envelope.EnvelopeError as exc:
            raise ApiError(409, "chunk_damaged", f"chunk {seq} failed authentication and is not served: {exc}") from None
        rng = parse_range(request.headers.get("range"), len(raw))
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
        body = memoryview(raw)
        if rng is None:
            return Response(body, media_type="video/mp2t", headers=headers)
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end}/{len(raw)}"
        return Response(body[start:end + 1], status_code=206, media_type="video/mp2t", headers=headers)

    @app.get("/sessions/{session_id}/chunks/{seq}/envelope")
    def raw_envelope(session_id: str, seq: int):
        """The stored envelope as it is: what an auditor hashes to check storage without any key."""
        sid = _sid(session_id)
        data = store.read_envelope(sid, seq)
        if data is None:
            raise not_found(f"chunk {seq} of session {sid} is not stored")
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    @app.get("/sessions/{session_id}/chunks/{seq}/proof")
    def proof(session_id: str, seq: int):
        """Inclusion of chunk `seq` in the sealed manifest's tree or, while recording, in the latest
        signed checkpoint that covers it."""
        sid = _sid(session_id)
        found = store.latest_manifest_doc(sid)
        if found is not None and "_error" not in found:
            anchor, signed = "manifest", found
            leaves = [bytes.fromhex(c["envelope_sha256"]) for c in found["body"]["chunks"]]
        else:
            cps = [c for c in store.checkpoints(sid) if "_error" not in c and c["body"]["tree_size"] > seq]
            if not cps:
                raise not_found(f"no manifest or checkpoint of {sid} covers chunk {seq} yet")
            anchor, signed = "checkpoint", cps[0]
            rows = lake.rows(catalog.CHUNKS, sid)[: signed["body"]["tree_size"]]
            leaves = [bytes.fromhex(r["envelope_sha256"]) for r in rows]
        if not 0 <= seq < len(leaves):
            raise not_found(f"chunk {seq} is not in the {anchor} of {sid} ({len(leaves)} chunks)")
        root = merkle.root(leaves)
        return {"session_id": sid, "seq": seq, "leaf": leaves[seq].hex(), "tree_size": len(leaves),
                "root": root.hex(), "proof": [p.hex() for p in merkle.inclusion_proof(seq, leaves)],
                "anchor": anchor, "signed": signed}

    @app.get("/sessions/{session_id}/checkpoints")
    def checkpoints(session_id: str):
        return {"items": store.checkpoints(_sid(session_id))}

    @app.get("/sessions/{session_id}/manifest")
    def manifest(session_id: str):
        sid = _sid(session_id)
        found = store.latest_manifest(sid)
        if found is None:
            raise not_found(f"session {sid} has no manifest yet")
        return Response(found[1], media_type="application/json")

    @app.post("/sessions/{session_id}/verify")
    def verify(session_id: str):
        sid = _sid(session_id)
        session = call_sync("GET", f"{settings.pipeline_url}/sessions/{sid}")
        events = call_sync("GET", f"{settings.pipeline_url}/sessions/{sid}/events")["items"]
        report = verify_stored(store, keyring, public_key, sid, audit_rows=events,
                               registry_manifest_sha256=session.get("manifest_sha256"))
        return report.as_dict()

    @app.delete("/sessions/{session_id}/data")
    def shred(session_id: str):
        """Crypto-shred a session the pipeline has marked deleted: destroy its data key, remove its
        envelopes and staging files, drop its chunk rows and stamp its catalog row. Idempotent."""
        sid = _sid(session_id)
        state = call_sync("GET", f"{settings.pipeline_url}/sessions/{sid}")["state"]
        if state != "deleted":
            raise ApiError(409, "not_deleted", f"session {sid} is {state}; delete it through the API first",
                           state=state)
        result = store.shred(sid)
        staging = settings.recordings_path / sid
        result["staging_removed"] = staging.exists()
        shutil.rmtree(staging, ignore_errors=True)
        result.update(lake.mark_deleted(sid, datetime.now(timezone.utc)))
        return result

    def stored_prefix(sid: str) -> list[dict]:
        """The catalogued chunks 0..k-1 without a gap: what can be played so far."""
        out = []
        for r in lake.rows(catalog.CHUNKS, sid):
            if r["seq"] != len(out):
                break
            out.append(r)
        return out

    @app.get("/sessions/{session_id}/playlist")
    def playlist(session_id: str):
        sid = _sid(session_id)
        return {"items": [{"seq": r["seq"], "duration_ms": r["duration_ms"], "size": r["raw_size"]}
                          for r in stored_prefix(sid)]}

    def playable(sid: str) -> tuple[list[int], str | None]:
        """A sealed session's chunks per its signed manifest, with a key naming exactly those
        envelopes (their hashes); a live one's durable prefix, with no key."""
        doc = store.latest_manifest_doc(sid)
        if doc is not None and "_error" not in doc:
            chunks = doc["body"]["chunks"]
            seqs, key = [c["seq"] for c in chunks], hashlib.sha256(json.dumps(chunks, sort_keys=True).encode()).hexdigest()
        else:
            seqs, key = [], None
            for seq in store.stored_seqs(sid):
                if seq != len(seqs):
                    break
                seqs.append(seq)
        if not seqs:
            raise not_found(f"session {sid} has no stored chunks yet")
        return seqs, key

    def checked(sid: str, parts):
        """Pull the first piece now, so damage there is a clear 409 before any byte is sent; damage
        met later cuts the stream (the status line is gone), never sends bad video."""
        parts = iter(parts)
        try:
            first = next(parts)
        except DamagedChunk as exc:
            raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None

        def body():
            try:
                yield first
                yield from parts
            except DamagedChunk as exc:
                log.error("stopped streaming %s: %s", sid, exc)
                raise
        return body()

    @app.get("/sessions/{session_id}/recording.ts")
    def recording_ts(session_id: str):
        sid = _sid(session_id)
        seqs, _ = playable(sid)
        try:
            size = plain_size(store, sid, seqs)
        except DamagedChunk as exc:
            raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None
        return ProducedResponse(checked(sid, plain_chunks(store, keyring, sid, seqs)), media_type="video/mp2t",
                                headers={"Content-Disposition": f'attachment; filename="{sid}.ts"',
                                         "Content-Length": str(size), "Cache-Control": "no-store"})

    @app.api_route("/sessions/{session_id}/recording.mp4", methods=["GET", "HEAD"])
    def recording_mp4(session_id: str, request: Request):
        """Fragmented MP4 with a size, an ETag and Range: a browser seeks anywhere in it by
        fetching only the fragments (chunks) it needs."""
        sid = _sid(session_id)
        seqs, key = playable(sid)
        try:
            export = Mp4Export(store, keyring, sid, seqs, cache_key=key)
        except DamagedChunk as exc:
            raise ApiError(409, "chunk_damaged", f"not served: {exc}") from None
        except NotExportable as exc:
            raise ApiError(422, "not_exportable", f"no MP4 for session {sid}: {exc}") from None
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store", "ETag": export.etag,
                   "Content-Disposition": f'attachment; filename="{sid}.mp4"'}
        if_range = request.headers.get("if-range")
        rng = parse_range(request.headers.get("range"), export.size) if if_range in (None, export.etag) else None
        start, end = rng if rng is not None else (0, export.size - 1)
        headers["Content-Length"] = str(end - start + 1)
        status = 200
        if rng is not None:
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{export.size}"
        if request.method == "HEAD":
            return Response(status_code=status, media_type="video/mp4", headers=headers)
        return ProducedResponse(checked(sid, coalesce(export.byte_range(start, end))), status_code=status,
                                media_type="video/mp4", headers=headers)

    @app.get("/keys/signing")
    def signing_key():
        raw = keys.public_key_bytes(public_key)
        return {"alg": "Ed25519", "key_id": keys.public_key_id(public_key),
                "public_key": base64.b64encode(raw).decode()}

    return app
