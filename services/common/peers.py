"""Calls between services. A peer's JSON error passes through unchanged; an unreachable peer is a
503 that names it."""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import urlsplit

import httpx
import numpy as np

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
HEAD_LIMIT = 64 << 10  # a response head longer than this is not one
HIGH_WATER = 4 << 20  # body bytes received and not yet passed on before reading the peer pauses
ARENA = 256 << 10  # the event loop reads into the free end of an arena this large ...
MIN_ROOM = 32 << 10  # ... and a fresh arena is taken once less than this is left


class _Peer(asyncio.BufferedProtocol):
    """A peer's response as the event loop reads it: the head, then each body piece as the
    kernel wrote it, passed on without a copy. The loop reads straight into the free end of an
    arena (a plain Protocol gets a new bytes object per read, copied from the loop's own buffer:
    a copy of every byte); a piece is a view of the arena, so an arena is never
    written twice, and is freed with the last piece the client's transport let go of. (asyncio's
    StreamReader, before, copied every byte into its buffer, again out of it, and moved what was
    left down the buffer.) Reading pauses while more than HIGH_WATER bytes wait."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.head_done: asyncio.Future = self.loop.create_future()
        self.pieces: deque[memoryview] = deque()
        self.waiting, self.paused, self.ended = 0, False, False
        self.error: Exception | None = None
        self.wakeup: asyncio.Future | None = None
        self.arena, self.used = memoryview(b""), 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.arena) - self.used < MIN_ROOM:
            # uninitialised (np.empty): a bytearray would be zero-filled first, one more pass
            self.arena, self.used = memoryview(np.empty(ARENA, np.uint8)).cast("B"), 0
        return self.arena[self.used :]

    def buffer_updated(self, nbytes: int) -> None:
        data = self.arena[self.used : self.used + nbytes]
        self.used += nbytes
        if self.head_done.done():
            self._keep(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > HEAD_LIMIT:
                self._fail(ConnectionError("the response head has no end"))
            return
        rest = len(self.head) - (end + 4)  # the body's first bytes: the tail of this read
        self.head_done.set_result(bytes(self.head[: end + 4]))
        if rest:
            self._keep(data[nbytes - rest :])

    def _keep(self, data: memoryview) -> None:
        self.pieces.append(data)
        self.waiting += len(data)
        if self.waiting > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        if not self.head_done.done():
            self.head_done.set_exception(exc)
        self.transport.close()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if not self.head_done.done():
            self.head_done.set_exception(exc or ConnectionError("the peer closed the connection before its head"))
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def piece(self) -> memoryview | None:
        """The next body piece as it arrived, or None once the peer has closed and all is passed on."""
        while not self.pieces:
            if self.error is not None:
                raise self.error
            if self.ended:
                return None
            self.wakeup = self.loop.create_future()
            await self.wakeup
        data = self.pieces.popleft()
        self.waiting -= len(data)
        if self.paused and self.waiting <= HIGH_WATER // 2:
            self.paused = False
            self.transport.resume_reading()
        return data


class Download:
    """A peer's response head, and its body still on the connection (see `download`)."""

    def __init__(self, status: int, headers: httpx.Headers, peer: _Peer, length: int | None):
        self.status_code, self.headers, self.length = status, headers, length
        self._peer = peer

    async def parts(self):
        """The body, piece by piece as it arrives; a peer that stops sending (or goes away)
        before Content-Length ends it with an error: never a short body as whole."""
        left = self.length or 0
        while left:
            part = await asyncio.wait_for(self._peer.piece(), READ_TIMEOUT)
            if part is None:
                raise ConnectionError(f"the peer closed the connection {left} bytes before the end")
            if len(part) > left:  # more than announced: only the announced bytes pass
                part = part[:left]
            left -= len(part)
            yield part

    def close(self) -> None:
        self._peer.transport.close()


async def download(method: str, url: str, headers: dict[str, str] | None = None) -> Download:
    """A streamed GET/HEAD from a peer over a plain HTTP/1.1 connection of its own.

    Bulk downloads (exports, evidence) go through here instead of httpx: httpx's streaming costs
    ~3 µs of Python per 4-64 KiB piece on the way through h11 and httpcore, which held the
    gateway's relay of a TS export to 0.33 x the bare decrypting server while the storage service
    itself served 1.4 x (bench/export.py). Each piece the event loop reads is passed on as it is.
    Errors are raised like call()'s (a peer's JSON error passes through, unreachable is a 503)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"download() speaks plain HTTP to peers, not {url!r}")
    port = parts.port or 80
    loop = asyncio.get_running_loop()
    try:
        _, peer = await asyncio.wait_for(loop.create_connection(_Peer, parts.hostname, port), CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise _unreachable(url, exc) from None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in {**_headers, **(headers or {})}.items()]
    try:
        peer.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await asyncio.wait_for(peer.head_done, READ_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        peer.transport.close()
        raise _unreachable(url, exc) from None
    except BaseException:  # the caller was cancelled (its client went away): no connection left open
        peer.transport.close()
        raise
    status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
        got = httpx.Headers([(k.strip(), v.strip()) for k, v in (f.split(":", 1) for f in fields)])
    except (IndexError, ValueError):
        peer.transport.close()
        raise ApiError(502, "upstream_error", f"{parts.netloc} sent a malformed response head") from None
    length = int(got["content-length"]) if "content-length" in got else None
    d = Download(status, got, peer, 0 if method == "HEAD" else length)
    if length is None and method != "HEAD":
        d.close()
        raise ApiError(502, "upstream_error", f"{parts.netloc} sent a body without a Content-Length")
    if status >= 400:
        body = b"".join([p async for p in d.parts()]) if method != "HEAD" else b""
        d.close()
        _result(httpx.Response(status, headers=got, content=body), True)
    return d
