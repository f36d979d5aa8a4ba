"""ProducedResponse on a real uvicorn server: the body arrives whole and in order, a client that goes
away stops the producer (and closes it), and a producer that fails mid-stream cuts the transfer."""

import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.common.streaming import ProducedResponse
from tests.conftest import free_port

PART = 256 * 1024


@pytest.fixture(scope="module")
def server():
    state = {"produced": 0, "closed": threading.Event()}
    app = FastAPI()

    def parts(n: int, fail_at: int | None = None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise RuntimeError("producer failed")
                state["produced"] += 1
                yield bytes([i % 256]) * PART
        finally:
            state["closed"].set()

    @app.get("/parts/{n}")
    def whole(n: int):
        return ProducedResponse(parts(n), headers={"Content-Length": str(n * PART)})

    @app.get("/fails/{n}")
    def fails(n: int):
        return ProducedResponse(parts(n, fail_at=n // 2), headers={"Content-Length": str(n * PART)})

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", state
    srv.should_exit = True
    thread.join(10)


def test_body_arrives_whole_and_in_order(server):
    url, _ = server
    r = httpx.get(f"{url}/parts/40", timeout=30)
    assert r.status_code == 200 and int(r.headers["content-length"]) == 40 * PART
    assert r.content == b"".join(bytes([i]) * PART for i in range(40))


def test_client_that_goes_away_stops_the_producer(server):
    url, state = server
    state["produced"], n = 0, 100_000  # 25 GB if nobody stopped it
    state["closed"].clear()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"GET /parts/{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 4 * PART:
            got += len(s.recv(65536))
    assert state["closed"].wait(10), "the producer was not closed after the client left"
    produced = state["produced"]
    time.sleep(0.5)
    assert state["produced"] == produced < 200  # stopped, a few parts (socket buffers) past what was read


def test_failure_mid_stream_cuts_the_transfer(server):
    url, _ = server
    with pytest.raises(httpx.HTTPError):  # fewer bytes than Content-Length, then the connection closes
        httpx.get(f"{url}/fails/20", timeout=30)


def test_relay_cut_short_when_the_peer_dies_mid_body(caplog):
    """The gateway's relay (peers.download + RelayResponse): a peer that dies after part of its
    declared body leaves the client a short body and a closed connection, and one warning line."""
    from services.common.peers import download
    from services.common.streaming import RelayResponse

    peer = socket.create_server(("127.0.0.1", 0))
    declared, sent = 8 * PART, 2 * PART

    def dying_peer():
        conn, _ = peer.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n" % declared)
            conn.sendall(b"x" * sent)  # then the process "dies": the connection closes

    threading.Thread(target=dying_peer, daemon=True).start()
    app = FastAPI()

    @app.get("/relay")
    async def relay():
        r = await download("GET", f"http://127.0.0.1:{peer.getsockname()[1]}/bundle")
        length = {"content-length": r.headers["content-length"]}
        return RelayResponse(r, status_code=r.status_code, headers=length, media_type=None)

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        got = bytearray()
        url = f"http://127.0.0.1:{port}/relay"
        # the body ends before its Content-Length
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, timeout=30) as r:
            assert r.status_code == 200 and int(r.headers["content-length"]) == declared
            for part in r.iter_raw():
                got += part
        assert bytes(got) == b"x" * sent  # what the peer sent, nothing invented
        assert any("relay cut: the peer stopped sending" in m for m in caplog.messages)
    finally:
        srv.should_exit = True
        thread.join(10)
        peer.close()


def _peer_saying(answer: bytes, linger: float = 0.0) -> socket.socket:
    """A one-shot peer that reads the request, sends `answer` and closes (after `linger` s)."""
    peer = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = peer.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
            time.sleep(linger)

    threading.Thread(target=serve, daemon=True).start()
    return peer


@pytest.mark.parametrize(
    "answer, status, error",
    [
        (b"", 503, "service_unavailable"),  # closed before any head
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (70 << 10), 503, "service_unavailable"),  # a head with no end
        (b"HTTP/1.1 OK\r\n\r\n", 502, "upstream_error"),  # malformed status line
        (b"HTTP/1.1 200 OK\r\n\r\nbody", 502, "upstream_error"),  # a body without a Content-Length
    ],
    ids=["closed", "endless-head", "malformed", "no-length"],
)
def test_download_refuses_a_broken_peer_head(answer, status, error):
    import asyncio

    from services.common.errors import ApiError
    from services.common.peers import download

    # the connection stays open after what the peer sent: refused for that, at once
    peer = _peer_saying(answer, linger=0 if answer == b"" else 10)
    t = time.monotonic()
    with pytest.raises(ApiError) as got:
        asyncio.run(download("GET", f"http://127.0.0.1:{peer.getsockname()[1]}/x"))
    assert time.monotonic() - t < 5
    peer.close()
    assert (got.value.status, got.value.error) == (status, error), got.value.detail


def test_download_passes_the_announced_body_only():
    """Pieces are passed on as they arrive (head and body may share one read); bytes beyond the
    Content-Length are not passed on."""
    import asyncio

    from services.common.peers import download

    peer = _peer_saying(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")

    async def fetch() -> bytes:
        d = await download("GET", f"http://127.0.0.1:{peer.getsockname()[1]}/x")
        try:
            return b"".join([p async for p in d.parts()])
        finally:
            d.close()

    assert asyncio.run(fetch()) == b"hello"
    peer.close()


def test_download_pieces_stay_intact_while_held():
    """Every piece is a view of memory the event loop read into once: pieces held until the whole
    body is in (as a slow client's transport holds them) are still the bytes the peer sent, across
    many arenas, with the head split over reads and sharing its last read with the body."""
    import asyncio
    import random

    from services.common.peers import ARENA, download

    rng = random.Random(7)
    body = rng.randbytes(6 * ARENA + 12345)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    peer = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = peer.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(head[:20])
            time.sleep(0.05)
            conn.sendall(head[20:] + body[:1000])
            at = 1000
            while at < len(body):
                n = rng.randint(1, 300_000)
                conn.sendall(body[at : at + n])
                at += n

    threading.Thread(target=serve, daemon=True).start()

    async def fetch() -> list:
        d = await download("GET", f"http://127.0.0.1:{peer.getsockname()[1]}/x")
        try:
            return [p async for p in d.parts()]
        finally:
            d.close()

    pieces = asyncio.run(fetch())
    peer.close()
    assert len(pieces) > 6 and b"".join(pieces) == body
