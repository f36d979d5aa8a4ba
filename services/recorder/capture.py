"""Capture with PyAV into keyframe-aligned MPEG-TS segments.

One encoder runs for the whole session with running timestamps; every segment is its own MPEG-TS
file that starts with an IDR frame, so each decodes alone and their byte concatenation is the
recording. A segment is written under a temporary name, fsynced, renamed, then registered.

Timestamps: frame i of the recording has pts = round(recording time x fps), where recording time is
the wall clock since the first frame minus the time spent paused (a file read as fast as possible
uses its own timestamps instead). A source faster than the frame rate is thinned; a gap (the
source stalled, or the encoder fell behind) is a real gap in pts and is counted as dropped frames.
Pause produces no frames and leaves no hole: the clock stops with it."""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

from lucid_assets.files import publish

from .sources import Source, SourceError, open_source

log = logging.getLogger("lucid.recorder")
DEFAULT_ENCODERS = ("h264_v4l2m2m", "h264_nvenc", "libx264")


@dataclass
class Segment:
    seq: int
    path: Path
    sha256: str
    size: int
    frames: int
    duration_ms: int
    dropped_frames: int = 0  # frame slots of this segment's span the capture could not fill
    salvaged: bool = False  # cut short by a recorder crash, kept up to its last complete frame


@dataclass
class Stats:
    frames_captured: int = 0
    frames_dropped: int = 0
    frames_encoded: int = 0
    segments: int = 0
    last_write_ms: float = 0.0


