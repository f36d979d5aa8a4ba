"""The read path: a session's chunks decrypted one at a time (every envelope's tag checked before
its bytes are released), as MPEG-TS or as a fragmented MP4 with a known size and byte offsets
(core/fmp4.py: one fragment per chunk, any byte range built from the chunks it touches). Memory
holds one chunk, whatever the length of the recording."""
from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections import deque
from dataclasses import dataclass
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import av

from .core import envelope, fmp4
from .keyring import Keyring
from .store import ChunkStore


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


PROBE = {"probesize": "65536", "analyzeduration": "0", "fpsprobesize": "0"}


class NotExportable(Exception):
    """The recording is not H.264 in MPEG-TS chunks, so it has no MP4 export."""


@dataclass
class ChunkMedia:
    index: fmp4.ChunkIndex
    samples: list[fmp4.Sample]
    data: list[bytes]  # length-prefixed access units
    sps: bytes
    pps: bytes
    width: int
    height: int


def demux_chunk(plain: bytes | memoryview) -> ChunkMedia:
    """One MPEG-TS chunk's H.264 access units as MP4 samples (start codes -> lengths)."""
    samples, data, sps, pps = [], [], None, None
    try:
        # the stream facts come from the PMT and the first SPS: no need for FFmpeg to probe and
        # decode seconds of video first (that alone was a third of the export time)
        with av.open(io.BytesIO(plain), format="mpegts", options=PROBE) as src:
            if not src.streams.video or src.streams.video[0].codec_context.name != "h264":
                raise NotExportable("the recording has no H.264 video stream")
            st = src.streams.video[0]
            width, height = st.codec_context.width, st.codec_context.height
            rate = st.average_rate or st.guessed_rate
            last_duration = int(fmp4.TIMESCALE / rate) if rate else 3000
            for pkt in src.demux(st):
                if pkt.dts is None or pkt.size == 0:
                    continue
                raw = bytes(pkt)
                if sps is None:
                    sps, pps = fmp4.parameter_sets(raw)
                unit = fmp4.avcc_sample(raw)
                pts = pkt.pts if pkt.pts is not None else pkt.dts
                samples.append(fmp4.Sample(dts=pkt.dts, pts=pts, key=bool(pkt.is_keyframe), size=len(unit)))
                data.append(unit)
                if pkt.duration:
                    last_duration = pkt.duration
    except av.FFmpegError as exc:
        raise NotExportable(f"chunk does not demux as MPEG-TS: {exc}") from None
    if not samples or sps is None or pps is None:
        raise NotExportable("chunk has no H.264 access units with parameter sets")
    idx = fmp4.ChunkIndex(samples=len(samples), payload=sum(s.size for s in samples), dts0=samples[0].dts,
                          dts_last=samples[-1].dts, pts_min=min(s.pts for s in samples), last_duration=last_duration)
    return ChunkMedia(idx, samples, data, sps, pps, width, height)


def index_key(store: ChunkStore, session_id: str, seq: int) -> str:
    """What ties a cached chunk index to the envelope it was made from (rewritten -> new key)."""
    st = store.envelope_path(session_id, seq).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def write_chunk_index(store: ChunkStore, session_id: str, seq: int, plain: bytes | memoryview) -> dict:
    media = demux_chunk(plain)
    doc = {"v": 1, "key": index_key(store, session_id, seq), **media.index.to_dict(), "sps": media.sps.hex(),
           "pps": media.pps.hex(), "width": media.width, "height": media.height}
    store.write_mp4_index(session_id, seq, doc)
    return doc


class Mp4Export:
    """A session's MP4 as a size, an ETag and any byte range of it.

    The per-chunk indexes (sample count, payload bytes, first/last decode time) are cached beside
    the envelopes (`<session>/mp4/<seq>.json`, derived data, keyed by the envelope's size and
    mtime) and made on first use; the processing run writes them as it stores each chunk."""

    def __init__(self, store: ChunkStore, keyring: Keyring, session_id: str, seqs: list[int]):
        self.store, self.keyring, self.sid, self.seqs = store, keyring, session_id, list(seqs)
        docs = [self._index_doc(seq) for seq in self.seqs]
        first = docs[0]
        self.sps, self.pps = bytes.fromhex(first["sps"]), bytes.fromhex(first["pps"])
        self.width, self.height = first["width"], first["height"]
        self.layout = fmp4.Layout.build([fmp4.ChunkIndex.from_dict(d) for d in docs], self.sps, self.pps,
                                        self.width, self.height)
        self.offsets = self.layout.offsets()
        self.size = self.layout.size
        self.etag = '"' + hashlib.sha256(json.dumps([d["key"] for d in docs] + [self.size]).encode()).hexdigest()[:32] + '"'

    def _index_doc(self, seq: int) -> dict:
        try:
            key = index_key(self.store, self.sid, seq)
        except FileNotFoundError:
            raise DamagedChunk(f"chunk {seq} is missing from the store") from None
        doc = self.store.read_mp4_index(self.sid, seq)
        if doc is not None and doc.get("v") == 1 and doc.get("key") == key:
            return doc
        return write_chunk_index(self.store, self.sid, seq, next(plain_chunks(self.store, self.keyring, self.sid, [seq])))

    def header(self) -> bytes:
        return self.layout.header(self.sps, self.pps, self.width, self.height)

    def fragment(self, i: int, plain: bytes | memoryview) -> bytes:
        """Fragment i (moof + mdat) built from chunk i's plaintext."""
        media = demux_chunk(plain)
        expect = self.layout.chunks[i]
        if media.index != expect:  # the cached index no longer describes the chunk: never send a wrong layout
            self.store.drop_mp4_index(self.sid, self.seqs[i])
            raise DamagedChunk(f"chunk {self.seqs[i]}: MP4 index is stale (rebuilt on the next request)")
        durations = fmp4.sample_durations(media.samples, self.layout.next_dts(i), expect.last_duration)
        return b"".join([fmp4.fragment_head(i + 1, expect.dts0 - self.layout.t0, media.samples, durations),
                         *media.data])

    def byte_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes start..end (inclusive), building only the fragments they touch (the next one is
        decrypted in a worker thread while the current one is built and sent)."""
        if start < self.header_size:
            yield memoryview(self.header())[start:min(end + 1, self.header_size)]
        wanted = [i for i, off in enumerate(self.offsets)
                  if off <= end and off + fmp4.fragment_size(self.layout.chunks[i]) > start]
        plains = prefetch(plain_chunks(self.store, self.keyring, self.sid, [self.seqs[i] for i in wanted]))
        for i, plain in zip(wanted, plains):
            frag, off = self.fragment(i, plain), self.offsets[i]
            yield memoryview(frag)[max(start, off) - off:min(end + 1, off + len(frag)) - off]

    @property
    def header_size(self) -> int:
        return self.layout.header_size


def coalesce(parts: Iterable[bytes | memoryview], at_least: int = 1 << 20) -> Iterator[bytes | memoryview]:
    """Join small pieces into writes of at least `at_least` bytes: each piece a streamed response
    sends costs a hop to a worker thread and a socket write, which dominates for small chunks."""
    batch, size = [], 0
    for part in parts:
        if not batch and len(part) >= at_least:
            yield part
            continue
        batch.append(part)
        size += len(part)
        if size >= at_least:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch) if len(batch) > 1 else batch[0]
