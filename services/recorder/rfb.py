"""How large a VNC desktop is, asked before the viewer starts (issue 18): the viewer is full screen on
a private display, so a desktop larger than that display would be cut to its top-left part. Knowing
the size, the display is made large enough, with the recording's aspect ratio, and the capture scales
it down: the whole desktop is recorded, letterboxed when its shape differs.

A minimal RFB 3.8 handshake up to ServerInit (RFC 6143 §7.1-7.3): security None or VNC
authentication (DES of the server's challenge), ClientInit with the shared flag (nobody already
connected is pushed off), then the connection is closed. Anything else the server offers (VeNCrypt,
TLS) answers None: the viewer, which speaks those, then records at the recording's size as before.
A refusal the server states (wrong password, too many failures) is raised, so a wrong password is
tried once, not twice (servers block an address after a few failures)."""

from __future__ import annotations

import socket
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

NONE, VNC_AUTH = 1, 2
MAX_SIDE = 16384  # RFB sizes are 16-bit; a larger one than this is not a desktop we display


class RfbRefused(Exception):
    """The server refused us and said why (its words, never the password)."""


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("the server closed the connection")
        data += part
    return data


def _reason(sock: socket.socket) -> str:
    (n,) = struct.unpack(">I", _exactly(sock, 4))
    return _exactly(sock, min(n, 1024)).decode("utf-8", "replace").strip()


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: the challenge DES-encrypted with the password's first 8 bytes, each byte's
    bits reversed (the RFB convention)."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1", "replace")[:8].ljust(8, b"\0"))
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # K1 = K2 = K3: single DES
    return enc.update(challenge) + enc.finalize()


# long: one handshake, step by step as RFC 6143 orders it
def desktop_size(host: str, port: int, password: str | None, timeout: float = 5) -> tuple[int, int] | None:
    """(width, height) of the desktop, or None when it cannot be learned this way (a security type
    we do not speak, an unexpected answer, a network error: the viewer then says what is wrong).
    Raises RfbRefused when the server refuses our credentials or this address."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if not _exactly(sock, 12).startswith(b"RFB 003."):
                return None
            sock.sendall(b"RFB 003.008\n")
            (count,) = _exactly(sock, 1)
            if count == 0:
                raise RfbRefused(_reason(sock))
            offered = set(_exactly(sock, count))
            if password is not None and VNC_AUTH in offered:
                sock.sendall(bytes([VNC_AUTH]))
                sock.sendall(vnc_response(password, _exactly(sock, 16)))
            elif NONE in offered:
                sock.sendall(bytes([NONE]))
            else:
                return None
            (result,) = struct.unpack(">I", _exactly(sock, 4))
            if result != 0:
                raise RfbRefused(_reason(sock) or "authentication failed")
            sock.sendall(b"\x01")  # ClientInit: shared
            width, height = struct.unpack(">HH", _exactly(sock, 4))
    except (OSError, ValueError, struct.error):
        return None
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        return None
    return width, height


def canvas(width: int, height: int, desktop: tuple[int, int] | None) -> tuple[int, int]:
    """The private display's size: the recording's, grown by one factor (its aspect ratio kept) until
    the desktop fits, so the viewer shows all of it centred and the capture scales it back down."""
    if desktop is None:
        return width, height
    k = max(1.0, desktop[0] / width, desktop[1] / height)
    return _even(round(width * k, 6)), _even(round(height * k, 6))


def _even(v: float) -> int:
    """Rounded up to an even number (x11grab and yuv420p want even sides)."""
    return int(-(-v // 2) * 2)
