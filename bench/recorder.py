#!/usr/bin/env python3
"""Recorder speed and cost, measured here in one run.

1. Real-time factor (encoded fps / source fps) of the recorder's own libx264 setup (ultrafast,
   zerolatency, forced IDR per segment) on screen-like content - a static desktop with text, a
   window that moves and a line being typed - for 1280x720 and 1920x1080, on one core (one encoder
   thread), target >= 2.5 at 720p30.
2. A live capture at 720p30 through the recorder's Capture class (real pacing, real segment files,
   fsync and rename) for --live-seconds (default 300): frames dropped (target 0), CPU use and peak
   memory of the process running it (target <= 200 MB per session).
3. Remote desktops: a real VNC server (TigerVNC's Xvnc, password) and a real RDP server (FreeRDP's
   shadow server over an Xvfb, NLA) whose desktop shows an xterm being typed into (~10 chars/s) and
   one scrolling a listing, recorded through the recorder's Capture (the viewer into its private
   Xvfb, x11grab) for --remote-seconds (default 60) at each --remote-sizes (default 1920x1080,
   30 fps); for context the same activity on a local Xvfb recorded by the x11 source. Per session:
   CPU of the viewer, of the private Xvfb and of the recorder's capture+encode (% of one core, and
   CPU-seconds per recorded minute), the server's CPU (context, not Lucid's), frames dropped of
   those due, and screen-change -> frame latency p50/p95: the root window of the server is painted
   a new colour about every 2 s (xsetroot), and the recorded segments are decoded to find the first
   frame showing it; a frame's grab time is the first frame's x11grab timestamp (wall clock) +
   pts/fps, as RecordingClock places it (within half a frame).

Usage: python bench/recorder.py [--live-seconds 300] [--frames 300] [--remote-seconds 60]
       [--remote-sizes 1920x1080,1280x720] [--remote-only] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
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


# Remote desktops ---------------------------------------------------------------------------------

PALETTE = ((200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (160, 40, 180), (40, 180, 190))
TYPED = "lucid records what an admin types on a remote desktop 0123456789\n"
SCROLL = "while :; do date +%T.%N; ls -la /usr/bin | shuf -n 39; sleep 0.2; done"  # a busy log: 200 lines/s
RDP_USER = "lucid"
REMOTE_KINDS = ("x11", "vnc", "rdp")  # x11 (first: the others' ratio): the same activity on a local Xvfb


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its threads (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen, grace: float = 3) -> None:
    from services.recorder.remote import stop_process  # terminate, then kill after the grace

    stop_process(proc, grace)


class Desktop:
    """The far side of one row: an X server (Xvnc; Xvfb + FreeRDP's shadow server; a local Xvfb)
    showing an xterm that scrolls a listing and one being typed into, on a root window that
    paint() turns a new colour. Every process it starts is stopped by close()."""

    def __init__(self, kind: str, w: int, h: int, tmp: Path):
        self.kind, self.w, self.h, self.tmp = kind, w, h, tmp
        self.procs: list[subprocess.Popen] = []
        self.server: list[subprocess.Popen] = []  # whose CPU is the server's
        self.password = "bench-" + os.urandom(6).hex()
        self.target = ""
        self.log = (tmp / "desktop.log").open("ab")  # what its programs say on stderr
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", self.log)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def _x_server(self, argv: list[str]) -> tuple[subprocess.Popen, str]:
        """An X server on a display number nobody holds: no lock file, no socket file and no
        abstract socket (seen here: X servers of other jobs listening on :0 and :1 with no lock
        file, so -displayfd's own choice handed clients to them)."""
        taken = Path("/proc/net/unix").read_text()
        for n in random.Random().sample(range(300, 1000), 700):
            files = (Path(f"/tmp/.X{n}-lock"), Path(f"/tmp/.X11-unix/X{n}"))
            if not any(f.exists() for f in files) and f"@/tmp/.X11-unix/X{n}\n" not in taken:
                break
        read_fd, write_fd = os.pipe()
        # -noreset: an X server resets when its last client leaves and drops whoever connects
        # meanwhile (freerdp-shadow-cli opens the display twice: "failed to open display")
        argv = [argv[0], f":{n}", "-displayfd", str(write_fd), "-noreset", *argv[1:]]
        proc = self._spawn(argv, pass_fds=(write_fd,))
        os.close(write_fd)
        with os.fdopen(read_fd) as f:  # written once it listens
            number = f.readline().strip()
        if number != str(n):
            raise RuntimeError(f"{argv[0]} did not start on :{n}: {self.said()}")
        return proc, f":{number}"

    def _start(self) -> None:
        size = f"{self.w}x{self.h}"
        if self.kind == "vnc":
            pw = self.tmp / "vncpasswd"
            pw.write_bytes(
                subprocess.run(["vncpasswd", "-f"], input=f"{self.password}\n".encode(), capture_output=True).stdout
            )
            port = _free_port()
            xvnc, self.display = self._x_server(
                ["Xvnc", "-geometry", size, "-depth", "24", "-rfbport", str(port), "-localhost", "-nolisten", "tcp"]
                + ["-SecurityTypes", "VncAuth", "-PasswordFile", str(pw), "-MaxDisconnectionTime=0"]
            )
            self.server, self.target = [xvnc], f"127.0.0.1:{port}"
        else:
            xvfb, self.display = self._x_server(["Xvfb", "-screen", "0", f"{size}x24", "-nolisten", "tcp"])
            self.server, self.target = [xvfb], self.display
        self.env = {"PATH": os.defpath, "HOME": str(self.tmp), "DISPLAY": self.display}
        if self.kind == "rdp":
            self._shadow_server()
        self.paint((32, 32, 32))
        self._spawn(["xterm", "-geometry", "100x45+0+0", "-e", "sh", "-c", SCROLL], env=self.env)
        self._spawn(["xterm", "-geometry", "80x20+640+0", "-e", "cat"], env=self.env)
        deadline = time.monotonic() + 15
        while len(self._xdotool("search", "--onlyvisible", "--class", "xterm").split()) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the xterms did not appear on {self.display}: {self.said()}")
            time.sleep(0.1)
        self._xdotool("mousemove", "900", "100")  # the pointer (focus) in the typing xterm

    def _shadow_server(self) -> None:
        sam = subprocess.run(
            ["winpr-hash", "-u", RDP_USER, "-p", self.password, "-f", "sam"], capture_output=True, text=True, check=True
        ).stdout
        (self.tmp / "sam").write_text(sam)
        port = _free_port()
        argv = ["freerdp-shadow-cli", f"/port:{port}", "/bind-address:127.0.0.1", "+auth", "/sec:nla"]
        log = self.tmp / "shadow.log"
        with log.open("wb") as out:
            argv.append(f"/sam-file:{self.tmp / 'sam'}")
            self.server.append(self._spawn(argv, env=self.env, stdout=out, stderr=out))
        deadline = time.monotonic() + 20
        while not _listening(port):
            if self.server[-1].poll() is not None or time.monotonic() > deadline:
                alive = "up" if self.server[0].poll() is None else f"gone ({self.server[0].returncode})"
                raise RuntimeError(f"the RDP shadow server did not listen (Xvfb {alive}): {log.read_text()[-1500:]}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{port}"

    def _xdotool(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True).stdout

    def type_for(self, seconds: float) -> None:
        """xdotool types ~10 characters a second into the `cat` xterm for about `seconds`."""
        text = TYPED * (int(seconds * 10 / len(TYPED)) + 2)
        # xdotool 3.2016 waits half of --delay per character (measured: 10 characters in 0.52 s at 100)
        self._spawn(["xdotool", "type", "--delay", "200", text], env=self.env)

    def paint(self, rgb: tuple[int, int, int]) -> tuple[float, float]:
        """The root window turns `rgb`: wall-clock times just before xsetroot starts and after it
        returns (it has synced with the server by then)."""
        before = time.time()
        subprocess.run(["xsetroot", "-solid", "#{:02x}{:02x}{:02x}".format(*rgb)], env=self.env, check=True)
        return before, time.time()

    def server_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.server)

    def said(self) -> str:
        self.log.flush()
        return (self.tmp / "desktop.log").read_text(errors="replace")[-1500:]

    def close(self) -> None:
        for proc in reversed(self.procs):  # clients before their X server
            _stop(proc)
        self.log.close()


def remote_capture(kind: str, target: str, w: int, h: int, fps: int, seconds: float, segdir: Path) -> dict:
    """In a child process (its CPU is the recorder's for this one session): record `target`
    through Capture; says "ready" with the first frame's x11grab timestamp once frames flow."""
    from services.recorder.capture import Capture
    from services.recorder.remote import Secret

    secret = Secret(username=RDP_USER if kind == "rdp" else None, password=sys.stdin.readline().rstrip("\n"))
    if kind == "x11":
        source = {"kind": "x11", "display": target}
    else:
        host, port = target.rsplit(":", 1)
        source = {"kind": kind, "host": host, "port": int(port), "credential": "bench", "reconnect_seconds": 0}
    session = {
        "id": "00000000-0000-0000-0000-0000000000bf",
        "video": {"width": w, "height": h, "fps": fps},
        "chunk_seconds": 10,
        "source": source,
    }
    # the parent gave up (SIGTERM): still stop the viewer and its Xvfb (they run in their own sessions)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cap = Capture(
        session, segdir, lambda seg: None, lambda why: None, encoders=("libx264",), credential=lambda name: secret
    )
    try:
        return _timed_capture(cap, kind, fps, seconds)
    finally:
        if cap._thread.ident is None:  # never started
            cap.close()
        elif not cap.stop_event.is_set():
            cap.stop()


def _timed_capture(cap, kind: str, fps: int, seconds: float) -> dict:
    src, first = cap.source, []
    frames = src.frames

    def noting_the_first():  # slot 0 of the recording is the first frame's grab time
        for frame in frames():
            if not first:
                first.append(frame.time)
            yield frame

    src.frames = noting_the_first
    pids = {"viewer": src.client.proc.pid, "display": src.screen.proc.pid} if kind != "x11" else {}
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    c0, t0 = time.process_time(), time.monotonic()
    cap.start()
    while not first:
        if time.monotonic() > t0 + 20:
            raise RuntimeError(f"no frame from the {kind} source within 20 s")
        time.sleep(0.01)
    print(json.dumps({"ready": True, "t0": first[0]}), flush=True)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    cpu = {k: cpu_seconds(pid) - before[k] for k, pid in pids.items()}
    cpu["recorder"] = time.process_time() - c0
    wall = time.monotonic() - t0
    cap.stop()
    st = cap.stats
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "frames_encoded": st.frames_encoded,
        "frames_dropped": st.frames_dropped,
        "expected_frames": round(wall * fps),
    }


