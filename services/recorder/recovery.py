"""After a crash: finish what a previous recorder process left on the recordings volume. Completed
segments are re-checked and registered, the partial one (the segment being written when the
process died) is salvaged up to its last complete frame and registered as `salvaged` (discarded
only when not one frame of it is whole), and the session is finalized (or failed, when segments
are missing)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import av

from lucid_assets.clients import ServiceError
from lucid_assets.core import mpegts
from lucid_assets.core.states import LIVE, Event, State
from lucid_assets.files import is_uuid, publish
from services.common.errors import ApiError

from .capture import Segment
from .recorder import SHUTDOWN_MARK, SHUTDOWN_REASON, Recorder

log = logging.getLogger("lucid.recorder")


def leftovers(recordings: Path) -> list[Path]:
    """Session directories on the volume now (before this process records anything)."""
    return sorted(d for d in recordings.iterdir() if d.is_dir() and is_uuid(d.name)) if recordings.is_dir() else []


def segment_of(p: Path, fps: int, *, salvaged: bool = False) -> Segment:
    """A segment file as registered: its frames, and its duration and dropped frames from the
    time stamps (span = last - first + one frame; slots of the span without a frame were dropped)."""
    with av.open(str(p)) as c:
        stream = c.streams.video[0]
        pts = [pk.pts for pk in c.demux(stream) if pk.size and pk.pts is not None]
    span = round((max(pts) - min(pts)) * stream.time_base * fps) + 1 if pts else 0
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return Segment(int(p.stem), p, digest, len(data), len(pts), span * 1000 // fps, max(0, span - len(pts)), salvaged)


def decoded_frames(p: Path) -> int | None:
    """How many frames PyAV decodes from the file (None: the decoder refused it)."""
    try:
        with av.open(str(p)) as c:
            return sum(1 for _ in c.decode(video=0))
    except (av.FFmpegError, ValueError):
        return None


def salvage_partial(p: Path) -> Path | None:
    """A segment cut short by the recorder's death, kept up to its last complete frame under its
    final name (every frame decodes; a frame the decoder refuses is cut too); None: nothing whole.
    The partial file is removed either way (after the salvaged file is durable)."""
    final = p.parent / p.name[1:].removesuffix(".partial")
    if final.exists() or not final.stem.isdigit():  # published before the crash: the partial is a leftover
        p.unlink()
        return None
    data = p.read_bytes()
    tmp = p.with_name(p.name + ".salvage")
    cut = mpegts.salvage(data)
    while cut.units:
        tmp.write_bytes(data[: cut.size])
        if decoded_frames(tmp) == cut.units:
            publish(tmp, final)
            p.unlink()
            log.warning("%s: salvaged %d frames (%d bytes cut)", final, cut.units, len(data) - cut.size)
            return final
        cut = mpegts.salvage(data[: cut.size - 1])  # the last unit did not decode: cut before it
    tmp.unlink(missing_ok=True)
    p.unlink()
    return None


def why_ended(d: Path) -> str:
    """What ended the recording: a recorder stopped with SIGTERM leaves a mark saying so (when it
    could not finalize itself); without one the previous recorder process died (killed, crashed,
    the host lost power). The death of another component never ends a recording: never named here."""
    mark = d / SHUTDOWN_MARK
    if mark.exists():
        return mark.read_text().strip() or SHUTDOWN_REASON
    return "recorder restarted after its process died while recording (killed or crashed)"


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
    for p in d.glob(".*.partial?*"):  # a salvage cut short by a crash of its own: redone below
        p.unlink()
    partial = list(d.glob(".*.partial"))
    if session.state not in LIVE | {State.FINALIZING}:
        for p in partial:
            p.unlink()
        return
    salvaged = [s for s in map(salvage_partial, partial) if s is not None]
    fps = session.video["fps"]
    segs = sorted(p for p in d.glob("*.ts") if p.stem.isdigit())
    for p in segs:
        rec.register(d.name, segment_of(p, fps, salvaged=p in salvaged))
    checked = f"{len(segs) - len(salvaged)} re-checked, {len(partial) - len(salvaged)} partial discarded"
    reason = f"{why_ended(d)}: finalized from the completed segments ({checked})"
    if salvaged:
        reason += " and the last segment, salvaged up to its last complete frame"
    if session.state != State.FINALIZING:
        rec.transition(d.name, Event.STOP, reason=reason)
    try:
        rec.finalize(d.name, reason=reason)
    except (ApiError, ServiceError) as exc:
        rec.transition(d.name, Event.FAIL, reason=f"{reason}; {exc}")
    (d / SHUTDOWN_MARK).unlink(missing_ok=True)


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
