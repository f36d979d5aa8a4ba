"""Capture with PyAV into keyframe-aligned MPEG-TS segments.

One encoder runs for the whole session with running timestamps; every segment is its own MPEG-TS
file that starts with an IDR frame, so each decodes alone and their byte concatenation is the
recording. A segment is written under a temporary name, fsynced, renamed, then registered."""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

log = logging.getLogger("lucid.recorder")


class SourceError(Exception):
    """The source did not open or could not be encoded."""


@dataclass
class Segment:
    seq: int
    path: Path
    sha256: str
    size: int
    frames: int
    duration_ms: int


@dataclass
class Stats:
    frames_captured: int = 0
    frames_dropped: int = 0
    frames_encoded: int = 0
    segments: int = 0
    last_write_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def open_source(source: dict, video: dict):
    kind = source.get("kind")
    if kind == "testsrc":
        w, h, fps = video["width"], video["height"], video["fps"]
        spec = f"{source.get('pattern', 'testsrc')}=size={w}x{h}:rate={fps},format=yuv420p"
        try:
            return av.open(spec, format="lavfi")
        except av.FFmpegError as exc:
            raise SourceError(f"testsrc did not open: {exc}") from None
    raise SourceError(f"source kind {kind!r} is not supported by this recorder")


def open_encoder(video: dict, gop: int) -> av.CodecContext:
    """The first encoder of the preference list that opens here."""
    tried = []
    for name in video.get("encoders") or ["libx264"]:
        try:
            cc = av.CodecContext.create(name, "w")
            cc.width, cc.height, cc.pix_fmt = video["width"], video["height"], "yuv420p"
            cc.time_base = Fraction(1, video["fps"])
            cc.framerate = Fraction(video["fps"], 1)
            cc.gop_size = gop
            if name == "libx264":
                cc.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
            cc.open()
            return cc
        except (av.FFmpegError, ValueError) as exc:
            tried.append(f"{name}: {exc}")
    raise SourceError("no encoder opened (" + "; ".join(tried) + ")")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    def __init__(self, directory: Path, codec: av.CodecContext, fps: int, on_segment: Callable[[Segment], None]):
        self.dir, self.codec, self.fps, self.on_segment = directory, codec, fps, on_segment
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        self.container = self.stream = self.tmp = None
        self.frames = 0
        self.stats_write_ms = 0.0

    def final_path(self, seq: int) -> Path:
        return self.dir / f"{seq:08d}.ts"

    def _open(self) -> None:
        self.tmp = self.dir / f".{self.seq:08d}.ts.partial"
        self.container = av.open(str(self.tmp), "w", format="mpegts")
        self.stream = self.container.add_stream(self.codec.name if self.codec.name != "libx264" else "h264",
                                                rate=self.fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.codec.width, self.codec.height, "yuv420p"
        self.frames = 0

    def close_segment(self) -> None:
        if self.container is None:
            return
        t0 = time.perf_counter()
        self.container.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.final_path(self.seq)
        os.rename(self.tmp, final)
        fsync_dir(self.dir)
        data = final.read_bytes()
        seg = Segment(self.seq, final, hashlib.sha256(data).hexdigest(), len(data), self.frames,
                      self.frames * 1000 // self.fps)
        self.stats_write_ms = (time.perf_counter() - t0) * 1000
        self.container = None
        self.seq += 1
        self.on_segment(seg)

    def write(self, packet: av.Packet) -> None:
        if packet.is_keyframe and (self.container is None or self.frames > 0):
            self.close_segment()
            self._open()
        if self.container is None:  # the encoder's first packet is always a keyframe
            raise SourceError("encoder produced a non-keyframe first packet")
        packet.stream = self.stream
        self.container.mux(packet)
        self.frames += 1


class Capture:
    """One session's capture thread plus a registrar thread that hands segments to the pipeline."""

    def __init__(self, session: dict, directory: Path, register: Callable[[Segment], None],
                 on_failure: Callable[[str], None]):
        self.session = session
        self.video = session["video"]
        self.fps = self.video["fps"]
        self.gop = self.fps * session["chunk_seconds"]
        self.dir = directory
        self.register, self.on_failure = register, on_failure
        self.stats = Stats()
        self.stop_event, self.abort_event = threading.Event(), threading.Event()
        self.resume_event = threading.Event()
        self.resume_event.set()
        self.registered: list[Segment] = []
        self.error: str | None = None
        self._queue: queue.Queue[Segment | None] = queue.Queue()
        self.source = open_source(session["source"], self.video)
        try:
            self.codec = open_encoder(self.video, self.gop)
        except SourceError:
            self.source.close()
            raise
        self.encoder = self.codec.name
        self._thread = threading.Thread(target=self._run, name=f"capture-{session['id'][:8]}", daemon=True)
        self._registrar = threading.Thread(target=self._register_loop, name=f"register-{session['id'][:8]}",
                                           daemon=True)

    def start(self) -> None:
        self._registrar.start()
        self._thread.start()

    def pause(self) -> None:
        self.resume_event.clear()

    def resume(self) -> None:
        self.resume_event.set()

    def stop(self, timeout: float = 60) -> list[Segment]:
        """Stop, flush the last segment, and wait until every segment is registered."""
        self.stop_event.set()
        self.resume_event.set()
        self._thread.join(timeout)
        self._registrar.join(timeout)
        if self.error:
            raise SourceError(self.error)
        return self.registered

    def close(self) -> None:
        """Release the source without recording (a start that was refused)."""
        self.source.close()

    def _run(self) -> None:
        writer = SegmentWriter(self.dir, self.codec, self.fps, self._queue.put)
        interval = 1.0 / self.fps
        n = 0
        try:
            frames = self.source.decode(video=0)
            next_t = time.monotonic()
            while not (self.stop_event.is_set() or self.abort_event.is_set()):
                if not self.resume_event.is_set():
                    self.resume_event.wait()
                    next_t = time.monotonic()
                    continue
                try:
                    frame = next(frames)
                except StopIteration:
                    self.error = "the source ended"
                    break
                self.stats.frames_captured += 1
                now = time.monotonic()
                if now < next_t:
                    time.sleep(next_t - now)
                elif now - next_t > interval:  # behind real time: drop rather than drift
                    self.stats.frames_dropped += 1
                    next_t += interval
                    continue
                next_t += interval
                frame.pts, frame.time_base = n, Fraction(1, self.fps)
                frame.pict_type = PictureType.I if n % self.gop == 0 else PictureType.NONE
                for packet in self.codec.encode(frame):
                    writer.write(packet)
                n += 1
                self.stats.frames_encoded = n
            for packet in self.codec.encode(None):
                writer.write(packet)
            writer.close_segment()
        except Exception as exc:  # report, never leave a session silently recording
            log.exception("capture of %s failed", self.session["id"])
            self.error = f"capture failed: {type(exc).__name__}: {exc}"
        finally:
            self.stats.last_write_ms = writer.stats_write_ms
            self.source.close()
            self._queue.put(None)
        if self.error and not self.stop_event.is_set():
            self.on_failure(self.error)

    def _register_loop(self) -> None:
        while (seg := self._queue.get()) is not None:
            try:
                self.register(seg)
                self.registered.append(seg)
                self.stats.segments += 1
            except Exception as exc:
                self.error = f"segment {seg.seq} could not be registered: {exc}"
                log.error("%s", self.error)
                self.abort_event.set()
                self.resume_event.set()
                if not self.stop_event.is_set():
                    self.on_failure(self.error)
                return