def _yuv(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """BT.601 limited range, what swscale makes of x11grab's RGB by default."""
    r, g, b = rgb
    return (
        16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255,
        128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255,
        128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255,
    )


def recorded_patch(segdir: Path, t0: float, fps: int, w: int, h: int) -> list[tuple[float, tuple]]:
    """(grab time, mean Y/U/V of a patch of bare root window) of every recorded frame."""
    import numpy as np

    x0, x1, y0, y1 = (int(w * 0.80) // 2 * 2, int(w * 0.95) // 2 * 2, int(h * 0.80) // 2 * 2, int(h * 0.95) // 2 * 2)
    out, base = [], None
    for path in sorted(segdir.glob("*.ts")):
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                base = f.time if base is None else base
                means = []
                for i, plane in enumerate(f.planes):
                    a = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
                    d = 1 if i == 0 else 2
                    means.append(float(a[y0 // d : y1 // d, x0 // d : x1 // d].mean()))
                out.append((t0 + round((f.time - base) * fps) / fps, tuple(means)))
    return out


def marker_latencies(frames: list, marks: list, fps: int) -> list[float | None]:
    """Per change: the grab time of the first frame showing its colour - the moment xsetroot
    started (None: never seen before the next change)."""
    out = []
    for k, (before, _after, rgb) in enumerate(marks):
        want = _yuv(rgb)
        until = marks[k + 1][0] if k + 1 < len(marks) else float("inf")
        seen = next(
            (
                t
                for t, yuv in frames
                if before - 1 / fps <= t < until + 1 and all(abs(a - b) <= 14 for a, b in zip(yuv, want))
            ),
            None,
        )
        out.append(None if seen is None else seen - before)
    return out


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# long: one row from the server's start to the decoded latencies, every process stopped in its finally
def remote_row(kind: str, w: int, h: int, fps: int, seconds: float, keep: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="lucid-bench-remote-") as d:
        tmp = Path(d)
        desk = Desktop(kind, w, h, tmp)
        try:
            desk.type_for(seconds + 30)
            env = {**os.environ, "LUCID_URL_ALLOW_HOSTS": "127.0.0.1", "LUCID_DATA_DIR": str(tmp / "data")}
            argv = [sys.executable, __file__, "--remote-child", kind, "--target", desk.target, "--size", f"{w}x{h}"]
            argv += ["--remote-seconds", str(seconds), "--segdir", str(tmp / "segments")]
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            try:
                child.stdin.write(desk.password + "\n")
                child.stdin.close()
                line = child.stdout.readline()
                if not line:
                    raise RuntimeError(f"the {kind} capture did not start (exit {child.wait()})")
                ready = json.loads(line)
                s0, m0, r0 = desk.server_cpu(), time.monotonic(), time.time()
                rnd, marks = random.Random(18), []
                interval = min(2.0, max(0.5, (seconds - 3) / 24))
                while (at := m0 + 1.0 + len(marks) * interval + rnd.uniform(0, 0.3)) < m0 + seconds - 1.0:
                    time.sleep(max(0.0, at - time.monotonic()))
                    colour = PALETTE[len(marks) % len(PALETTE)]
                    marks.append((*desk.paint(colour), colour))
                time.sleep(max(0.0, m0 + seconds - 0.2 - time.monotonic()))
                server_s, server_wall = desk.server_cpu() - s0, time.monotonic() - m0
                # x11grab stamps frames with the wall clock (av_gettime): a step of it (seen here: +31 s
                # within one minute, a paused VM or a time sync) shifts frame times and counts as drops
                clock_step = (time.time() - r0) - server_wall
                rest = child.stdout.read()
                if child.wait() != 0:
                    raise RuntimeError(f"the {kind} capture failed (exit {child.returncode})")
                res = json.loads(rest.strip().splitlines()[-1])
            finally:
                _stop(child, grace=20)  # time to stop its viewer and private Xvfb
        finally:
            desk.close()
        lat = marker_latencies(recorded_patch(tmp / "segments", ready["t0"], fps, w, h), marks, fps)
        if keep is not None:  # to look at what was recorded
            shutil.copytree(tmp / "segments", keep / f"{kind}-{w}x{h}", dirs_exist_ok=True)
    seen = [x * 1000 for x in lat if x is not None]
    wall, cpu = res["seconds"], res["cpu_s"]
    lucid = sum(cpu.values())
    return {
        "source": kind,
        "size": f"{w}x{h}",
        "fps": fps,
        "seconds": round(wall, 1),
        "cpu_pct": {k: round(v / wall * 100, 1) for k, v in cpu.items()},
        "lucid_pct": round(lucid / wall * 100, 1),
        "lucid_cpu_s_per_min": round(lucid / (wall / 60), 1),
        "server_pct": round(server_s / server_wall * 100, 1),
        "frames_dropped": res["frames_dropped"],
        "frames_encoded": res["frames_encoded"],
        "expected_frames": res["expected_frames"],
        "changes": len(marks),
        "changes_seen": len(seen),
        "latency_ms_p50": round(_pct(seen, 0.5)) if seen else None,
        "latency_ms_p95": round(_pct(seen, 0.95)) if seen else None,
        "xsetroot_ms_p50": round(_pct([(a - b) * 1000 for b, a, _ in marks], 0.5)) if marks else None,
        "wall_clock_step_s": round(clock_step, 2),
    }


def remote_section(
    sizes: list[tuple[int, int]], fps: int, seconds: float, kinds=REMOTE_KINDS, keep: Path | None = None
) -> list[dict]:
    missing = [
        b
        for b in ("Xvnc", "vncpasswd", "xtigervncviewer", "xfreerdp", "freerdp-shadow-cli", "winpr-hash")
        + ("Xvfb", "xauth", "xterm", "xdotool", "xsetroot")
        if not shutil.which(b)
    ]
    if missing:
        print(f"- remote desktops: skipped, {', '.join(missing)} not installed (see docs/RECORDER.md)")
        return []
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"- remote desktops: {seconds:.0f} s each at {fps} fps, xterms typing and scrolling "
        f"({os.cpu_count()} CPUs, load average {load} before)",
        flush=True,
    )
    print(
        "  | source | size | Lucid CPU (viewer + private Xvfb + capture/encode) | CPU-s per recorded min "
        "| vs local x11 | server (context) | dropped / due | change -> frame p50 / p95 |"
    )
    print("  |---|---|---|---|---|---|---|---|")
    rows = []
    for w, h in sizes:
        local = None
        for kind in kinds:
            r = remote_row(kind, w, h, fps, seconds, keep)
            local = r["lucid_pct"] if kind == "x11" else local
            r["vs_local_x11"] = round(r["lucid_pct"] / local, 2) if local else None
            p = r["cpu_pct"]
            parts = " + ".join(f"{p[k]:.0f}" for k in ("viewer", "display", "recorder") if k in p)
            step = r["wall_clock_step_s"]
            print(
                f"  | {kind} | {r['size']} | {r['lucid_pct']:.0f} % of a core ({parts}) | {r['lucid_cpu_s_per_min']} "
                f"| {r['vs_local_x11'] or '-'} x | {r['server_pct']:.0f} % "
                f"| {r['frames_dropped']} / {r['expected_frames']} "
                f"| {r['latency_ms_p50']} / {r['latency_ms_p95']} ms ({r['changes_seen']} of {r['changes']}) |"
                + (f" NOT VALID: the wall clock stepped {step:+.1f} s" if abs(step) > 0.2 else ""),
                flush=True,
            )
            rows.append(r)
    print(f"  load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} after", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live-seconds", type=float, default=300)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--live-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--remote-seconds", type=float, default=60)
    ap.add_argument("--remote-sizes", default="1920x1080", help="comma-separated, e.g. 1920x1080,1280x720")
    ap.add_argument("--remote-only", action="store_true", help="only the remote desktops section")
    ap.add_argument("--remote-sources", default=",".join(REMOTE_KINDS), help="rows of that section (x11: local)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--remote-keep", type=Path, help="copy each remote row's segments under this directory")
    for hidden in ("--remote-child", "--target", "--size", "--segdir"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.live_child:
        print(json.dumps(live(args.live_seconds, 1280, 720, 30)))
        return 0
    if args.remote_child:
        w, h = map(int, args.size.split("x"))
        res = remote_capture(args.remote_child, args.target, w, h, 30, args.remote_seconds, Path(args.segdir))
        print(json.dumps(res))
        return 0
    results = {} if args.remote_only else encoder_and_live(args)
    sizes = [tuple(map(int, s.split("x"))) for s in args.remote_sizes.split(",") if s]
    kinds = tuple(k for k in REMOTE_KINDS if k in args.remote_sources.split(","))
    results["remote"] = remote_section(sizes, 30, args.remote_seconds, kinds, args.remote_keep)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def encoder_and_live(args: argparse.Namespace) -> dict:
    print("recorder bench: libx264 ultrafast/zerolatency, screen-like content, one encoder thread")
    rtf = []
    for w, h in ((1280, 720), (1920, 1080)):
        r = realtime_factor(w, h, 30, args.frames)
        rtf.append(r)
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
    return {"realtime": rtf, "live": lv}


if __name__ == "__main__":
    sys.exit(main())
