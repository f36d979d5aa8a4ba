"""After a crash: finish what a previous recorder process left on the recordings volume. Completed
segments are re-checked and registered, partial ones discarded, and the session is finalized (or
failed, when segments are missing)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import av

from lucid_assets.clients import ServiceError
from lucid_assets.core.states import LIVE, Event, State
from lucid_assets.files import is_uuid
from services.common.errors import ApiError

from .capture import Segment
from .recorder import Recorder

log = logging.getLogger("lucid.recorder")


def leftovers(recordings: Path) -> list[Path]:
    """Session directories on the volume now (before this process records anything)."""
    return sorted(d for d in recordings.iterdir() if d.is_dir() and is_uuid(d.name)) if recordings.is_dir() else []


def frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(video=0) if p.size)


def recover_one(rec: Recorder, d: Path) -> None:
    if rec.active(d.name) is not None:  # recording in this process: not a leftover
        return
    try:
        session = rec.pipeline.session(d.name)
    except ServiceError as exc:
        if exc.status == 404:
            return
        raise
    if session.source.get("kind") == "push":
        return  # uploads are not tied to this process: an agent may still be pushing
    partial = list(d.glob(".*.partial*"))
    for p in partial:
        p.unlink()
    if session.state not in LIVE | {State.FINALIZING}:
        return
    fps = session.video["fps"]
    segs = sorted(p for p in d.glob("*.ts") if p.stem.isdigit())
    for p in segs:
        data = p.read_bytes()
        n = frames_in(p)
        rec.register(d.name, Segment(int(p.stem), p, hashlib.sha256(data).hexdigest(), len(data), n, n * 1000 // fps))
    reason = (
        f"recorder restarted while recording: finalized from the completed segments "
        f"({len(segs)} re-checked, {len(partial)} partial discarded)"
    )
    if session.state != State.FINALIZING:
        rec.transition(d.name, Event.STOP, reason=reason)
    try:
        rec.finalize(d.name, reason=reason)
    except (ApiError, ServiceError) as exc:
        rec.transition(d.name, Event.FAIL, reason=f"{reason}; {exc}")


def recover(rec: Recorder, dirs: list[Path]) -> None:
    """Run in a thread at start: wait for the pipeline (up to a minute), then recover each directory."""
    for _ in range(60):
        try:
            rec.pipeline.request("GET", "/health")
            break
        except ServiceError:
            time.sleep(1)
    for d in dirs:
        try:
            recover_one(rec, d)
        except Exception:
            log.exception("recovery of %s failed", d.name)
