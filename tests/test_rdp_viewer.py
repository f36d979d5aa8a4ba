"""The rdp source's viewer (services/recorder/rdp.py) against a real RDP server: FreeRDP's shadow
server with NLA (tests/remote_desktops.py). The viewer is started the way services/recorder/remote.py
starts it (its argv, its stdin written once, a bare environment plus its own, DISPLAY a private
Xvfb), and what it draws there is read back with PyAV's x11grab."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import av
import numpy as np
import pytest

from services.recorder.rdp import RdpViewer
from services.recorder.sources import SourceError
from tests.remote_desktops import need, rdp_shadow_server, stop, x_display

USER, PASSWORD = "lucid", "Nla-pass-9"
COLOR = (0xC0, 0x30, 0x20)
W, H = 640, 360
PATIENCE_S = 30  # a generous upper bound on the machine's worst day; no test asserts a duration


@dataclass(frozen=True)
class Cred:
    username: str | None = None
    domain: str | None = None
    password: str | None = field(default=None, repr=False)


class Viewer:
    """One xfreerdp run as remote.py runs it: stdin written and closed, stderr collected."""

    def __init__(self, rdp: RdpViewer, spec: dict, secret: Cred | None, display: str):
        self.rdp = rdp
        self.argv, stdin, self.env = rdp.command(spec, secret, display, W, H)
        need(self.argv[0])
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": os.defpath, "HOME": "/nonexistent", **self.env, "DISPLAY": display},
            start_new_session=True,
        )
        self.err = bytearray()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        self.proc.stdin.write(stdin)
        self.proc.stdin.close()

    def _drain(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.err += line

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def settle(self, secret: Cred | None = None) -> tuple[bool, str | None]:
        """Wait until it says it is connected, failed, or exited: (connected, failure reason)."""
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            reason = self.rdp.failure(self.stderr, secret)
            if reason is not None or self.rdp.connected(self.stderr):
                return self.rdp.connected(self.stderr), reason
            if self.proc.poll() is not None:
                self.reader.join(5)
                return self.rdp.connected(self.stderr), self.rdp.failure(self.stderr, secret)
            time.sleep(0.05)
        raise AssertionError(f"xfreerdp neither connected nor failed:\n{self.stderr[-3000:]}")

    def exited(self) -> str:
        """Its whole stderr once it has exited by itself."""
        self.proc.wait(PATIENCE_S)
        self.reader.join(5)
        return self.stderr

    def stop(self) -> None:
        stop(self.proc)
        self.reader.join(5)


def spec(server, port: int | None = None) -> dict:
    return {"kind": "rdp", "host": server.host, "port": port or server.port, "credential": "desk"}


def grab(display: str) -> np.ndarray:
    with av.open(display, format="x11grab", options={"video_size": f"{W}x{H}"}) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def server():
    need("xfreerdp")
    with rdp_shadow_server(USER, PASSWORD, nla=True, color="#" + bytes(COLOR).hex(), width=W, height=H) as s:
        yield s


@pytest.fixture()
def screen():
    with x_display(W, H) as display:
        yield display


@pytest.fixture()
def rdp(tmp_path):
    return RdpViewer(config_dir=tmp_path / "freerdp-home")


def test_connects_over_nla_and_draws_the_server_screen(server, screen, rdp):
    viewer = Viewer(rdp, spec(server), Cred(USER, None, PASSWORD), screen)
    try:
        connected, reason = viewer.settle()
        assert (connected, reason) == (True, None), viewer.stderr
        deadline = time.monotonic() + PATIENCE_S
        while True:  # the first frame follows the connection by a few milliseconds
            mean = grab(screen).reshape(-1, 3).mean(axis=0)
            if np.abs(mean - COLOR).max() < 12 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert np.abs(mean - COLOR).max() < 12, f"the viewer's screen is {mean}, the server's {COLOR}"
        assert viewer.proc.poll() is None
        # trust on first use: the server's certificate is now kept in the viewer's own directory
        known = (rdp.config_dir / "freerdp" / "known_hosts2").read_text()
        assert f"{server.host} {server.port} " in known
        assert PASSWORD not in viewer.stderr
    finally:
        viewer.stop()


def test_wrong_password_says_authentication_failed_without_the_password(server, screen, rdp):
    wrong = "Wrong-pass-0451"
    viewer = Viewer(rdp, spec(server), Cred(USER, None, wrong), screen)
    try:
        connected, reason = viewer.settle()
        stderr = viewer.exited()
        assert not connected
        assert reason == "authentication failed", stderr
        assert rdp.failure(stderr) == "authentication failed"
        assert wrong not in stderr and wrong not in reason and USER not in reason
    finally:
        viewer.stop()


def test_closed_port_is_a_refusal(server, screen, rdp):
    from tests.conftest import free_port

    viewer = Viewer(rdp, spec(server, port=free_port()), Cred(USER, None, PASSWORD), screen)
    try:
        connected, reason = viewer.settle()
        assert not connected
        assert reason == "connection refused or host unreachable", viewer.stderr
    finally:
        viewer.stop()


def test_no_credential_against_an_nla_server_is_refused_with_a_reason(server, screen, rdp):
    viewer = Viewer(rdp, spec(server), None, screen)
    try:
        connected, reason = viewer.settle()
        assert not connected
        assert reason == "server requires NLA and no credential was given", viewer.stderr
    finally:
        viewer.stop()


def test_a_changed_certificate_is_refused(server, screen, rdp):
    """Trust on first use: a server showing another certificate than the first time is refused."""
    known = rdp.config_dir / "freerdp" / "known_hosts2"
    known.parent.mkdir(parents=True)
    fingerprint = ":".join(["ab"] * 32)
    known.write_text(f"{server.host} {server.port} {fingerprint} Q049dGVzdA== Q049dGVzdA==\n")
    viewer = Viewer(rdp, spec(server), Cred(USER, None, PASSWORD), screen)
    try:
        connected, reason = viewer.settle()
        assert not connected
        assert reason == "server certificate changed since the first connection (refused)", viewer.stderr
        assert PASSWORD not in viewer.stderr
    finally:
        viewer.stop()


def test_a_killed_server_ends_the_viewer_with_connection_lost(screen, rdp):
    need("xfreerdp")
    with rdp_shadow_server(USER, PASSWORD, width=W, height=H) as doomed:
        viewer = Viewer(rdp, spec(doomed), Cred(USER, None, PASSWORD), screen)
        try:
            assert viewer.settle() == (True, None), viewer.stderr
            killed = time.monotonic()
            os.kill(doomed.proc.pid, signal.SIGKILL)
            stderr = viewer.exited()
            print(f"xfreerdp exited {time.monotonic() - killed:.2f} s after its server was killed")
            assert rdp.failure(stderr) == "connection lost", stderr
        finally:
            viewer.stop()


def test_the_command_keeps_the_password_off_argv_and_environment(tmp_path):
    rdp = RdpViewer(config_dir=tmp_path)
    secret = Cred("alice", "CORP", "pa ss:/word")
    argv, stdin, env = rdp.command({"host": "fe80::1", "port": 3390}, secret, ":5", 1920, 1080)
    assert stdin == b"pa ss:/word\n"
    assert not any("pa ss" in a for a in argv) and not any("pa ss" in v for v in env.values())
    assert argv[0] == "xfreerdp" and "/v:[fe80::1]:3390" in argv and "/size:1920x1080" in argv
    assert {"/u:alice", "/d:CORP", "/from-stdin:force", "/cert:tofu", "-sec-rdp", "-clipboard"} <= set(argv)
    assert not any(a.startswith(("/p:", "/drive", "+drives", "+home-drive", "/microphone", "+clipboard")) for a in argv)
    with pytest.raises(SourceError):
        rdp.command({"host": "h", "port": 1}, Cred("alice", None, "two\nlines"), ":5", 640, 360)
    with pytest.raises(SourceError):  # FreeRDP would read the password as the user name
        rdp.command({"host": "h", "port": 1}, Cred(None, None, "secret"), ":5", 640, 360)
    argv, stdin, _ = rdp.command({"host": "h", "port": 1}, None, ":5", 640, 360)
    assert stdin == b"" and not any(a.startswith("/u:") for a in argv)


def test_failure_reasons_from_freerdp_lines():
    """Lines xfreerdp 2.11 printed here (measured), and codes a Windows server sends."""
    rdp = RdpViewer(config_dir="/nonexistent")
    line = "[01:06:26:828] [3421:3422] [ERROR][com.freerdp.core] - "
    assert rdp.failure(line + "nla_recv_pdu:freerdp_set_last_error_ex ERRCONNECT_LOGON_FAILURE [0x00020014]") == (
        "authentication failed"
    )
    assert rdp.failure(line + "freerdp_tcp_is_hostname_resolvable: ERRCONNECT_DNS_NAME_NOT_FOUND") == (
        "host name not found"
    )
    assert rdp.failure(line + "freerdp_tcp_connect:freerdp_set_last_error_ex ERRCONNECT_CONNECT_FAILED") == (
        "host unreachable"
    )
    nego = "[WARN][com.freerdp.core.nego] - Error: HYBRID_REQUIRED_BY_SERVER\n" + line
    assert rdp.failure(nego + "rdp_client_connect: ERRCONNECT_SECURITY_NEGO_CONNECT_FAILED") == "server requires NLA"
    assert rdp.failure("[INFO][com.freerdp.core] - ERRINFO_LOGOFF_BY_USER (0x0000000C)") == (
        "session taken over by another login"
    )
    assert rdp.failure(line + "Local framebuffer format  PIXEL_FORMAT_BGRX32") is None
    assert rdp.connected("[INFO][com.freerdp.gdi] - Local framebuffer format  PIXEL_FORMAT_BGRX32")
    assert not rdp.connected("Password: ")


def test_a_tls_only_server_connects_too(screen, rdp):
    """Servers without NLA (xrdp speaks TLS or RDP security only) still connect: the certificate is
    kept on first use, and `-sec-rdp` only rules out RDP's own unauthenticated security."""
    need("xfreerdp")
    with rdp_shadow_server(nla=False, color="#2040c0", width=W, height=H) as tls:
        viewer = Viewer(rdp, spec(tls), Cred(USER, None, PASSWORD), screen)
        try:
            assert viewer.settle() == (True, None), viewer.stderr
            assert "--> CONNECTION_STATE_NLA" not in viewer.stderr
            assert f"{tls.host} {tls.port} " in (rdp.config_dir / "freerdp" / "known_hosts2").read_text()
        finally:
            viewer.stop()
