"""The viewer of the `rdp` source: FreeRDP's `xfreerdp` (Debian freerdp2-x11, 2.11) drawing the
remote desktop into the session's private X display, which services/recorder/remote.py starts,
watches and records with the x11 capture.

What it is run with, and why (each measured against freerdp-shadow-cli and xrdp here):
- the password on stdin (`/from-stdin:force`), never on argv (ps shows argv) or in the environment.
  The user name and domain are on argv (`/u:`, `/d:`): FreeRDP 2 reads a prompted user name with
  buffered stdio, which swallows the password line too (it then reads an empty password with a raw
  read and the login fails), so only the password can come through stdin: one line, no line
  breaks (255 characters were verified; longer ones failed against FreeRDP's own server).
- `/cert:tofu` with its known_hosts2 under Lucid's data directory: the first certificate a server
  shows is kept, a different one later is refused ("server certificate changed"). `/cert:ignore`
  would hand the password to anyone in the middle: over TLS security (xrdp) the password itself
  travels inside the TLS stream. `-sec-rdp` for the same reason: RDP's own (pre-TLS) security
  authenticates nothing, and offering it would let a man in the middle downgrade past the check.
- nothing of the recorder's host reaches the server: no clipboard (`-clipboard`), no audio
  (`/audio-mode:2`; FreeRDP still loads rdpsnd with its fake backend), no drives, printers, smart
  cards or microphone (off unless asked for), a fixed client name; and no input: no keyboard or
  pointer grab, no pointer motion sent.
- `-auto-reconnect`: remote.py reconnects itself and records the gap as a gap.
- its log (WLog) written to stderr as it happens: xfreerdp prints INFO lines on stdout, buffered
  and lost when it is killed, so WLog's file appender is pointed at /dev/stderr; the connection
  states (`com.freerdp.core.connection` at DEBUG) say in which phase a connection failed. Neither
  level logs credentials; NLA's token dumps (`com.freerdp.core.nla` at DEBUG) stay off.
"""

from __future__ import annotations

import re
from pathlib import Path

from lucid_assets.settings import get_settings

from .sources import SourceError

# connected: the connection sequence finished and the GDI is up (the first frame follows in ~10 ms)
ACTIVE = ("--> CONNECTION_STATE_ACTIVE", "Local framebuffer format")
STATE = re.compile(r"--> CONNECTION_STATE_([A-Z_]+)")
CODE = re.compile(r"\b(ERRCONNECT_[A-Z_]+|ERRINFO_[A-Z0-9_]+)\b")
LOST = "Network disconnect!"  # an established connection dropped (server gone, network cut)

AUTH_FAILED = "authentication failed"
REASONS = {
    "ERRCONNECT_LOGON_FAILURE": AUTH_FAILED,
    "ERRCONNECT_WRONG_PASSWORD": AUTH_FAILED,
    "ERRCONNECT_AUTHENTICATION_FAILED": AUTH_FAILED,
    "ERRCONNECT_ACCOUNT_LOCKED_OUT": "account locked out",
    "ERRCONNECT_ACCOUNT_DISABLED": "account disabled",
    "ERRCONNECT_ACCOUNT_EXPIRED": "account expired",
    "ERRCONNECT_PASSWORD_EXPIRED": "password expired",
    "ERRCONNECT_PASSWORD_CERTAINLY_EXPIRED": "password expired",
    "ERRCONNECT_PASSWORD_MUST_CHANGE": "password must be changed",
    "ERRCONNECT_ACCOUNT_RESTRICTION": "account may not log on remotely",
    "ERRCONNECT_LOGON_TYPE_NOT_GRANTED": "account may not log on remotely",
    "ERRCONNECT_ACCESS_DENIED": "access denied",
    "ERRCONNECT_INSUFFICIENT_PRIVILEGES": "account may not log on remotely",
    "ERRCONNECT_NO_OR_MISSING_CREDENTIALS": "server requires NLA and no credential was given",
    "ERRCONNECT_DNS_NAME_NOT_FOUND": "host name not found",
    "ERRCONNECT_DNS_ERROR": "host name not found",
    "ERRCONNECT_CONNECT_FAILED": "host unreachable",  # the TCP connect timed out (15 s)
    "ERRCONNECT_TLS_CONNECT_FAILED": "TLS handshake failed",
    "ERRCONNECT_KDC_UNREACHABLE": "Kerberos KDC unreachable",
    "ERRINFO_LOGOFF_BY_USER": "session taken over by another login",
    "ERRINFO_DISCONNECTED_BY_OTHER_CONNECTION": "session taken over by another connection",
    "ERRINFO_RPC_INITIATED_DISCONNECT": "disconnected by an administrator",
    "ERRINFO_RPC_INITIATED_DISCONNECT_BY_USER": "disconnected by the user",
    "ERRINFO_RPC_INITIATED_LOGOFF": "logged off by an administrator",
    "ERRINFO_IDLE_TIMEOUT": "server idle timeout",
    "ERRINFO_LOGON_TIMEOUT": "server logon timeout",
    "ERRINFO_SERVER_DENIED_CONNECTION": "server denied the connection",
    "ERRINFO_SERVER_INSUFFICIENT_PRIVILEGES": "account may not log on remotely",
    "ERRINFO_SERVER_FRESH_CREDENTIALS_REQUIRED": "server requires fresh credentials",
}
# why security negotiation failed (WARN "Error: <flag>" before ERRCONNECT_SECURITY_NEGO_CONNECT_FAILED)
NEGOTIATION = {
    "HYBRID_REQUIRED_BY_SERVER": "server requires NLA",
    "SSL_REQUIRED_BY_SERVER": "server requires TLS",
    "SSL_NOT_ALLOWED_BY_SERVER": "server offers only RDP standard security (refused: it authenticates nothing)",
    "SSL_CERT_NOT_ON_SERVER": "server has no TLS certificate",
    "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER": "server requires TLS with client certificates",
}
CHANGED_CERTIFICATE = "Host key verification failed"
NOT_CODES = {"ERRINFO_SUCCESS", "ERRINFO_NONE", "ERRCONNECT_SUCCESS", "ERRCONNECT_NONE"}


