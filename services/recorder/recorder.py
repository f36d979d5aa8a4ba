"""The recorder's state: the captures running in this process, their counters, and how a capture's
life is told to the pipeline (start, segments, end, finalize). Routes and crash recovery use it."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from lucid_assets.clients import PipelineClient, ServiceError, StorageClient
from lucid_assets.core.states import LIVE, Event, Note, SourceKind, State
from lucid_assets.models import AuditNote, RecorderBeat, RegisterChunk, Registration, Session
from lucid_assets.settings import Settings
from lucid_assets.trust import RECORDER, own_token
from services.common.errors import ApiError

from .capture import Capture, CaptureEnded, Segment
from .remote import Gap, Secret
from .sources import SourceError

log = logging.getLogger("lucid.recorder")
COUNTERS = ("frames_captured", "frames_dropped", "frames_encoded", "segments")
REGISTER_TRIES = 10  # a pipeline restart (503) is waited out for ~30 s before a segment fails
# a capture's segments wait out a pipeline outage this long (they queue on disk, in order) before it fails
REGISTER_PATIENCE_S = 600
# in a session's directory: this recorder was stopped (SIGTERM) while recording, it did not die
SHUTDOWN_MARK = ".recorder-shutdown"
SHUTDOWN_REASON = "recorder stopped (SIGTERM: platform stopped or restarted) while recording"


def _retrying(call):
    """A peer restarting (503) is waited out for ~30 s; any other refusal is raised at once."""
    for attempt in range(REGISTER_TRIES):
        try:
            return call()
        except ServiceError as exc:
            if exc.status != 503 or attempt == REGISTER_TRIES - 1:
                raise
            time.sleep(min(5, 0.2 * 2**attempt))
    raise AssertionError("unreachable")


def openable_sources() -> list[SourceKind]:
    """The source kinds this host can open: remote desktops need their viewer and Xvfb installed."""
    kinds = [SourceKind.TESTSRC, SourceKind.URL, SourceKind.PUSH, SourceKind.X11]
    if shutil.which("Xvfb"):
        kinds += [
            k
            for k, viewer in ((SourceKind.VNC, "xtigervncviewer"), (SourceKind.RDP, "xfreerdp"))
            if shutil.which(viewer)
        ]
    return kinds


class Recorder:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.recordings: Path = settings.recordings_path
        self.pipeline = PipelineClient(settings.pipeline_url, token=own_token(settings, RECORDER))
        self.storage = StorageClient(settings.storage_url, token=own_token(settings, RECORDER))
        self.captures: dict[str, Capture] = {}
        self.lock = threading.Lock()
        self.totals = dict.fromkeys(COUNTERS, 0)  # of captures that have ended
        self.write_latency = {"count": 0, "sum_ms": 0.0, "max_ms": 0.0}
        self.encoders: dict[str, str] = {}
        self.closing = threading.Event()  # SIGTERM: outages are no longer waited out

    # --- the pipeline ------------------------------------------------------------------------
    def transition(self, session_id: str, event: Event, **extra) -> Session:
        return self.pipeline.transition(session_id, event, **extra)

    def register(self, session_id: str, seg: Segment) -> Registration:
        """Register a finished segment. With upload_segments (hosts share no filesystem) it is staged
        with the storage service first, registered under the staged reference, and only then removed
        from this host's disk: a crash at any point leaves it on disk for recovery to redo."""
        path = str(seg.path)
        if self.settings.upload_segments:
            path = _retrying(lambda: self.storage.stage(session_id, seg.seq, seg.path, seg.sha256)).path
        body = RegisterChunk(
            seq=seg.seq,
            sha256=seg.sha256,
            size=seg.size,
            frames=seg.frames,
            duration_ms=seg.duration_ms,
            path=path,
            dropped_frames=seg.dropped_frames,
            salvaged=seg.salvaged,
        )
        registration = _retrying(lambda: self.pipeline.register_chunk(session_id, body))
        if self.settings.upload_segments:
            seg.path.unlink(missing_ok=True)  # staged and registered: no longer this host's to keep
        return registration

    def register_patiently(self, session_id: str, seg: Segment) -> Registration:
        """A capture's segment: a pipeline that is unreachable (503: restarting after a crash) is
        waited out for REGISTER_PATIENCE_S while the capture goes on writing segments to disk,
        registered in order once it is back; only a refusal, a longer outage or shutdown fails it."""
        deadline = time.monotonic() + REGISTER_PATIENCE_S
        waited = False
        while True:
            try:
                registration = self.register(session_id, seg)
                if waited:
                    log.warning("pipeline back: segment %s of %s registered", seg.seq, session_id)
                return registration
            except ServiceError as exc:
                if exc.status != 503 or time.monotonic() > deadline or self.closing.is_set():
                    raise
                if not waited:
                    log.warning("segment %s of %s waits for the pipeline: %s", seg.seq, session_id, exc)
                waited = True
                self.closing.wait(2)

    def finalize(self, session_id: str, reason: str | None = None) -> Session:
        """Tell the pipeline the recording is complete: chunks 0..n-1, no gap (409 naming the gaps)."""
        seqs = sorted(c.seq for c in self.pipeline.chunks(session_id))
        expected = seqs[-1] + 1 if seqs else 0
        missing = sorted(set(range(expected)) - set(seqs))
        if missing:
            raise ApiError(
                409,
                "incomplete",
                f"chunks {missing} are missing; upload them and stop again",
                missing=missing,
                state=State.FINALIZING,
            )
        return self.transition(session_id, Event.FINALIZE, expected_chunks=expected, reason=reason)

    # --- the fleet (issue 17) ---------------------------------------------------------------------
    def beat(self) -> RecorderBeat:
        s = self.settings
        return RecorderBeat(
            url=s.recorder_advertise_url or s.recorder_url, capacity=s.recorder_capacity, sources=openable_sources()
        )

    def heartbeats(self) -> None:
        """Announce this recorder to the pipeline now and every recorder_heartbeat_seconds until
        shutdown (a thread); a pipeline outage is logged once and waited out."""
        failing = False
        while True:
            try:
                self.pipeline.beat(self.beat())
                if failing:
                    log.warning("heartbeat: the pipeline hears this recorder again")
                failing = False
            except ServiceError as exc:
                if not failing:
                    log.warning("heartbeat not delivered: %s", exc)
                failing = True
            # until the pipeline has heard it once (it may start after this recorder), every second
            if self.closing.wait(1 if failing else self.settings.recorder_heartbeat_seconds):
                return

    # --- captures ----------------------------------------------------------------------------
    def active(self, session_id: str) -> Capture | None:
        with self.lock:
            return self.captures.get(session_id)

    def retire(self, session_id: str) -> Capture | None:
        with self.lock:
            cap = self.captures.pop(session_id, None)
            if cap is not None:
                for k in COUNTERS:
                    self.totals[k] += getattr(cap.stats, k)
        return cap

    def begin(self, session: Session) -> Session:
        """Open the source and encoder, tell the pipeline, then capture (a refused start records nothing)."""
        with self.lock:
            if session.id in self.captures:
                raise ApiError(409, "illegal_transition", "session is already being captured", state=State.RECORDING)
            try:
                cap = Capture(
                    session.model_dump(mode="json"),
                    self.recordings / session.id,
                    self._on_segment(session.id),
                    self._on_end(session.id),
                    encoders=self.settings.encoder_order,
                    file_roots=self.settings.file_roots,
                    credential=self._credential(session.id),
                    on_gap=self._on_gap(session.id),
                )
            except SourceError as exc:
                raise ApiError(422, "source_unavailable", str(exc)) from None
            try:
                result = self.transition(session.id, Event.START, encoder=cap.encoder)
            except ServiceError:
                cap.close()
                raise
            self.captures[session.id] = cap
            cap.start()
        return result

    def end(self, session_id: str) -> Session | None:
        """Stop this process's capture of the session, if any; a failed flush fails the session."""
        cap = self.active(session_id)
        if cap is None:
            return None
        try:
            cap.stop()
        except SourceError as exc:
            return self.transition(session_id, Event.FAIL, reason=str(exc))
        finally:
            self.retire(session_id)
        return None

    def _on_end(self, session_id: str):
        def ended(why: CaptureEnded) -> None:
            # what was recorded and registered is sealed whatever ended the capture (the source, a
            # full disk, an encoder error): the end reason says what; only a capture that recorded
            # nothing fails
            cap = self.retire(session_id)
            try:
                recorded = len(cap.registered) if cap is not None else len(self.pipeline.chunks(session_id))
                if not recorded:
                    suffix = " before any frame was recorded" if why.kind == "source_ended" else ""
                    self.transition(session_id, Event.FAIL, reason=why.reason + suffix)
                    return
                reason = why.reason
                if why.kind != "source_ended":
                    reason += f": finalized from the {recorded} segments recorded before it"
                self.transition(session_id, Event.STOP, reason=reason)
                self.finalize(session_id, reason=reason)
            except (ServiceError, ApiError) as exc:
                log.error("could not end %s (%s): %s", session_id, why.reason, exc)

        return ended

    def _credential(self, session_id: str):
        """Opens the stored credential a remote-desktop session names (storage checks that this
        session names it). The secret stays in this process's memory while the capture may
        reconnect; it is never written to disk, argv or a log."""

        def open_credential(name: str) -> Secret:
            try:
                got = self.storage.open_credential(name, session_id)
            except ServiceError as exc:
                raise SourceError(f"credential {name!r}: {exc.body.get('detail') or exc.status}") from None
            return Secret(username=got.username, domain=got.domain, password=got.password.get_secret_value())

        return open_credential

    def _on_gap(self, session_id: str):
        """A remote desktop's connection lost, then back: audited, so the timeline can show the gap."""

        def on_gap(gap: Gap) -> None:
            event = Note.SOURCE_LOST if gap.back_at is None else Note.SOURCE_BACK
            detail = {"reason": gap.reason}
            if gap.back_at is not None:
                detail["gap_ms"] = round((gap.back_at - gap.lost_at) * 1000)
            self.pipeline.audit_note(session_id, AuditNote(event=event, detail=detail))

        return on_gap

    def _on_segment(self, session_id: str):
        def on_segment(seg: Segment) -> None:
            self.register_patiently(session_id, seg)
            cap = self.active(session_id)
            ms = cap.stats.last_write_ms if cap else 0.0
            lat = self.write_latency
            lat["count"] += 1
            lat["sum_ms"] += ms
            lat["max_ms"] = max(lat["max_ms"], ms)

        return on_segment

    def shutdown(self) -> None:
        """SIGTERM (the supervisor stopping the platform, a container stop): end this process's
        captures as an operator stop would (last segment flushed and registered, session
        finalized) with a reason that says so. What cannot be told to the pipeline now is left to
        the next start's recovery, with a mark in the session's directory naming the shutdown."""
        self.closing.set()  # an outage now fails a registration after register()'s own retries
        with self.lock:
            ids = list(self.captures)
        for sid in ids:
            cap = self.active(sid)
            if cap is None:
                continue
            mark = cap.dir / SHUTDOWN_MARK
            mark.write_text(SHUTDOWN_REASON + "\n")
            try:
                cap.stop(timeout=40)
            except SourceError as exc:
                log.error("%s: capture ended badly at shutdown, left to the next start: %s", sid, exc)
                continue
            finally:
                self.retire(sid)
            on_disk = {int(p.stem) for p in cap.dir.glob("*.ts") if p.stem.isdigit()}
            if on_disk - {seg.seq for seg in cap.registered}:
                log.error("%s: segments not registered at shutdown, left to the next start", sid)
                continue
            try:
                if self.pipeline.session(sid).state in LIVE:
                    self.transition(sid, Event.STOP, reason=SHUTDOWN_REASON)
                self.finalize(sid, reason=SHUTDOWN_REASON)
                mark.unlink(missing_ok=True)
            except (ServiceError, ApiError) as exc:
                log.error("%s: not finalized at shutdown, left to the next start: %s", sid, exc)

    def metrics(self) -> str:
        """Prometheus text: counters over every capture, gauges per live capture."""
        with self.lock:
            items = list(self.captures.items())
            done = dict(self.totals)
        lines = []
        for name in COUNTERS:
            lines.append(f"# TYPE lucid_recorder_{name}_total counter")
            lines.append(f"lucid_recorder_{name}_total {done[name] + sum(getattr(c.stats, name) for _, c in items)}")
            lines.append(f"# TYPE lucid_recorder_session_{name} gauge")
            for sid, c in items:
                lines.append(
                    f'lucid_recorder_session_{name}{{session="{sid}",encoder="{c.encoder}"}} {getattr(c.stats, name)}'
                )
        lat = self.write_latency
        lines += [
            "# TYPE lucid_recorder_segment_write_seconds summary",
            f"lucid_recorder_segment_write_seconds_count {lat['count']}",
            f"lucid_recorder_segment_write_seconds_sum {lat['sum_ms'] / 1000:.6f}",
            "# TYPE lucid_recorder_segment_write_seconds_max gauge",
            f"lucid_recorder_segment_write_seconds_max {lat['max_ms'] / 1000:.6f}",
            "# TYPE lucid_recorder_active_sessions gauge",
            f"lucid_recorder_active_sessions {len(items)}",
        ]
        return "\n".join(lines) + "\n"
