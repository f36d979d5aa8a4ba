"""lucid-session-recorder (8084): capture sessions into segments and register them."""
from __future__ import annotations

import logging
import threading
import time

from fastapi.responses import PlainTextResponse

from lucid_assets.settings import get_settings
from services.common.app import make_app, peer_check, writable_dir_check
from services.common.errors import ApiError
from services.common.peers import call_sync

from .capture import Capture, Segment, SourceError

log = logging.getLogger("lucid.recorder")


def create_app():
    settings = get_settings()
    pipeline = settings.pipeline_url
    recordings = settings.recordings_path
    app = make_app("recorder", checks={"recordings_volume": writable_dir_check(recordings),
                                        "pipeline": peer_check(pipeline)})
    captures: dict[str, Capture] = {}
    lock = threading.Lock()

    def transition(session_id: str, event: str, **extra) -> dict:
        return call_sync("POST", f"{pipeline}/sessions/{session_id}/transitions",
                         json={"event": event, "actor": "recorder", **extra})

    def register(session_id: str):
        def _register(seg: Segment) -> None:
            body = {"seq": seg.seq, "sha256": seg.sha256, "size": seg.size, "frames": seg.frames,
                    "duration_ms": seg.duration_ms, "path": str(seg.path)}
            for attempt in range(10):
                try:
                    call_sync("POST", f"{pipeline}/sessions/{session_id}/chunks", json=body)
                    return
                except ApiError as exc:
                    if exc.status != 503 or attempt == 9:
                        raise
                    time.sleep(min(5, 0.2 * 2 ** attempt))
        return _register

    def failed(session_id: str):
        def _failed(reason: str) -> None:
            try:
                transition(session_id, "fail", reason=reason)
            except ApiError as exc:
                log.error("could not mark %s failed: %s", session_id, exc.detail)
            with lock:
                captures.pop(session_id, None)
        return _failed

    @app.post("/recordings/{session_id}/start")
    def start(session_id: str):
        session = call_sync("GET", f"{pipeline}/sessions/{session_id}")
        if session["state"] != "created":
            raise ApiError(409, "illegal_transition", f"cannot start a session that is {session['state']}",
                           state=session["state"])
        with lock:
            if session_id in captures:
                raise ApiError(409, "illegal_transition", "session is already being captured", state="recording")
            try:
                cap = Capture(session, recordings / session_id, register(session_id), failed(session_id))
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
        transition(session_id, "stop")
        cap = active(session_id)
        try:
            if cap is not None:
                segments = cap.stop()
                count = len(segments)
            else:  # the recorder restarted: finalize from what was registered
                count = len(call_sync("GET", f"{pipeline}/sessions/{session_id}/chunks")["items"])
        except SourceError as exc:
            return transition(session_id, "fail", reason=str(exc))
        finally:
            with lock:
                captures.pop(session_id, None)
        return transition(session_id, "finalize", expected_chunks=count)

    @app.get("/recordings")
    def recordings_list():
        with lock:
            return {"items": [{"session_id": sid, "encoder": c.encoder, **vars(c.stats)} for sid, c in captures.items()]}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        lines = []
        with lock:
            items = list(captures.items())
        for name, kind in (("frames_captured", "counter"), ("frames_dropped", "counter"),
                           ("frames_encoded", "counter"), ("segments", "counter"), ("last_write_ms", "gauge")):
            lines.append(f"# TYPE lucid_recorder_{name} {kind}")
            for sid, c in items:
                lines.append(f'lucid_recorder_{name}{{session="{sid}"}} {getattr(c.stats, name)}')
        lines.append("# TYPE lucid_recorder_active_sessions gauge")
        lines.append(f"lucid_recorder_active_sessions {len(items)}")
        return "\n".join(lines) + "\n"

    return app
