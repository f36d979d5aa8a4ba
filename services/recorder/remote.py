"""Remote desktops (VNC, RDP): a real viewer renders the desktop into a private X display (Xvfb, one
per session, its own MIT cookie) that the x11 capture records.

Why a viewer and not a protocol library: TigerVNC's and FreeRDP's viewers decode every encoding the
servers use (ZRLE, Tight, H.264/RemoteFX...) in C, follow desktop resizes and draw the remote cursor;
the Python clients measured here lost sync or crashed on ZRLE and cost a core (docs/DECISIONS.md).

The viewer runs full screen at the recording's size: a desktop of another size is centred with
dark grey borders (smaller) or shown from its top-left part, panning after the pointer (larger):
the recording keeps its size either way (docs/RECORDER.md). A connection that drops is retried with
backoff for the source's `reconnect_seconds`; nothing is recorded meanwhile, so the gap is a real
gap in the recording's timestamps (counted as dropped frames). If it does not come back the source
ends with a reason naming the host, and everything recorded so far is sealed."""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import av

from lucid_assets.settings import get_settings

from . import rfb
from .sources import Source, SourceError, check_host

log = logging.getLogger("lucid.recorder")
CONNECT_TIMEOUT_S = 20  # a viewer that neither connects nor fails by then is stopped
SETTLE_S = 0.3  # after the viewer reports its first update: the window is mapped and painted
STDERR_KEEP = 64 * 1024


@dataclass(frozen=True)
class Secret:
    """What a stored credential opens to; its repr never shows the password."""

    username: str | None = None
    domain: str | None = None
    password: str | None = field(default=None, repr=False)


class Viewer(Protocol):
    name: str
    binary: str

    def command(
        self, spec: dict, secret: Secret | None, display: str, width: int, height: int
    ) -> tuple[list[str], bytes, dict[str, str]]:
        """argv, what to write to its stdin, extra environment (credentials never on argv)."""

    def failure(self, stderr: str, secret: Secret | None) -> str | None:
        """A short reason if this stderr says the connection failed (never a credential)."""

    def connected(self, stderr: str) -> bool:
        """True once the viewer shows the desktop."""

    def desktop_size(self, spec: dict, secret: Secret | None) -> tuple[int, int] | None:
        """The desktop's size before connecting, when the private display must fit it (else None:
        the viewer scales by itself, or the size cannot be learned)."""

    def resized(self, line: str) -> tuple[int, int] | None:
        """The desktop's new size, if this stderr line says it changed."""


def _server_words(line: str, limit: int = 160) -> str:
    """A server's own reason, as printable text of bounded length."""
    text = "".join(c if c.isprintable() else " " for c in line).strip()
    return text[:limit]


TOO_MANY = "Too many security failures"  # the server's words when it blocks an address
BLOCKED = "the VNC server blocks this address after too many failed logins"


def _credentials_refused(said: str) -> str:
    """Why the VNC server refused us, in its words (from the viewer's stderr or the size request)."""
    said = _server_words(said)
    return f"the VNC server refused the credentials ({said})" if said else "authentication failed"


_RESIZED = re.compile(r"Resizing framebuffer from \d+x\d+ to (\d+)x(\d+)")


