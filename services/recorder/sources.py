"""Capture sources, all through PyAV/FFmpeg: the synthetic test pattern, an X display (x11grab)
and any URL FFmpeg can open. Each yields decoded frames; the capture loop converts, times and
encodes them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import av

from lucid_assets.settings import get_settings

# FFmpeg protocols a `url` source may use (no concat:, subfile:, data: tricks).
PROTOCOLS = "file,http,https,tcp,tls,crypto,rtp,rtsp,rtsps,udp,rtmp,rtmps,srt,hls,httpproxy"
URL_SCHEMES = {"file", "http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp"}


class SourceError(Exception):
    """The source did not open or could not be encoded."""


class Source:
    kind = "source"
    paced = False  # frames are available at once (a pattern, a file): the capture waits for each one's moment
    synthetic = False  # behind real time, skip slots rather than drift (nothing real is lost)
    # place frames by when they arrive, not by their timestamps: x11grab stamps the wall clock,
    # which NTP may step (seconds of false gap forward, frames thrown away backward)
    monotonic = False
    end_reason: str | None = None  # why the source ended, when it knows better than "it ended"

    def __init__(self, container):
        self.container = container
        self.stream = container.streams.video[0]

    def frames(self) -> Iterator[av.VideoFrame]:
        return self.container.decode(self.stream)

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # closing a source that already failed must not mask why it failed
            pass

    def describe(self) -> str:
        return self.kind

    def interrupt(self) -> None:
        """Stop waiting (a reconnect, a slow read): the capture is stopping."""


class PatternSource(Source):
    kind = "testsrc"
    paced = True
    synthetic = True


class X11Source(Source):
    kind = "x11"
    monotonic = True


class UrlSource(Source):
    kind = "url"

    def __init__(self, container, realtime: bool):
        super().__init__(container)
        self.paced = realtime and container.format.name not in ("rtsp", "rtp", "sdp", "hls")


def _open(target: str, what: str, **kwargs):
    try:
        return av.open(target, **kwargs)
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"{what} did not open: {exc}") from None


# one answer for every network URL that does not open: refused, timed out, not found or not video
# must read the same, so the source cannot be used to map which internal ports are open
UNREADABLE = "did not open as a video stream (unreachable, refused, or not video)"


def _allowed(host: str, ips: Iterable[ipaddress._BaseAddress], allow: str) -> bool:
    """True if LUCID_URL_ALLOW_HOSTS names the host or a network holding every address."""
    names, nets = set(), []
    for item in (x.strip() for x in allow.split(",")):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            if item:
                names.add(item.lower().rstrip("."))
    if host.lower().rstrip(".") in names:
        return True
    ips = list(ips)
    return bool(ips) and all(any(ip in net for net in nets if ip.version == net.version) for ip in ips)


def _internal(ip: ipaddress._BaseAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast  # loopback, link-local, private, shared, reserved, ...


def check_host(url: str, allow: str | None = None) -> None:
    """SourceError unless the URL's host resolves only to public addresses, or the operator allows
    it (LUCID_URL_ALLOW_HOSTS). Checked before FFmpeg connects anywhere."""
    allow = get_settings().url_allow_hosts if allow is None else allow
    parsed = urlparse(url)
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        raise SourceError("url has an invalid port") from None
    if not host:
        raise SourceError("url has no host")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        ips = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    except (OSError, UnicodeError, ValueError):
        raise SourceError(f"url {UNREADABLE}") from None
    if any(_internal(ip) for ip in ips) and not _allowed(host, ips, allow):
        raise SourceError(
            f"url host {host!r} is a loopback, link-local or private address; "
            "an operator may allow it in LUCID_URL_ALLOW_HOSTS"
        )


def check_url(url: str, file_roots: list[Path], allow_hosts: str | None = None) -> str:
    """The URL FFmpeg may open, or SourceError saying why not."""
    parsed = urlparse(url)
    scheme = parsed.scheme or "file"
    if scheme not in URL_SCHEMES:
        raise SourceError(f"url scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(URL_SCHEMES))})")
    if scheme == "file":
        path = Path(parsed.path if parsed.scheme else url).resolve()
        if not any(path.is_relative_to(root.resolve()) for root in file_roots):
            raise SourceError(f"file {path} is outside the allowed LUCID_URL_FILE_ROOTS")
        if not path.is_file():
            raise SourceError(f"file {path} does not exist")
        return str(path)
    check_host(url, allow_hosts)
    return url


def open_source(
    source: dict,
    video: dict,
    *,
    file_roots: list[Path] | None = None,
    open_timeout_s: int = 10,
    credential: Callable[[str], Any] | None = None,
    on_gap: Callable[[Any], None] | None = None,
) -> Source:
    """The source opened, or SourceError saying why (a remote desktop: the server's reason).
    `credential(name)` opens a stored credential (a remote.Secret); `on_gap` hears of a remote
    desktop's lost and restored connections."""
    kind = source.get("kind")
    if kind in ("vnc", "rdp"):
        from .remote import RemoteSource

        name = source.get("credential")
        if name and credential is None:
            raise SourceError(f"credential {name!r} cannot be opened by this recorder")
        secret = credential(name) if name else None
        return RemoteSource(source, video, secret, on_gap=on_gap)
    w, h, fps = video["width"], video["height"], video["fps"]
    if kind == "testsrc":
        spec = f"{source.get('pattern', 'testsrc')}=size={w}x{h}:rate={fps},format=yuv420p"
        return PatternSource(_open(spec, "testsrc", format="lavfi"))
    if kind == "x11":
        display = source["display"]
        size = f"{source.get('capture_width') or w}x{source.get('capture_height') or h}"
        target = f"{display}+{source.get('offset_x', 0)},{source.get('offset_y', 0)}"
        options = {
            "framerate": str(fps),
            "video_size": size,
            "draw_mouse": "1" if source.get("draw_mouse", True) else "0",
        }
        return X11Source(_open(target, f"x11 display {display}", format="x11grab", options=options))
    if kind == "url":
        url = check_url(source["url"], file_roots or [])
        us = str(open_timeout_s * 1_000_000)
        # no redirects: a public URL could send FFmpeg on to an internal address it was refused
        options = {"protocol_whitelist": PROTOCOLS, "rw_timeout": us, "timeout": us, "max_redirects": "0"}
        try:
            container = av.open(url, options=options, timeout=open_timeout_s)
        except (av.FFmpegError, OSError):
            raise SourceError(f"url {UNREADABLE}") from None  # FFmpeg's reason would tell ports apart
        if not container.streams.video:
            container.close()
            raise SourceError(f"url {UNREADABLE}")
        return UrlSource(container, realtime=source.get("realtime", True))
    raise SourceError(f"source kind {kind!r} cannot be captured")