class CaptureEnded(Exception):
    """Why a capture stopped on its own: the kind says what the session does next."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason  # kind: "source_ended" | "error"


def open_encoder(video: dict, gop: int, order: tuple[str, ...] = DEFAULT_ENCODERS, threads: int = 0) -> av.CodecContext:
    """The first encoder of the preference list that opens here."""
    tried = []
    for name in video.get("encoders") or order:
        try:
            cc = av.CodecContext.create(name, "w")
            cc.width, cc.height, cc.pix_fmt = video["width"], video["height"], "yuv420p"
            cc.time_base = Fraction(1, video["fps"])
            cc.framerate = Fraction(video["fps"], 1)
            cc.gop_size = gop * 4  # segments start at forced IDR frames; this is only a backstop
            if threads:
                cc.thread_count = threads
            if name == "libx264":
                cc.options = {
                    "preset": "ultrafast",
                    "tune": "zerolatency",
                    "forced-idr": "1",
                    "x264-params": f"keyint={gop * 4}:min-keyint=1:scenecut=0",
                }
            elif name == "h264_nvenc":
                cc.options = {"preset": "p1", "tune": "ll", "forced-idr": "1", "zerolatency": "1"}
            cc.open()
            return cc
        except (av.FFmpegError, ValueError, OSError) as exc:
            tried.append(f"{name}: {exc}")
    raise SourceError("no encoder opened (" + "; ".join(tried) + ")")


def probe_encoders(order: tuple[str, ...] = DEFAULT_ENCODERS) -> dict[str, str]:
    """Which encoders of the preference list open on this machine (a 64x64 trial each)."""
    out = {}
    for name in order:
        try:
            open_encoder({"width": 64, "height": 64, "fps": 10, "encoders": [name]}, 10)
            out[name] = "available"
        except SourceError as exc:
            out[name] = str(exc).split(": ", 1)[-1].rstrip(")")
    return out


def segment_name(seq: int) -> str:
    return f"{seq:08d}.ts"


class SegmentWriter:
    def __init__(self, directory: Path, codec: av.CodecContext, fps: int, on_segment: Callable[[Segment], None]):
        self.dir, self.codec, self.fps, self.on_segment = directory, codec, fps, on_segment
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        self.container = self.stream = self.tmp = None
        self.frames = 0
        self.first_pts = self.last_pts = 0
        self.write_ms = 0.0
        self.drops: dict[int, int] = {}  # pts -> frames dropped just before it (not yet in a segment)

    def dropped(self, pts: int, n: int) -> int:
        """Note `n` frames dropped before the frame at `pts`: they count in the segment holding it."""
        if n:
            self.drops[pts] = self.drops.get(pts, 0) + n
        return n

    def _open(self) -> None:
        self.tmp = self.dir / f".{segment_name(self.seq)}.partial"
        # Every packet reaches the file when it is muxed (not a 256 KiB buffer later) and each PES
        # declares its length: a recorder killed mid-segment leaves a file that recovery can cut
        # after its last complete frame (mpegts.salvage), losing only what was not encoded yet.
        self.container = av.open(
            str(self.tmp), "w", format="mpegts", options={"flush_packets": "1", "omit_video_pes_length": "0"}
        )
        self.stream = self.container.add_stream("h264", rate=self.fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.codec.width, self.codec.height, "yuv420p"
        self.frames = 0

    def close_segment(self) -> None:
        if self.container is None:
            return
        t0 = time.perf_counter()
        self.container.close()
        self.container = None
        final = self.dir / segment_name(self.seq)
        publish(self.tmp, final)
        data = final.read_bytes()
        span = self.last_pts - self.first_pts + 1
        dropped = sum(self.drops.pop(p) for p in [p for p in self.drops if p <= self.last_pts])
        seg = Segment(
            self.seq,
            final,
            hashlib.sha256(data).hexdigest(),
            len(data),
            self.frames,
            span * 1000 // self.fps,
            dropped_frames=dropped,
        )
        self.write_ms = (time.perf_counter() - t0) * 1000
        self.seq += 1
        self.on_segment(seg)

    def discard(self) -> None:
        """Drop the segment being written (after a failure): it is never registered."""
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # the file is being thrown away; its close may fail the same way
                pass
            self.container = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def write(self, packet: av.Packet) -> None:
        pts = packet.pts  # in frames (the encoder's time base); mux() rescales the packet in place
        if packet.is_keyframe and (self.container is None or self.frames > 0):
            self.close_segment()
            self._open()
            self.first_pts = pts
        if self.container is None:  # the encoder's first packet is always a keyframe
            raise SourceError("encoder produced a non-keyframe first packet")
        packet.stream = self.stream
        self.container.mux(packet)
        self.frames += 1
        self.last_pts = pts


def _reason(exc: BaseException) -> CaptureEnded:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CaptureEnded("error", f"disk full while writing a segment ({exc.strerror})")
    if isinstance(exc, av.FFmpegError) and getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return CaptureEnded("error", "disk full while writing a segment")
    return CaptureEnded("error", f"capture failed: {type(exc).__name__}: {exc}")


class RecordingClock:
    """Places frames on the recording's timeline: slot (pts, in frames) = round(recording time x fps),
    recording time being the source's own clock since its first frame, less the time paused.

    Live sources (an X display, a stream) keep their clock running while paused, so the gap their
    timestamps show across a pause is taken out. Paced sources (a pattern, a file read at its own
    speed) wait for each frame's moment on the wall clock. A synthetic pattern that falls behind
    real time by a whole frame skips slots (counted as dropped) instead of drifting; a gap in a live
    source's timestamps is a real gap and is counted too; a source faster than the frame rate is
    thinned."""

    def __init__(self, fps: int, *, paced: bool, synthetic: bool, now=time.monotonic, sleep=time.sleep):
        self.fps, self.paced, self.synthetic = fps, paced, synthetic
        self.now, self.sleep = now, sleep
        self.first = self.prev = self.wall0 = None
        self.offset = 0.0  # source time taken out: pauses of live sources, skips of late patterns
        self.wall_paused = 0.0
        self.resumed = False
        self.last = -1

    def paused(self, wall_seconds: float) -> None:
        self.wall_paused += wall_seconds
        self.resumed = True

    def place(self, ts: float | None) -> tuple[int, int] | None:
        """(slot, frames dropped before it), or None for a frame to skip."""
        if ts is None:  # a source without timestamps for this frame: the next frame's moment
            ts = self.prev + 1 / self.fps if self.prev is not None else 0.0
        if self.first is None:
            self.first, self.wall0 = ts, self.now()
        elif self.resumed and not self.paced:
            self.offset += max(0.0, ts - self.prev - 1 / self.fps)
        self.resumed, self.prev = False, ts
        t = ts - self.first - self.offset
        if self.paced:
            lag = self.now() - (self.wall0 + self.wall_paused + t)
            if lag < 0:
                self.sleep(-lag)
            elif self.synthetic and lag >= 1 / self.fps:
                skip = int(lag * self.fps) / self.fps
                self.offset -= skip
                t += skip
        slot = round(t * self.fps)
        if slot <= self.last:
            return None
        dropped, self.last = slot - self.last - 1, slot
        return slot, dropped


class Capture:
    """One session's capture thread plus a registrar thread that hands segments to the pipeline."""

    def __init__(
        self,
        session: dict,
        directory: Path,
        register: Callable[[Segment], None],
        on_end: Callable[[CaptureEnded], None],
        *,
        encoders: tuple[str, ...] = DEFAULT_ENCODERS,
        file_roots: list[Path] | None = None,
        credential: Callable[[str], object] | None = None,
        on_gap: Callable[[object], None] | None = None,
    ):
        self.session = session
        self.video = session["video"]
        self.fps = self.video["fps"]
        self.gop = self.fps * session["chunk_seconds"]
        self.dir = directory
        self.register, self.on_end = register, on_end
        self.stats = Stats()
        self.stop_event, self.abort_event = threading.Event(), threading.Event()
        self.resume_event = threading.Event()
        self.resume_event.set()
        self.registered: list[Segment] = []
        self.ended: CaptureEnded | None = None
        self._queue: queue.Queue[Segment | None] = queue.Queue()
        self.source: Source = open_source(
            session["source"], self.video, file_roots=file_roots, credential=credential, on_gap=on_gap
        )
        try:
            self.codec = open_encoder(self.video, self.gop, encoders)
        except SourceError:
            self.source.close()
            raise
        self.encoder = self.codec.name
        self._thread = threading.Thread(target=self._run, name=f"capture-{session['id'][:8]}", daemon=True)
        self._registrar = threading.Thread(
            target=self._register_loop, name=f"register-{session['id'][:8]}", daemon=True
        )

    def start(self) -> None:
        self._registrar.start()
        self._thread.start()

    def pause(self) -> None:
        self.resume_event.clear()

    def resume(self) -> None:
        self.resume_event.set()

    def stop(self, timeout: float = 120) -> list[Segment]:
        """Stop, flush the last segment, and wait until every segment is registered."""
        self.stop_event.set()
        self.resume_event.set()
        self.source.interrupt()
        self._thread.join(timeout)
        self._registrar.join(timeout)
        if self.ended and self.ended.kind == "error":
            raise SourceError(self.ended.reason)
        return self.registered

    def close(self) -> None:
        """Release the source without recording (a start that was refused)."""
        self.source.close()

    def _stopping(self) -> bool:
        return self.stop_event.is_set() or self.abort_event.is_set()

    # long: the capture loop: pause, clock, keyframes, encode and every way it ends, in one place
    def _run(self) -> None:
        writer = SegmentWriter(self.dir, self.codec, self.fps, self._queue.put)
        w, h = self.video["width"], self.video["height"]
        src = self.source
        clock = RecordingClock(self.fps, paced=src.paced, synthetic=src.synthetic)
        next_key = 0
        try:
            frames = iter(src.frames())
            try:
                for frame in frames:
                    if self._stopping():
                        break
                    if not self.resume_event.is_set():
                        pause_start = time.monotonic()
                        if src.paced:  # nothing flows meanwhile: this frame is simply the next one
                            self.resume_event.wait()
                        while not self.resume_event.is_set() and not self._stopping():
                            next(frames, None)  # a live source keeps flowing while paused: discard
                        clock.paused(time.monotonic() - pause_start)
                        if not src.paced or self._stopping():
                            continue  # the frame in hand is from before the pause
                    self.stats.frames_captured += 1
                    placed = clock.place(time.monotonic() if src.monotonic else frame.time)
                    if placed is None:
                        continue  # the source is faster than the frame rate
                    idx = placed[0]
                    self.stats.frames_dropped += writer.dropped(*placed)
                    if frame.width != w or frame.height != h or frame.format.name != "yuv420p":
                        frame = frame.reformat(width=w, height=h, format="yuv420p")
                    frame.pts, frame.time_base = idx, Fraction(1, self.fps)
                    if idx >= next_key:
                        frame.pict_type = PictureType.I
                        next_key = (idx // self.gop + 1) * self.gop
                    else:
                        frame.pict_type = PictureType.NONE
                    for packet in self.codec.encode(frame):
                        writer.write(packet)
                    self.stats.frames_encoded += 1
                else:
                    if not self._stopping():
                        why = src.end_reason or f"the {src.describe()} source ended"
                        self.ended = CaptureEnded("source_ended", why)
            except (av.FFmpegError, OSError) as exc:
                if not self._stopping() and not _is_write_error(exc):
                    self.ended = CaptureEnded("source_ended", f"the {src.describe()} source went away: {exc}")
                else:
                    raise
            for packet in self.codec.encode(None):
                writer.write(packet)
            writer.close_segment()
        except Exception as exc:  # report, never leave a session silently recording
            log.exception("capture of %s failed", self.session["id"])
            self.ended = _reason(exc)
            writer.discard()
        finally:
            self.stats.last_write_ms = writer.write_ms
            self.source.close()
            self._queue.put(None)
        if self.ended and not self.stop_event.is_set():
            self._registrar.join()
            self.on_end(self.ended)

    def _register_loop(self) -> None:
        while (seg := self._queue.get()) is not None:
            try:
                self.register(seg)
                self.registered.append(seg)
                self.stats.segments += 1
            except Exception as exc:
                self.ended = CaptureEnded("error", f"segment {seg.seq} could not be registered: {exc}")
                log.error("%s", self.ended.reason)
                self.abort_event.set()
                self.resume_event.set()
                self.source.interrupt()
                return


def _is_write_error(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
