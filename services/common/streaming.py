"""Streaming bodies produced one step ahead of the socket.

`ProducedResponse` pulls a synchronous iterator of bytes-like parts (decrypting chunks, building
MP4 fragments) in a worker thread while the event loop sends the part before: reading, AES-GCM and
socket writes release the GIL, so on two cores producing and sending overlap instead of taking
turns. Each part goes to the transport as it is (no chunked-encoding copy when a Content-Length is
given, no hop per small piece), and a client that goes away stops the producer at the next part.

Starlette's StreamingResponse, which the exports used before, takes a thread hop per part in turn
with the send, and with no Content-Length uvicorn joins every part into the chunked framing (one
more copy of every byte): the TS export went from 0.70-1.14 to 1.33-1.9 GB/s (docs/DECISIONS.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from fastapi.responses import StreamingResponse

log = logging.getLogger("lucid.streaming")
_END = object()


def watch_disconnect(receive) -> tuple[asyncio.Event, asyncio.Task]:
    """An event set when the client goes away, and the task that watches for it (cancel it)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    return gone, asyncio.create_task(watch())


class ProducedResponse(StreamingResponse):
    """A response whose body is `parts`, produced in a worker thread one part ahead.

    An exception from `parts` after the status line has gone out cuts the connection (the client
    sees a short body, never wrong bytes); raise before returning the response for a clean error."""

    def __init__(
        self, parts: Iterator, *, status_code: int = 200, headers: dict | None = None, media_type: str | None = None
    ):
        super().__init__(iter(()), status_code=status_code, headers=headers, media_type=media_type)
        self.parts = parts

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        gone, watcher = watch_disconnect(receive)
        pending = None
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            pending = loop.run_in_executor(None, next, self.parts, _END)
            while not gone.is_set():
                part = await pending
                pending = None
                if part is _END:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    break
                pending = loop.run_in_executor(None, next, self.parts, _END)
                await send({"type": "http.response.body", "body": part, "more_body": True})
        finally:
            watcher.cancel()
            if pending is not None:  # let the producer finish its step before closing it
                try:
                    await pending
                except Exception:
                    pass
            close = getattr(self.parts, "close", None)
            if close is not None:
                await loop.run_in_executor(None, close)
            if gone.is_set():
                log.info("client went away: stream stopped")


class RelayResponse(StreamingResponse):
    """A peer's streamed response (peers.Download) passed on as it arrives, each part as it is:
    the gateway's downloads. A client that goes away closes the peer's connection at once."""

    def __init__(self, download, *, status_code: int, headers: dict, media_type: str | None, head: bool = False):
        super().__init__(iter(()), status_code=status_code, headers=headers, media_type=media_type)
        self.download, self.head = download, head

    async def __call__(self, scope, receive, send) -> None:
        gone, watcher = watch_disconnect(receive)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.head:
                async for part in self.download.parts():
                    if gone.is_set():
                        log.info("client went away: relay stopped")
                        return
                    await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.download.close()
