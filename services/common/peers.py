"""Calls between services. A peer's JSON error passes through unchanged; an unreachable peer is a
503 that names it."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from .errors import ApiError

_client: httpx.AsyncClient | None = None
_headers: dict[str, str] = {}


def use_token(token: str) -> None:
    """The service token every call of this process presents (the gateway's)."""
    global _client
    _headers["Authorization"] = f"Bearer {token}"
    _client = None


def client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), headers=_headers)
    return _client


def _unreachable(url: str, exc: Exception) -> ApiError:
    return ApiError(503, "service_unavailable", f"{url.split('/')[2]} is unreachable: {type(exc).__name__}")


async def call(method: str, url: str, *, raw: bool = False, **kwargs):
    try:
        r = await client().request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from None
    return _result(r, raw)


def _result(r: httpx.Response, raw: bool):
    if r.status_code >= 400:
        try:
            body = r.json()
            error, detail = body.pop("error"), body.pop("detail")
        except (ValueError, KeyError, TypeError, AttributeError):
            error, detail, body = "upstream_error", r.text[:500], {}
        passed = {k: r.headers[k] for k in ("content-range",) if k in r.headers}  # a 416's `bytes */N`
        raise ApiError(r.status_code, error, detail, headers=passed or None, **body)
    if raw:
        return r
    return r.json() if r.content else None


CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 60.0  # seconds, like the httpx client's
BUFFER = 4 << 20  # read buffer per download: big parts, few event-loop turns per megabyte


class Download:
    """A peer's response head, and its body still on the connection (see `download`)."""

    def __init__(self, status: int, headers: httpx.Headers, reader, writer, length: int | None):
        self.status_code, self.headers, self.length = status, headers, length
        self._reader, self._writer = reader, writer

    async def parts(self, size: int = 1 << 20):
        """The body in parts of up to `size` bytes, as they arrive; a peer that stops sending
        (or goes away) before Content-Length ends it with an error: never a short body as whole."""
        left = self.length or 0
        while left:
            part = await asyncio.wait_for(self._reader.read(min(left, size)), READ_TIMEOUT)
            if not part:
                raise ConnectionError(f"the peer closed the connection {left} bytes before the end")
            left -= len(part)
            yield part

    def close(self) -> None:
        self._writer.close()


async def download(method: str, url: str, headers: dict[str, str] | None = None) -> Download:
    """A streamed GET/HEAD from a peer over a plain HTTP/1.1 connection of its own.

    Bulk downloads (exports, evidence) go through here instead of httpx: httpx's streaming costs
    ~3 µs of Python per 4-64 KiB piece on the way through h11 and httpcore, which held the
    gateway's relay of a TS export to 0.33 x the bare decrypting server while the storage service
    itself served 1.4 x (bench/export.py); reading the socket in up-to-4 MiB parts relays at 0.92 x.
    Errors are raised like call()'s (a peer's JSON error passes through, unreachable is a 503)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"download() speaks plain HTTP to peers, not {url!r}")
    port = parts.port or 80
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port, limit=BUFFER), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        raise _unreachable(url, exc) from None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in {**_headers, **(headers or {})}.items()]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.close()
        raise _unreachable(url, exc) from None
    status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
        got = httpx.Headers([(k.strip(), v.strip()) for k, v in (f.split(":", 1) for f in fields)])
    except (IndexError, ValueError):
        writer.close()
        raise ApiError(502, "upstream_error", f"{parts.netloc} sent a malformed response head") from None
    length = int(got["content-length"]) if "content-length" in got else None
    d = Download(status, got, reader, writer, 0 if method == "HEAD" else length)
    if length is None and method != "HEAD":
        d.close()
        raise ApiError(502, "upstream_error", f"{parts.netloc} sent a body without a Content-Length")
    if status >= 400:
        body = b"".join([p async for p in d.parts()]) if method != "HEAD" else b""
        d.close()
        _result(httpx.Response(status, headers=got, content=body), True)
    return d
