"""Real remote desktops for the tests (helpers only, no tests here): private X displays (Xvfb) and
RDP servers on free ports, each cleaned up when its `with` block ends.

RDP server: FreeRDP's shadow server (`freerdp-shadow-cli`, Debian freerdp2-shadow-x11) sharing an
Xvfb painted a known colour, with NLA against a SAM file (`winpr-hash`, winpr-utils). It takes its
port, its SAM file and (through HOME) its own TLS certificate per run, so tests can run side by side.
xrdp (`xrdp_server`): xrdp 0.9 in front of a VNC desktop (its `libvnc` module, the session type
"vnc-any" that xrdp ships), started with an xrdp.ini of its own (free port, its own certificate,
TLS security, auto-login to that desktop with the RDP client's password). That is a real xrdp
speaking RDP to the viewer, without xrdp-sesman: the session manager listens on the one port that
/etc/xrdp/sesman.ini names and logs users in through PAM as real system users, which a test suite
should not create. xrdp speaks no NLA (0.9: TLS or RDP security only) and shows a wrong password as
its login dialog inside the session rather than as an error the client could report.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from services.recorder.remote import stop_process
from tests.conftest import free_port

PACKAGES = {
    "Xvfb": "xvfb",
    "xlogo": "x11-apps",
    "xfreerdp": "freerdp2-x11",
    "freerdp-shadow-cli": "freerdp2-shadow-x11",
    "winpr-hash": "winpr-utils",
    "xrdp": "xrdp",
}


def need(*binaries: str) -> None:
    """Skip (fail under CI, where scripts/test installs them) when a program is missing."""
    missing = [b for b in binaries if not shutil.which(b)]
    if missing:
        packages = " ".join(sorted({PACKAGES.get(b, b) for b in missing}))
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing: scripts/test installs {packages}")
        pytest.skip(f"{', '.join(missing)} not installed (Debian: {packages})")


stop = stop_process  # terminate, then kill after a grace period


@contextmanager
def x_display(width: int = 1280, height: int = 720) -> Iterator[str]:
    """An Xvfb of this size on a display number it picks itself (-displayfd): yields ':N'."""
    need("Xvfb")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    try:
        number = b""
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while not number.endswith(b"\n"):
                chunk = pipe.read(16)
                if not chunk:
                    raise RuntimeError("Xvfb did not start")
                number += chunk
        yield f":{int(number)}"
    finally:
        stop(proc)


class RdpServer(NamedTuple):
    host: str
    port: int
    display: str  # the shared (shadowed) X display: start clients there to change the screen
    proc: subprocess.Popen
    home: Path  # its HOME: its certificate and log (server.log)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the RDP server did not listen on {port}: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextmanager
def rdp_shadow_server(
    user: str = "lucid",
    password: str = "Nla-pass-9",
    *,
    nla: bool = True,
    color: str = "#c03020",
    width: int = 1280,
    height: int = 720,
    right: str | None = None,
) -> Iterator[RdpServer]:
    """FreeRDP's shadow server on 127.0.0.1 and a free port, sharing an Xvfb covered by one window
    of `color` (xlogo drawn in its background colour), or its left half and `right` the other.
    nla=True: NLA only, `user`/`password` from a SAM file; nla=False: TLS only and no authentication."""
    need("Xvfb", "xlogo", "freerdp-shadow-cli", "winpr-hash")
    home = Path(tempfile.mkdtemp(prefix="lucid-rdp-server-"))
    procs: list[subprocess.Popen] = []
    with x_display(width, height) as display:
        try:
            env = {"PATH": os.defpath, "HOME": str(home), "DISPLAY": display}
            halves = [(color, 0, width)] if right is None else [(color, 0, width // 2), (right, width // 2, width // 2)]
            for fill, x, w in halves:
                procs.append(
                    subprocess.Popen(
                        ["xlogo", "-bg", fill, "-fg", fill, "-bw", "0", "-geometry", f"{w}x{height}+{x}+0"],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            port = free_port()
            argv = ["freerdp-shadow-cli", f"/port:{port}", "/bind-address:127.0.0.1"]
            if nla:
                sam = subprocess.run(
                    ["winpr-hash", "-u", user, "-p", password, "-f", "sam"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=10,
                ).stdout
                (home / "sam").write_text(sam)
                argv += ["+auth", "/sec:nla", f"/sam-file:{home / 'sam'}"]
            else:
                argv += ["/sec:tls"]
            log = home / "server.log"
            with log.open("wb") as out:
                server = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
            procs.append(server)
            _wait_listening(port, server, log)
            yield RdpServer("127.0.0.1", port, display, server, home)
        finally:  # the server and its window before their display
            for proc in reversed(procs):
                stop(proc)
            shutil.rmtree(home, ignore_errors=True)


@contextmanager
def xrdp_server(vnc_port: int) -> Iterator[RdpServer]:
    """xrdp on 127.0.0.1 and a free port, showing the VNC desktop on `vnc_port` to an RDP client
    that logs in with that desktop's VNC password (any user name)."""
    need("xrdp")
    home = Path(tempfile.mkdtemp(prefix="lucid-xrdp-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lucid-test-xrdp")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (home / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (home / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    port = free_port()
    channels = "\n".join(f"{c}=false" for c in ("rdpdr", "rdpsnd", "drdynvc", "cliprdr", "rail", "xrdpvr"))
    (home / "xrdp.ini").write_text(
        f"""[Globals]
ini_version=1
fork=false
port=tcp://127.0.0.1:{port}
security_layer=tls
crypt_level=high
certificate={home / "cert.pem"}
key_file={home / "key.pem"}
ssl_protocols=TLSv1.2, TLSv1.3
autorun=desktop
allow_channels=true
max_bpp=32

[Logging]
LogFile={home / "xrdp.log"}
LogLevel=INFO
EnableSyslog=false
EnableConsole=false

[Channels]
{channels}

[desktop]
name=desktop
lib=libvnc.so
ip=127.0.0.1
port={vnc_port}
username=na
password=ask
"""
    )
    log = home / "xrdp.log"
    server = subprocess.Popen(
        ["xrdp", "--nodaemon", "--config", str(home / "xrdp.ini")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_listening(port, server, log)
        yield RdpServer("127.0.0.1", port, "", server, home)
    finally:
        stop(server)
        shutil.rmtree(home, ignore_errors=True)
