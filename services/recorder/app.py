"""lucid-session-recorder (8084): capture sessions into segments and register them; take pushed
chunks from external agents; after a crash, register what was completed and finalize it."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import av
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from lucid_assets.settings import get_settings
from services.common.app import make_app, peer_check, writable_dir_check
from services.common.errors import ApiError
from services.common.peers import call_sync

from .capture import Capture, CaptureEnded, Segment, finish_file, fsync_dir, probe_encoders, segment_name
from .sources import SourceError

log = logging.getLogger("lucid.recorder")
COUNTERS = ("frames_captured", "frames_dropped", "frames_encoded", "segments")


def create_app():
    settings = get_settings()
    pipeline = settings.pipeline_url
    recordings = settings.recordings_path
    captures: dict[str, Capture] = {}
    lock = threading.Lock()
    totals = dict.fromkeys(COUNTERS, 0)
    write_latency = {"count": 0, "sum_ms": 0.0, "max_ms": 0.0}
    encoders: dict[str, str] = {}

    def transition(session_id: str, event: str, **extra) -> dict:
        return call_sync("POST", f"{pipeline}/sessions/{session_id}/transitions",
                         json={"event": event, "actor": "recorder", **extra})

    def register_segment(session_id: str, seg: Segment) -> dict:
        body = {"seq": seg.seq, "sha256": seg.sha256, "size": seg.size, "frames": seg.frames,
                "duration_ms": seg.duration_ms, "path": str(seg.path)}
        for attempt in range(10):
            try:
                return call_sync("POST", f"{pipeline}/sessions/{session_id}/chunks", json=body)
            except ApiError as exc:
                if exc.status != 503 or attempt == 9:
                    raise
                time.sleep(min(5, 0.2 * 2 ** attempt))

    def retire(session_id: str) -> Capture | None:
        with lock:
            cap = captures.pop(session_id, None)
            if cap is not None:
                for k in COUNTERS:
                    totals[k] += getattr(cap.stats, k)
        return cap

    def finalize(session_id: str, reason: str | None = None) -> dict:
        chunks = call_sync("GET", f"{pipeline}/sessions/{session_id}/chunks")["items"]
        seqs = sorted(c["seq"] for c in chunks)
        expected = seqs[-1] + 1 if seqs else 0
        missing = sorted(set(range(expected)) - set(seqs))
        if missing:
            raise ApiError(409, "incomplete", f"chunks {missing} are missing; upload them and stop again",
                           missing=missing, state="finalizing")
        return transition(session_id, "finalize", expected_chunks=expected, reason=reason)

    def ended(session_id: str):
        def _ended(why: CaptureEnded) -> None:
            cap = retire(session_id)
            try:
                if why.kind == "source_ended" and cap is not None and not cap.registered:
                    transition(session_id, "fail", reason=f"{why.reason} before any frame was recorded")
                elif why.kind == "source_ended":
                    transition(session_id, "stop", reason=why.reason)
                    finalize(session_id, reason=why.reason)
                else:
                    transition(session_id, "fail", reason=why.reason)
            except ApiError as exc:
                log.error("could not end %s (%s): %s", session_id, why.reason, exc.detail)
        return _ended

    def on_segment(session_id: str):
        def _on(seg: Segment) -> None:
            register_segment(session_id, seg)
            with lock:
                cap = captures.get(session_id)
                ms = cap.stats.last_write_ms if cap else 0.0
            write_latency["count"] += 1
            write_latency["sum_ms"] += ms
            write_latency["max_ms"] = max(write_latency["max_ms"], ms)
        return _on

    # --- crash recovery -----------------------------------------------------------------------
    def frames_in(path: Path) -> int:
        with av.open(str(path)) as c:
            return sum(1 for p in c.demux(video=0) if p.size)

    def recover_one(d: Path) -> None:
        with lock:
            if d.name in captures:  # recording in this process: not a leftover
                return
        try:
            session = call_sync("GET", f"{pipeline}/sessions/{d.name}")
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        if session["source"].get("kind") == "push":
            return  # uploads are not tied to this process: an agent may still be pushing
        partial = list(d.glob(".*.partial*"))
        for p in partial:
            p.unlink()
        if session["state"] not in ("recording", "paused", "finalizing"):
            return
        fps = session["video"]["fps"]
        segs = sorted(p for p in d.glob("*.ts") if p.stem.isdigit())
        for p in segs:
            data = p.read_bytes()
            n = frames_in(p)
            register_segment(d.name, Segment(int(p.stem), p, hashlib.sha256(data).hexdigest(), len(data), n,
                                             n * 1000 // fps))
        reason = (f"recorder restarted while recording: finalized from the completed segments "
                  f"({len(segs)} re-checked, {len(partial)} partial discarded)")
        if session["state"] != "finalizing":
            transition(d.name, "stop", reason=reason)
        try:
            finalize(d.name, reason=reason)
        except ApiError as exc:
            transition(d.name, "fail", reason=f"{reason}; {exc.detail}")

    def recover(leftovers: list[Path]) -> None:
        """Finish what a previous recorder process left: only the directories that existed before
        this one started serving (a session started since then is this process's own)."""
        for attempt in range(60):
            try:
                call_sync("GET", f"{pipeline}/health")
                break
            except ApiError:
                time.sleep(1)
        for d in leftovers:
            try:
                recover_one(d)
            except Exception:
                log.exception("recovery of %s failed", d.name)

    @asynccontextmanager
    async def lifespan(_app):
        encoders.update(await run_in_threadpool(probe_encoders, settings.encoder_order))
        leftovers = sorted(d for d in recordings.iterdir() if d.is_dir() and _is_uuid(d.name)) \
            if recordings.is_dir() else []
        threading.Thread(target=recover, args=(leftovers,), name="recover", daemon=True).start()
        yield

    async def encoders_check():
        usable = [n for n, v in encoders.items() if v == "available"]
        return bool(usable), f"encoder {usable[0] if usable else 'none'} first; " + ", ".join(
            f"{n}: {v}" for n, v in encoders.items())

    app = make_app("recorder", lifespan=lifespan,
                   checks={"recordings_volume": writable_dir_check(recordings), "pipeline": peer_check(pipeline),
                           "encoders": encoders_check})

    def get_session(session_id: str) -> dict:
        return call_sync("GET", f"{pipeline}/sessions/{session_id}")

    @app.post("/recordings/{session_id}/start")
    def start(session_id: str):
        session = get_session(session_id)
        if session["state"] != "created":
            raise ApiError(409, "illegal_transition", f"cannot start a session that is {session['state']}",
                           state=session["state"])
        if session["source"]["kind"] == "push":
            return transition(session_id, "start", encoder="push")
        with lock:
            if session_id in captures:
                raise ApiError(409, "illegal_transition", "session is already being captured", state="recording")
            try:
                cap = Capture(session, recordings / session_id, on_segment(session_id), ended(session_id),
                              encoders=settings.encoder_order, file_roots=settings.file_roots)
            except SourceError as exc:
                raise ApiError(422, "source_unavailable", str(exc)) from None
            try:
                result = transition(session_id, "start", encoder=cap.encoder)
            except ApiError:
                cap.close()
                raise
            captures[session_id] = cap
            cap.start()
        return result

    def active(session_id: str) -> Capture | None:
        with lock:
            return captures.get(session_id)

    @app.post("/recordings/{session_id}/pause")
    def pause(session_id: str):
        result = transition(session_id, "pause")
        if cap := active(session_id):
            cap.pause()
        return result

    @app.post("/recordings/{session_id}/resume")
    def resume(session_id: str):
        result = transition(session_id, "resume")
        if cap := active(session_id):
            cap.resume()
        return result

    @app.post("/recordings/{session_id}/stop")
    def stop(session_id: str):
        session = get_session(session_id)
        if not (session["source"]["kind"] == "push" and session["state"] == "finalizing"):
            transition(session_id, "stop", reason="stopped by operator")
        cap = active(session_id)
        if cap is not None:
            try:
                cap.stop()
            except SourceError as exc:
                return transition(session_id, "fail", reason=str(exc))
            finally:
                retire(session_id)
        return finalize(session_id)

    # --- push ingest ----------------------------------------------------------------------------
    @app.put("/recordings/{session_id}/chunks/{seq}")
    async def push_chunk(session_id: str, seq: int, request: Request):
        want = request.headers.get("x-content-sha256", "").lower()
        if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
            raise ApiError(422, "invalid_request", "header X-Content-SHA256 must be the chunk's SHA-256 in hex")
        if seq < 0 or seq > 10_000_000:
            raise ApiError(422, "invalid_request", "seq must be between 0 and 10000000")
        try:
            duration_ms = int(request.headers.get("x-chunk-duration-ms", "0"))
            declared = int(request.headers.get("content-length", "0"))
        except ValueError:
            raise ApiError(422, "invalid_request", "X-Chunk-Duration-Ms and Content-Length must be integers") from None
        limit = settings.max_chunk_bytes
        if declared > limit:
            raise ApiError(413, "chunk_too_large", f"chunk is {declared} bytes; the limit is {limit}")
        session = await run_in_threadpool(get_session, session_id)
        if session["source"]["kind"] != "push":
            raise ApiError(409, "not_push", "this session records its own source; chunks cannot be pushed",
                           state=session["state"])
        if session["state"] not in ("recording", "paused", "finalizing"):
            raise ApiError(409, "illegal_state", f"chunks are accepted while recording, not while {session['state']}",
                           state=session["state"])
        d = recordings / session_id
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{segment_name(seq)}.partial-{uuid.uuid4().hex}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                async for part in request.stream():
                    size += len(part)
                    if size > limit:
                        raise ApiError(413, "chunk_too_large", f"chunk exceeds the limit of {limit} bytes")
                    digest.update(part)
                    f.write(part)
            if digest.hexdigest() != want:
                raise ApiError(422, "sha256_mismatch", f"the body hashes to {digest.hexdigest()}, not {want}")
            final = d / segment_name(seq)
            result = await run_in_threadpool(_place, tmp, final, want)
        finally:
            tmp.unlink(missing_ok=True)
        seg = Segment(seq, final, want, size, 0, max(0, duration_ms))
        registered = await run_in_threadpool(register_segment, session_id, seg)
        return {"created": result and registered["created"], "chunk": registered["chunk"]}

    def _place(tmp: Path, final: Path, sha: str) -> bool:
        """Move the upload into place unless the seq exists: True if placed, False if identical
        bytes were already there, 409 if other bytes are."""
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            if hashlib.sha256(final.read_bytes()).hexdigest() == sha:
                return False
            raise ApiError(409, "chunk_conflict", f"chunk {final.stem} was already pushed with other bytes") from None
        fsync_dir(final.parent)
        return True

    @app.get("/recordings")
    def recordings_list():
        with lock:
            return {"items": [{"session_id": sid, "encoder": c.encoder, **vars(c.stats)} for sid, c in captures.items()]}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        with lock:
            items = list(captures.items())
            done = dict(totals)
        lines = []
        for name in COUNTERS:
            lines.append(f"# TYPE lucid_recorder_{name}_total counter")
            lines.append(f"lucid_recorder_{name}_total {done[name] + sum(getattr(c.stats, name) for _, c in items)}")
            lines.append(f"# TYPE lucid_recorder_session_{name} gauge")
            for sid, c in items:
                lines.append(f'lucid_recorder_session_{name}{{session="{sid}",encoder="{c.encoder}"}} '
                             f"{getattr(c.stats, name)}")
        lines += ["# TYPE lucid_recorder_segment_write_seconds summary",
                  f"lucid_recorder_segment_write_seconds_count {write_latency['count']}",
                  f"lucid_recorder_segment_write_seconds_sum {write_latency['sum_ms'] / 1000:.6f}",
                  "# TYPE lucid_recorder_segment_write_seconds_max gauge",
                  f"lucid_recorder_segment_write_seconds_max {write_latency['max_ms'] / 1000:.6f}",
                  "# TYPE lucid_recorder_active_sessions gauge", f"lucid_recorder_active_sessions {len(items)}"]
        return "\n".join(lines) + "\n"

    return app


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False
