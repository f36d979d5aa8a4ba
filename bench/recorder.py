#!/usr/bin/env python3
"""Recorder speed and cost, measured here in one run.

1. Real-time factor (encoded fps / source fps) of the recorder's own libx264 setup (ultrafast,
   zerolatency, forced IDR per segment) on screen-like content - a static desktop with text, a
   window that moves and a line being typed - for 1280x720 and 1920x1080, on one core (one encoder
   thread), target >= 2.5 at 720p30.
2. A live capture at 720p30 through the recorder's Capture class (real pacing, real segment files,
   fsync and rename) for --live-seconds (default 300): frames dropped (target 0), CPU use and peak
   memory of the process running it (target <= 200 MB per session).

Usage: python bench/recorder.py [--live-seconds 300] [--frames 300]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
from av.video.frame import PictureType


def screen_frames(w: int, h: int, count: int = 60) -> list[av.VideoFrame]:
    """Screen-like yuv420p frames: a desktop of text rows, a window moving 6 px per frame and a line
    being typed (a few glyph cells change per frame)."""
    rnd = random.Random(7)
    y = bytearray([235]) * (w * h)  # light background
    for row in range(40, h - 40, 18):  # text rows of glyph-like blocks
        x = 20
        while x < w - 40:
            word = rnd.randrange(3, 10)
            for _ in range(word):
                if x >= w - 40:
                    break
                for dy in range(10):
                    off = (row + dy) * w + x
                    for dx in range(6):
                        if rnd.random() < 0.45:
                            y[off + dx] = 40
                x += 8
            x += 8
    frames = []
    ww, wh = w // 4, h // 4
    for i in range(count):
        yy = bytearray(y)
        wx, wy = (40 + 6 * i) % (w - ww), (60 + 3 * i) % (h - wh)
        for r in range(wh):  # a darker window
            off = (wy + r) * w + wx
            yy[off : off + ww] = bytes([90 + (r % 20)]) * ww
        typed = (i * 2) % ((w - 80) // 8)
        for c in range(typed):  # the line being typed
            for dy in range(10):
                off = (h - 30 + dy) * w + 40 + c * 8
                yy[off : off + 6] = b"\x28\xeb\x28\xeb\x28\xeb"
        f = av.VideoFrame(w, h, "yuv420p")
        f.planes[0].update(bytes(yy))
        f.planes[1].update(bytes([128]) * (f.planes[1].buffer_size))
        f.planes[2].update(bytes([128]) * (f.planes[2].buffer_size))
        frames.append(f)
    return frames


def realtime_factor(w: int, h: int, fps: int, n: int) -> dict:
    from services.recorder.capture import open_encoder

    frames = screen_frames(w, h)
    gop = fps * 10
    cc = open_encoder({"width": w, "height": h, "fps": fps, "encoders": ["libx264"]}, gop, threads=1)
    out = 0
    t = time.perf_counter()
    c0 = time.process_time()
    for i in range(n):
        f = frames[i % len(frames)]
        f.pts, f.time_base = i, Fraction(1, fps)
        f.pict_type = PictureType.I if i % gop == 0 else PictureType.NONE
        out += sum(p.size for p in cc.encode(f))
    out += sum(p.size for p in cc.encode(None))
    wall, cpu = time.perf_counter() - t, time.process_time() - c0
    return {
        "size": f"{w}x{h}",
        "encoded_fps": n / wall,
        "rtf": n / wall / fps,
        "cpu_per_frame_ms": cpu / n * 1000,
        "bitrate_kbps": out * 8 / (n / fps) / 1000,
    }


def live(seconds: float, w: int, h: int, fps: int) -> dict:
    """Run in a child process so that its peak RSS is one session's."""
    from services.recorder.capture import Capture

    def rss() -> float:  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = rss()  # the interpreter, PyAV and FFmpeg loaded: what the service has before any session
    with tempfile.TemporaryDirectory() as d:
        segs = []
        session = {
            "id": "00000000-0000-0000-0000-0000000000be",
            "video": {"width": w, "height": h, "fps": fps},
            "chunk_seconds": 10,
            "source": {"kind": "testsrc", "pattern": "testsrc2"},
        }
        cap = Capture(session, Path(d), segs.append, lambda why: None, encoders=("libx264",))
        c0, t0 = time.process_time(), time.monotonic()
        cap.start()
        time.sleep(seconds)
        cap.stop()
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        st = cap.stats
        return {
            "seconds": round(wall, 1),
            "frames_encoded": st.frames_encoded,
            "frames_dropped": st.frames_dropped,
            "expected_frames": round(wall * fps),
            "segments": len(segs),
            "cpu_cores": round(cpu / wall, 3),
            "peak_rss_mb": round(rss(), 1),
            "session_mb": round(rss() - base, 1),
            "base_mb": round(base, 1),
            "encoder": cap.encoder,
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live-seconds", type=float, default=300)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--live-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.live_child:
        print(json.dumps(live(args.live_seconds, 1280, 720, 30)))
        return 0
    print("recorder bench: libx264 ultrafast/zerolatency, screen-like content, one encoder thread")
    for w, h in ((1280, 720), (1920, 1080)):
        r = realtime_factor(w, h, 30, args.frames)
        print(
            f"- {r['size']}@30: {r['encoded_fps']:.0f} fps encoded = real-time factor {r['rtf']:.2f} "
            f"({r['cpu_per_frame_ms']:.1f} ms CPU/frame, {r['bitrate_kbps']:.0f} kbit/s)"
        )
        if (w, h) == (1280, 720):
            rtf720 = r["rtf"]
    print(
        f"- live capture 720p30 for {args.live_seconds:.0f} s through the recorder's Capture (testsrc2 source) ...",
        flush=True,
    )
    child = subprocess.run(
        [sys.executable, __file__, "--live-child", "--live-seconds", str(args.live_seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    lv = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"  {lv['frames_encoded']} frames encoded of {lv['expected_frames']} due, {lv['frames_dropped']} dropped, "
        f"{lv['segments']} segments, {lv['cpu_cores']:.2f} cores busy; peak RSS {lv['peak_rss_mb']} MB = "
        f"{lv['base_mb']} MB process before any session + {lv['session_mb']} MB for the session"
    )
    for label, ok, value in (
        ("real-time factor >= 2.5 at 720p30", rtf720 >= 2.5, f"{rtf720:.2f}"),
        ("zero dropped frames (live 720p30)", lv["frames_dropped"] == 0, lv["frames_dropped"]),
        ("<= 200 MB per session", lv["session_mb"] <= 200, lv["session_mb"]),
    ):
        print(f"  {'MET ' if ok else 'MISS'} {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