class RdpViewer:
    """xfreerdp into the private display, at the recording's size, watching only."""

    name = "xfreerdp"
    binary = "xfreerdp"

    def __init__(self, config_dir: str | Path | None = None):
        # FreeRDP's configuration home: <config_dir>/freerdp/known_hosts2 keeps each server's
        # certificate (trust on first use). Lucid's data directory unless told otherwise.
        self.config_dir = Path(config_dir) if config_dir is not None else get_settings().data_dir / "rdp"

    def command(self, spec, secret, display, width, height) -> tuple[list[str], bytes, dict[str, str]]:
        host, port = str(spec["host"]).strip("[]"), int(spec.get("port") or 3389)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        argv = [
            self.binary,
            f"/v:{target}",
            "/cert:tofu",
            "-sec-rdp",
            f"/size:{int(width)}x{int(height)}",
            f"/smart-sizing:{int(width)}x{int(height)}",
            "-decorations",
            "-grab-keyboard",
            "-grab-mouse",
            "-mouse-motion",
            "-clipboard",
            "/audio-mode:2",
            "-auto-reconnect",
            "/client-hostname:lucid-recorder",
        ]
        stdin = b""
        if secret is not None and secret.username:
            argv.append(f"/u:{_word(secret.username, 'user name')}")
            if secret.domain:
                argv.append(f"/d:{_word(secret.domain, 'domain')}")
        # :force asks before connecting, from stdin and never a terminal; with no credential its
        # prompts read end-of-file and an NLA server is refused with a reason (not a hang)
        argv.append("/from-stdin:force")
        if secret is not None and secret.password is not None:
            if not secret.username:  # it would answer the user-name prompt: the password sent as a name
                raise SourceError("the credential has a password but no user name")
            if any(c in secret.password for c in "\r\n\0"):
                raise SourceError("the credential's password has a line break or NUL: FreeRDP cannot read it")
            stdin = secret.password.encode() + b"\n"
        try:
            self.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"the RDP trust store {self.config_dir} is not writable ({exc.strerror})") from None
        env = {
            "XDG_CONFIG_HOME": str(self.config_dir.resolve()),
            "WLOG_APPENDER": "FILE",
            "WLOG_FILEAPPENDER_OUTPUT_FILE_PATH": "/dev",
            "WLOG_FILEAPPENDER_OUTPUT_FILE_NAME": "stderr",
            "WLOG_LEVEL": "INFO",
            "WLOG_FILTER": "com.freerdp.core.connection:DEBUG",
        }
        return argv, stdin, env

    def desktop_size(self, spec, secret) -> None:
        return None  # FreeRDP scales the server's desktop into its window itself (/smart-sizing)

    def resized(self, line: str) -> None:
        return None

    def failure(self, stderr: str, secret=None) -> str | None:
        """The reason this stderr says the connection failed or dropped, from a fixed list (the
        only variable part is a FreeRDP code name): never a user name or password."""
        codes = [c for c in CODE.findall(stderr) if c not in NOT_CODES]
        for code in codes:
            if code.startswith("ERRINFO_"):
                return REASONS.get(code, f"disconnected by the server ({code})")
        if CHANGED_CERTIFICATE in stderr:
            return "server certificate changed since the first connection (refused)"
        if "ERRCONNECT_SECURITY_NEGO_CONNECT_FAILED" in codes:
            said = [reason for flag, reason in NEGOTIATION.items() if f"Error: {flag}" in stderr]
            return said[0] if said else "security negotiation failed"
        for code in codes:
            if code in REASONS:
                if code == "ERRCONNECT_NO_OR_MISSING_CREDENTIALS" and secret is not None:
                    return "server requires NLA and the credential has no user name or password"
                return REASONS[code]
        if LOST in stderr:
            return "connection lost"
        if "ERRCONNECT_CONNECT_TRANSPORT_FAILED" in codes:
            return _transport_failure(stderr)
        return f"connection failed ({codes[0]})" if codes else None

    def connected(self, stderr: str) -> bool:
        """True once the session came up (it stays True after a later drop: failure() says why).
        xrdp (TLS, no NLA) takes a wrong password into the session and shows its own "login failed"
        dialog there: the viewer is connected and nothing on its side says otherwise."""
        return any(marker in stderr for marker in ACTIVE)

    def exit_reason(self, stderr: str) -> str | None:
        codes = [c for c in CODE.findall(stderr) if c not in NOT_CODES]
        return f"the xfreerdp viewer stopped ({codes[-1]})" if codes else None


def _transport_failure(stderr: str) -> str:
    """The TCP stream failed: what the connection was doing says what that means."""
    before = stderr[: stderr.find("ERRCONNECT_CONNECT_TRANSPORT_FAILED")]
    states = STATE.findall(before)
    state = states[-1] if states else None
    if state == "NLA":
        # the server hung up in the middle of NLA: that is how FreeRDP's server (and others that
        # send no error code) refuse a wrong user name or password
        return AUTH_FAILED
    if state in (None, "NEGO") and "transport_write" in before:
        # FreeRDP 2 loses the connect errno: refused and unroutable both end here at once
        return "connection refused or host unreachable"
    return "connection closed by the server"


def _word(value: str, what: str) -> str:
    if not value or any(not c.isprintable() for c in value):
        raise SourceError(f"the credential's {what} has unprintable characters")
    return value