class VncViewer:
    """TigerVNC's viewer: view-only, shared, full screen, no remote resize (the desktop's user keeps
    their size), no reconnect dialog. The password reaches it in VNC_PASSWORD (TigerVNC >= 1.11),
    an environment only this user can read, never argv."""

    name = "tigervnc"
    binary = "xtigervncviewer"
    REFUSALS = (
        ("Connection refused", "connection refused"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
        ("Connection timed out", "connection timed out"),
        ("Name or service not known", "host name not found"),
        ("Temporary failure in name resolution", "host name not found"),
        ("Connection reset by peer", "connection reset by the server"),
    )

    def command(self, spec, secret, display, width, height):
        argv = [
            self.binary,
            "-ViewOnly",
            "-Shared",
            "-FullScreen",
            "-RemoteResize=0",
            "-AlertOnFatalError=0",
            "-ReconnectOnError=0",
            "-FullscreenSystemKeys=0",
            "-MenuKey=",  # no menu key: no "Press F8 to open the context menu" over the first seconds
            "-Log=*:stderr:30,Viewport:stderr:100",  # Viewport's debug lines say when the desktop is resized
            f"{spec['host']}::{spec['port']}",
        ]
        env = {}
        if secret is not None and secret.password is not None:
            env["VNC_PASSWORD"] = secret.password
        if secret is not None and secret.username:
            env["VNC_USERNAME"] = secret.username
        return argv, b"", env

    def failure(self, stderr, secret):
        for line in stderr.splitlines():
            if "Authentication failure" in line or "authentication failed" in line.lower():
                return _credentials_refused(line.split(":", 2)[-1])
            if "security type" in line.lower() and ("no matching" in line.lower() or "not supported" in line.lower()):
                return f"no security type in common with the VNC server ({_server_words(line.split(':', 1)[-1])})"
            if TOO_MANY in line:
                return BLOCKED
            for needle, reason in self.REFUSALS:
                if needle in line:
                    return reason
            if "End of stream" in line or "Connection closed" in line:
                return "the VNC server closed the connection"
        if secret is None and "Choosing security type VncAuth" in stderr and not self.connected(stderr):
            return "the VNC server asks for a password and the session names no credential"
        return None

    def connected(self, stderr):
        return "Using pixel format" in stderr

    def desktop_size(self, spec, secret):
        try:
            return rfb.desktop_size(spec["host"], spec["port"], secret.password if secret else None)
        except rfb.RfbRefused as exc:  # said once: a second wrong try would count towards a block
            said = str(exc)
            raise SourceError(BLOCKED if TOO_MANY in said else _credentials_refused(said)) from None

    def resized(self, line):
        m = _RESIZED.search(line)
        return (int(m.group(1)), int(m.group(2))) if m else None

    def exit_reason(self, stderr: str) -> str | None:
        """Why it stopped, from its last words (an exited viewer that failure() did not explain)."""
        said = [ln.split(":", 1)[1] for ln in stderr.splitlines() if ln.startswith(" CConn:") and ":" in ln]
        said = [w.strip() for w in said if w.strip() and not w.strip().startswith(("Connected to", "Using pixel"))]
        return f"the VNC viewer stopped: {_server_words(said[-1])}" if said else None


def viewer_for(kind: str) -> Viewer:
    if kind == "vnc":
        return VncViewer()
    if kind == "rdp":
        from .rdp import RdpViewer

        return RdpViewer()
    raise SourceError(f"no viewer for source kind {kind!r}")


def displays_dir() -> Path:
    """Where the private displays' cookie files live: in the recorder's own recordings directory
    (the one place it always may write: compose's root and data directory are read-only), 0700,
    emptied when the recorder starts (clear_displays), so a killed recorder leaves nothing behind
    for long. Recovery looks only at session (uuid) directories there."""
    return get_settings().recordings_path / ".displays"


def clear_displays() -> None:
    shutil.rmtree(displays_dir(), ignore_errors=True)


FIRST_DISPLAY = 100  # above the numbers people and other tools use by hand


def _displays_in_use() -> set[int]:
    """Display numbers some X server holds: a lock file, or a listening socket (path or abstract)
    in /proc/net/unix. An X server without a lock file (another container sharing /tmp's sockets)
    would otherwise be taken for free, and a client of ours would reach it."""
    used = set()
    for lock in Path("/tmp").glob(".X*-lock"):
        m = re.fullmatch(r"\.X(\d+)-lock", lock.name)
        try:
            if m and Path(f"/proc/{int(lock.read_text().strip())}").exists():  # a killed server's lock is stale
                used.add(int(m.group(1)))
        except (OSError, ValueError):
            continue
    try:
        sockets = Path("/proc/net/unix").read_text()
    except OSError:
        sockets = ""
    used |= {int(n) for n in re.findall(r"/tmp/\.X11-unix/X(\d+)", sockets)}
    return used


class PrivateDisplay:
    """An Xvfb of the recording's size that only holders of its cookie can open: the viewer (its
    XAUTHORITY) and this process's x11grab (the cookie added to this user's authority file). Its
    display number is one no X server holds (checked, then claimed by Xvfb's own lock file)."""

    # long: start, wait for readiness, retry on a lost race for the number, undo on failure
    def __init__(self, width: int, height: int):
        if not shutil.which("Xvfb"):
            raise SourceError("Xvfb is not installed (Debian package xvfb)")
        try:
            displays_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix="x-", dir=displays_dir()))
            self.authfile = self.tmp / "Xauthority"
            self.authfile.touch(mode=0o600)
        except OSError as exc:
            raise SourceError(f"no place for the private display's cookie ({exc.strerror}: {displays_dir()})") from None
        self.cookie = secrets.token_hex(16)
        self.proc = None
        used = _displays_in_use()
        candidates = [n for n in range(FIRST_DISPLAY, FIRST_DISPLAY + 900) if n not in used]
        for number in candidates[:5]:  # another session may claim the same free number first
            read_fd, write_fd = os.pipe()
            self.proc = spawn(
                ["Xvfb", f":{number}", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24"]
                + ["-nolisten", "tcp", "-auth", str(self.authfile), "-noreset"],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.close(write_fd)
            try:
                if self._read_number(read_fd) == number:
                    break
            except SourceError:
                stop_process(self.proc)
            finally:
                os.close(read_fd)
        else:
            self.close()
            raise SourceError("the private X display (Xvfb) did not start")
        self.display = f":{number}"
        self.shared_auth = False
        try:
            self._xauth(["-f", str(self.authfile), "add", self.display, "MIT-MAGIC-COOKIE-1", self.cookie])
            self._xauth(["add", self.display, "MIT-MAGIC-COOKIE-1", self.cookie])
            self.shared_auth = True
        except SourceError:
            self.close()
            raise

    def _read_number(self, fd: int) -> int:
        deadline = time.monotonic() + 10
        data = b""
        os.set_blocking(fd, False)
        while not data.endswith(b"\n"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SourceError("the private X display (Xvfb) did not start")
            try:
                chunk = os.read(fd, 16)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:
                raise SourceError("the private X display (Xvfb) did not start")
            data += chunk
        return int(data)

    @staticmethod
    def _xauth(args: list[str]) -> None:
        if not shutil.which("xauth"):
            raise SourceError("xauth is not installed (Debian package xauth)")
        done = subprocess.run(["xauth", "-q", *args], capture_output=True, timeout=10)
        if done.returncode != 0:
            raise SourceError(f"xauth failed: {done.stderr.decode(errors='replace')[:200]}")

    def close(self) -> None:
        if getattr(self, "shared_auth", False):
            self.shared_auth = False
            try:
                self._xauth(["remove", self.display])
            except (SourceError, OSError, subprocess.TimeoutExpired):
                log.warning("could not remove the cookie of %s from the authority file", self.display)
        stop_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Spawner:
    """Every child of a remote-desktop source (Xvfb, the viewer) is forked by one thread that lives
    as long as the recorder, with PR_SET_PDEATHSIG: if the recorder dies, even by SIGKILL, they are
    killed with it (Linux ties that signal to the thread that forked, so not a request's worker
    thread, which ends when idle). Without it a crashed recorder would leave a viewer connected to
    someone's desktop. They run in their own session, so a Ctrl-C or a stop of the recorder's
    process group reaches the recorder first, which flushes and then stops them."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        try:
            self.prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # not Linux: children outlive a killed recorder
            self.prctl = None

    def _child(self) -> None:
        if self.prctl is not None:
            self.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def _run(self) -> None:
        while True:
            argv, kwargs, box, done = self.jobs.get()
            try:
                box.append(subprocess.Popen(argv, preexec_fn=self._child, start_new_session=True, **kwargs))
            except BaseException as exc:  # handed to the caller
                box.append(exc)
            done.set()

    def __call__(self, argv: list[str], **kwargs) -> subprocess.Popen:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="remote-spawner", daemon=True)
                self.thread.start()
        box: list = []
        done = threading.Event()
        self.jobs.put((argv, kwargs, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


spawn = _Spawner()


def stop_process(proc: subprocess.Popen | None, grace: float = 3) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ViewerProcess:
    """One run of the viewer: its stderr collected by a thread, its credentials written once."""

    def __init__(self, viewer: Viewer, argv: list[str], stdin: bytes, env: dict[str, str]):
        if not shutil.which(argv[0]):
            raise SourceError(f"{argv[0]} is not installed (see docs/RECORDER.md for the Debian packages)")
        self.viewer = viewer
        self.proc = spawn(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": os.defpath, "HOME": env.get("HOME", "/nonexistent"), **env},
        )
        self.err = bytearray()
        self.desktop: tuple[int, int] | None = None  # the desktop's size, once the viewer says it changed
        self.started = time.monotonic()
        threading.Thread(target=self._drain, name=f"{viewer.name}-stderr", daemon=True).start()
        try:
            if stdin:
                self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        except OSError:
            pass  # it died at once: its stderr says why

    def _drain(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            if len(self.err) < STDERR_KEEP:
                self.err += line
            if size := self.viewer.resized(line.decode(errors="replace")):
                self.desktop = size

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Gap:
    lost_at: float  # monotonic
    reason: str
    back_at: float | None = None


class RemoteSource(Source):
    """Frames of a remote desktop: x11grab of the private display the viewer draws into."""

    paced = False
    synthetic = False
    monotonic = True  # x11grab of the private display

    # long: one sequence of steps that each undo what came before when a later one fails
    def __init__(
        self,
        spec: dict,
        video: dict,
        secret: Secret | None,
        *,
        viewer: Viewer | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        on_gap: Callable[[Gap], None] | None = None,
    ):
        self.kind = spec["kind"]
        self.spec, self.video, self.secret = spec, video, secret
        self.viewer = viewer or viewer_for(self.kind)
        self.connect_timeout_s = connect_timeout_s
        self.on_gap = on_gap
        self.where = f"{spec['host']}:{spec['port']}"
        self.end_reason: str | None = None
        self._refit_error: str | None = None
        self._interrupt = threading.Event()
        self.client: ViewerProcess | None = None
        check_host(f"tcp://{_bracket(spec['host'])}:{spec['port']}")
        try:
            desktop = self.viewer.desktop_size(spec, secret)
        except SourceError as exc:
            raise SourceError(f"{self.kind} {self.where}: {exc}") from None
        # the private display: the recording's size, or larger with its shape when the desktop is
        # larger (the capture scales it down: the whole desktop is recorded, letterboxed)
        self.canvas = rfb.canvas(video["width"], video["height"], desktop)
        self.screen = PrivateDisplay(*self.canvas)
        try:
            self.client = self._connect()
            container = self._open_capture()
        except BaseException:
            if self.client is not None:
                self.client.stop()
            self.screen.close()
            raise
        super().__init__(container)

    def describe(self) -> str:
        return f"{self.kind} {self.where}"

    def _open_capture(self):
        options = {"framerate": str(self.video["fps"]), "video_size": "{}x{}".format(*self.canvas), "draw_mouse": "1"}
        try:
            return av.open(self.screen.display, format="x11grab", options=options)
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"the private display did not open for capture: {exc}") from None

    def _refit(self) -> bool:
        """The desktop changed size and the private display no longer fits it well: show it on one
        that does (a new display, viewer and capture: a pause of about half a second, a gap in the
        recording's timestamps). False if the viewer did not come back: then it is a lost connection."""
        canvas = rfb.canvas(self.video["width"], self.video["height"], self.client.desktop)
        log.info(
            "%s: the desktop is now %sx%s; showing it on a %sx%s display",
            self.describe(),
            *self.client.desktop,
            *canvas,
        )
        self.client.stop()
        super().close()
        self.screen.close()
        self.canvas = canvas
        self.screen = PrivateDisplay(*canvas)
        try:
            self.client = self._connect()
        except SourceError as exc:
            self._refit_error = str(exc).split(": ", 1)[-1]
        # captured once the viewer shows the desktop (no black frames), or for its reconnection
        self.container = self._open_capture()
        self.stream = self.container.streams.video[0]
        return self._refit_error is None

    def _misfit(self) -> bool:
        size = self.client.desktop
        return size is not None and rfb.canvas(self.video["width"], self.video["height"], size) != self.canvas

    def _connect(self) -> ViewerProcess:
        """A viewer showing the desktop, or SourceError with the server's reason."""
        argv, stdin, env = self.viewer.command(self.spec, self.secret, self.screen.display, *self.canvas)
        env = {**env, "DISPLAY": self.screen.display, "XAUTHORITY": str(self.screen.authfile)}
        client = ViewerProcess(self.viewer, argv, stdin, env)
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            err = client.stderr
            reason = self.viewer.failure(err, self.secret)
            if reason is None and not client.alive():
                reason = self._why_ended(client)
            if reason is None and self.viewer.connected(err):
                time.sleep(SETTLE_S)
                if client.alive():
                    return client
                reason = self._why_ended(client)
            if reason is None and time.monotonic() > deadline:
                reason = f"no answer within {self.connect_timeout_s:g} s"
            if reason is None and self._interrupt.is_set():
                reason = "stopped while connecting"
            if reason is not None:
                client.stop()
                raise SourceError(f"{self.kind} {self.where}: {reason}")
            time.sleep(0.05)

    def _why_ended(self, client: ViewerProcess) -> str:
        """Why a viewer that exited (or lost its connection) stopped, from its last words."""
        time.sleep(0.05)  # the last lines may still be on their way
        err = client.stderr
        return self.viewer.failure(err, self.secret) or _exit_reason(self.viewer, err)

    def _reconnect(self, gap: Gap) -> bool:
        """Try again with backoff until reconnect_seconds pass; True once the desktop is back."""
        give_up = gap.lost_at + self._patience
        wait = 0.5
        while not self._interrupt.is_set() and time.monotonic() < give_up:
            try:
                self.client = self._connect()
                return True
            except SourceError as exc:
                gap.reason = str(exc).split(": ", 1)[-1]
                log.warning("%s still unreachable: %s", self.describe(), gap.reason)
            self._interrupt.wait(min(wait, max(0.0, give_up - time.monotonic())))
            wait = min(wait * 2, 10)
        return False

    # long: frames, and what ends them (a resize, a lost connection and its reconnection, the end)
    def frames(self) -> Iterator[av.VideoFrame]:
        while not self._interrupt.is_set():
            refit = False
            for frame in self.container.decode(self.stream):
                if not self.client.alive() or self._interrupt.is_set():
                    break
                if self._misfit():
                    refit = True
                    break
                yield frame
            else:
                return
            if self._interrupt.is_set():
                return
            if refit and self._refit():
                continue
            reason = self._refit_error or self._why_ended(self.client)
            self._refit_error = None
            self.client.stop()
            gap = Gap(time.monotonic(), reason)
            log.warning("%s lost (%s): reconnecting for up to %ss", self.describe(), reason, self._patience)
            self._report(gap)
            if not self._reconnect(gap):
                if not self._interrupt.is_set():
                    self.end_reason = (
                        f"the {self.kind} connection to {self.where} was lost ({gap.reason}) "
                        f"and did not come back within {self._patience} s"
                    )
                return
            gap.back_at = time.monotonic()
            log.warning("%s back after %.1f s", self.describe(), gap.back_at - gap.lost_at)
            self._report(gap)

    @property
    def _patience(self) -> int:
        return self.spec.get("reconnect_seconds", 60)

    def _report(self, gap: Gap) -> None:
        if self.on_gap is not None:
            try:
                self.on_gap(gap)
            except Exception:  # telling about a gap must never end the recording
                log.exception("could not report a gap of %s", self.describe())

    def interrupt(self) -> None:
        self._interrupt.set()

    def close(self) -> None:
        self._interrupt.set()
        super().close()
        if self.client is not None:
            self.client.stop()
        self.screen.close()


def _exit_reason(viewer: Viewer, stderr: str) -> str:
    said = getattr(viewer, "exit_reason", None)
    return (said(stderr) if said else None) or f"the {viewer.name} viewer exited"


def _bracket(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host
