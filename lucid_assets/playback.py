"""The read path: a session's chunks decrypted one at a time (every envelope's tag checked before
its bytes are released), as MPEG-TS or remuxed on the fly into fragmented MP4. Memory holds one
chunk, whatever the length of the recording."""
from __future__ import annotations

import io
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import av

from .core import envelope
from .keyring import Keyring
from .store import ChunkStore

MP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


class DamagedChunk(Exception):
    """A chunk failed authentication: the stream stops here rather than serve corrupt video."""


def plain_chunks(store: ChunkStore, keyring: Keyring, session_id: str, seqs: Iterable[int]) -> Iterator[memoryview]:
    """Each chunk's plaintext as a memoryview (no copy; what HTTP responses and PyAV readers take)."""
    dek = store.data_key(session_id, keyring)
    if dek is None:
        raise DamagedChunk(f"session {session_id} has no data key (crypto-shredded)")
    sid = uuid.UUID(session_id)
    for seq in seqs:
        data = store.read_envelope(session_id, seq)
        if data is None:
            raise DamagedChunk(f"chunk {seq} is missing from the store")
        try:
            yield memoryview(envelope.open_envelope(data, dek=dek, session_id=sid, seq=seq)[1])
        except envelope.EnvelopeError as exc:
            raise DamagedChunk(f"chunk {seq}: {exc}") from None


def prefetch(chunks: Iterator, depth: int = 2) -> Iterator:
    """Produce the next `depth` items in a worker thread while the consumer sends the current one
    (reading and AES-GCM release the GIL), so decrypting and sending overlap."""
    sentinel = object()
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = deque(pool.submit(next, chunks, sentinel) for _ in range(depth))
        while pending:
            item = pending.popleft().result()
            if item is sentinel:
                return
            pending.append(pool.submit(next, chunks, sentinel))
            yield item


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (what PyAV demuxes from)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._it, self._buf, self._pos = chunks, memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            try:
                self._buf, self._pos = memoryview(next(self._it)), 0
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n


class _Sink:
    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def remux_mp4(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """MPEG-TS chunks → fragmented MP4 (one fragment per keyframe: per chunk), no re-encode."""
    sink = _Sink()
    with av.open(_ChunkReader(chunks), format="mpegts") as src:
        ist = src.streams.video[0]
        out = av.open(sink, "w", format="mp4", options={"movflags": MP4_FLAGS})
        try:
            ost = out.add_stream_from_template(ist)
            for packet in src.demux(ist):
                if packet.dts is None:
                    continue
                packet.stream = ost
                out.mux(packet)
                if sink.parts:
                    yield sink.drain()
        finally:
            out.close()
    yield sink.drain()
