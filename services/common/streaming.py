"""Streaming bodies produced a few parts ahead of the socket.

`ProducedResponse` runs a synchronous iterator of bytes-like parts (decrypting chunks, building
MP4 fragments) in a worker thread a few parts ahead while the event loop sends: reading and socket
waits release the GIL, so on two cores producing and sending overlap instead of taking turns.
Each part goes to the transport as it is (no chunked-encoding copy when a Content-Length is given,
no hop per small piece), and a client that goes away stops the producer at the next part.

Starlette's StreamingResponse, which the exports used before, takes a thread hop per part in turn
with the send, and with no Content-Length uvicorn joins every part into the chunked framing (one
more copy of every byte): the TS export went from 0.70-1.14 to 1.33-1.9 GB/s (docs/DECISIONS.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
    """A response whose body is `parts`, produced in a worker thread up to AHEAD parts ahead.

    One thread runs the iterator from start to end and hands each part to the event loop; it waits
    only when AHEAD parts are queued. (Asking for each next part from the event loop, one part
    ahead, left the producer idle between a part's send and the next request: in interleaved rounds
    the TS export ran at 0.67-0.77 of its CPU ceiling that way and 0.84-0.87 this way.)
    An exception from `parts` after the status line has gone out cuts the connection (the client
    sees a short body, never wrong bytes); raise before returning the response for a clean error."""

    AHEAD = 3

    def __init__(
        self, parts: Iterator, *, status_code: int = 200, headers: dict | None = None, media_type: str | None = None
    ):
        super().__init__(iter(()), status_code=status_code, headers=headers, media_type=media_type)
        self.parts = parts

    def _produce(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, room, stop: threading.Event) -> None:
        put = queue.put_nowait
        try:
            for part in self.parts:
                room.acquire()
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(put, part)
            loop.call_soon_threadsafe(put, _END)
        except Exception as exc:  # handed to the event loop, which cuts the response
            loop.call_soon_threadsafe(put, exc)
        finally:
            close = getattr(self.parts, "close", None)
            if close is not None:  # in this thread: the iterator is never closed while it runs
                close()

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        gone, watcher = watch_disconnect(receive)
        queue: asyncio.Queue = asyncio.Queue()
        room, stop = threading.Semaphore(self.AHEAD), threading.Event()
        producer = loop.run_in_executor(None, self._produce, loop, queue, room, stop)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            while not gone.is_set():
                part = await queue.get()
                room.release()
                if part is _END:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    break
                if isinstance(part, Exception):
                    raise part
                await send({"type": "http.response.body", "body": part, "more_body": True})
        finally:
            watcher.cancel()
            stop.set()
            room.release()  # a producer waiting for room wakes, sees stop and closes the iterator
            await producer
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
                try:
                    async for part in self.download.parts():
                        if gone.is_set():
                            log.info("client went away: relay stopped")
                            return
                        await send({"type": "http.response.body", "body": part, "more_body": True})
                except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
                    # the peer died or stalled mid-body: the client's connection is closed short of its
                    # Content-Length (never completed with wrong bytes); one line, not a traceback
                    log.warning("relay cut: the peer stopped sending (%s: %s)", type(exc).__name__, exc)
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.download.close()
