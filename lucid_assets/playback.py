"""The read path: a session's chunks decrypted one at a time (every envelope's tag checked before
its bytes are released), as MPEG-TS or as a fragmented MP4 with a known size and byte offsets
(core/fmp4.py: one fragment per chunk, any byte range built from the chunks it touches). Memory
holds one chunk, whatever the length of the recording."""
from __future__ import annotations

import bisect
import hashlib
import io
import itertools
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
        with av.open(io.BytesIO(plain), format="mpegts") as src:
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

    def fragment(self, i: int, plain: bytes | memoryview) -> Iterator[bytes | memoryview]:
        media = demux_chunk(plain)
        expect = self.layout.chunks[i]
        if media.index != expect:  # the cached index no longer describes the chunk: never send a wrong layout
            self.store.drop_mp4_index(self.sid, self.seqs[i])
            raise DamagedChunk(f"chunk {self.seqs[i]}: MP4 index is stale (rebuilt on the next request)")
        durations = fmp4.sample_durations(media.samples, self.layout.next_dts(i), expect.last_duration)
        yield fmp4.fragment_head(i + 1, expect.dts0 - self.layout.t0, media.samples, durations)
        yield from media.data

    def byte_range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive), building only the fragments they touch."""
        pos = 0
        header = self.header()
        pieces: list[tuple[int, Iterator]] = []
        if start < len(header):
            pieces.append((0, iter([header])))
        first = max(0, bisect.bisect_right(self.offsets, start) - 1)
        last = max(0, bisect.bisect_right(self.offsets, end) - 1)
        wanted = [i for i in range(first, last + 1) if self.offsets[i] <= end
                  and self.offsets[i] + fmp4.fragment_size(self.layout.chunks[i]) > start]
        plains = prefetch(plain_chunks(self.store, self.keyring, self.sid, [self.seqs[i] for i in wanted]))

        def fragments():
            for i, plain in zip(wanted, plains):
                yield self.offsets[i], self.fragment(i, plain)
        for base, parts in itertools.chain(pieces, fragments()):
            pos = base
            for part in parts:
                n = len(part)
                lo, hi = max(start, pos), min(end + 1, pos + n)
                if lo < hi:
                    yield bytes(memoryview(part)[lo - pos:hi - pos])
                pos += n
                if pos > end:
                    return
