"""The read path: a session's chunks decrypted one at a time (every envelope's tag checked before
its bytes are released), as MPEG-TS or as a fragmented MP4 with a known size and byte offsets
(core/fmp4.py: one fragment per chunk, any byte range built from the chunks it touches). Memory
holds one chunk, whatever the length of the recording."""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import struct
import sys
import threading
import uuid
from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from .core import envelope, fmp4, mpegts
from .keyring import Keyring
from .store import ChunkStore, EnvelopeReader, in_parallel


class DamagedChunk(Exception):
    """A chunk failed authentication: the stream stops here rather than serve corrupt video."""


def plain_chunks(store: ChunkStore, keyring: Keyring, session_id: str, seqs: Iterable[int]) -> Iterator[memoryview]:
    """Each chunk's plaintext as a memoryview (no copy; what HTTP responses and PyAV readers take),
    its envelope's tag checked before any byte is released. Envelopes are read through one reused
    buffer; each plaintext is a new buffer (a response may still hold the one before). Joining
    chunks into larger buffers was measured slower (page faults on every fresh large buffer)."""
    dek = store.data_key(session_id, keyring)
    if dek is None:
        raise DamagedChunk(f"session {session_id} has no data key (crypto-shredded)")
    sid = uuid.UUID(session_id)
    if store.is_local:
        reader = EnvelopeReader(store)
        envelopes = ((seq, reader.read(session_id, seq)) for seq in seqs)
    else:  # a bucket: the next envelopes are fetched while this one is decrypted and sent
        envelopes = store.read_ahead(session_id, seqs)
    for seq, data in envelopes:
        if data is None:
            raise DamagedChunk(f"chunk {seq} is missing from the store")
        try:
            yield memoryview(envelope.open_envelope(data, dek=dek, session_id=sid, seq=seq)[1])
        except envelope.EnvelopeError as exc:
            raise DamagedChunk(f"chunk {seq}: {exc}") from None


def plain_size(store: ChunkStore, session_id: str, seqs: Iterable[int]) -> int:
    """The plaintext length of these chunks from their envelope headers (the header is the AAD, so
    a false length fails that chunk's tag when it is streamed: the stream is cut, never padded)."""
    total, seqs = 0, list(seqs)
    workers = 1 if store.is_local else 16  # a file's header is read faster than a thread starts
    heads = in_parallel(lambda seq: store.read_envelope_head(session_id, seq, envelope.HEADER_LEN), seqs, workers)
    for seq, head in zip(seqs, heads):
        if head is None:
            raise DamagedChunk(f"chunk {seq} is missing from the store")
        try:
            total += envelope.parse_header(head).raw_len
        except envelope.EnvelopeError as exc:
            raise DamagedChunk(f"chunk {seq}: {exc}") from None
    return total


PROBE = {"probesize": "65536", "analyzeduration": "0", "fpsprobesize": "0"}
PLAN_KIND = b"mp4p"
PLAN_VERSION = 2


class NotExportable(Exception):
    """The recording is not H.264 in MPEG-TS chunks, so it has no MP4 export."""


TRUN = np.dtype([("duration", ">u4"), ("size", ">u4"), ("flags", ">u4"), ("offset", ">i4")])


@dataclass(eq=False)
class Samples:
    """A chunk's samples as columns (90 kHz dts and pts, sizes, key flags): a fragment's trun is
    built from them in a few array operations, not a Python object per sample."""

    dts: np.ndarray  # int64
    pts: np.ndarray  # int64
    size: np.ndarray  # int64
    key: np.ndarray  # bool

    @classmethod
    def of(cls, samples: list[fmp4.Sample]) -> Samples:
        return cls(
            np.array([x.dts for x in samples], np.int64),
            np.array([x.pts for x in samples], np.int64),
            np.array([x.size for x in samples], np.int64),
            np.array([x.key for x in samples], bool),
        )

    def __len__(self) -> int:
        return len(self.dts)

    def __eq__(self, other: object) -> bool:
        cols = ("dts", "pts", "size", "key")
        return isinstance(other, Samples) and all(np.array_equal(getattr(self, c), getattr(other, c)) for c in cols)

    def trun(self, next_dts: int | None, last_duration: int) -> bytes:
        """The trun entries (fmp4.trun_entries' bytes): each sample lasts until the next one, the
        last until `next_dts` (the next chunk's first) or for `last_duration`."""
        n = len(self.dts)
        durations = np.empty(n, np.int64)
        np.subtract(self.dts[1:], self.dts[:-1], out=durations[:-1])
        if n:
            durations[-1] = next_dts - int(self.dts[-1]) if next_dts is not None else last_duration
        offsets = self.pts - self.dts
        if n and (durations.min() < 0 or durations.max() > 0xFFFFFFFF or abs(offsets).max() > 0x7FFFFFFF):
            raise DamagedChunk("the chunk's timestamps do not fit an MP4 fragment")
        out = np.empty(n, TRUN)
        out["duration"], out["size"], out["offset"] = durations, self.size, offsets
        out["flags"] = np.where(self.key, fmp4.KEY_FLAGS, fmp4.NON_KEY_FLAGS)
        return out.tobytes()


@dataclass
class ChunkPlan:
    """One chunk's MP4 fragment without its bytes: the layout facts, the samples and the copy plan
    (core/mpegts.py), tied to the envelope it was made from by that envelope's GCM tag."""

    tag: bytes
    index: fmp4.ChunkIndex
    sps: bytes
    pps: bytes
    width: int
    height: int
    samples: Samples
    rows: list[tuple[int, int]]
    prefixes: bytes
    patch_at: array  # positions in E of the 4-byte lengths written in place (core/mpegts.py)
    patch_bytes: bytes
    pieces: array  # flat: start0, end0, start1, end1, ...

    def to_bytes(self) -> bytes:
        head = json.dumps(
            {
                "v": PLAN_VERSION,
                "tag": self.tag.hex(),
                "chunk": self.index.to_dict(),
                "sps": self.sps.hex(),
                "pps": self.pps.hex(),
                "width": self.width,
                "height": self.height,
                "rows": self.rows,
                "prefixes": len(self.prefixes),
                "patches": len(self.patch_at),
                "pieces": len(self.pieces),
            },
            sort_keys=True,
        ).encode()
        s = self.samples
        cols = [
            s.dts.astype("<i8").tobytes(),
            s.pts.astype("<i8").tobytes(),
            s.size.astype("<i8").tobytes(),
            s.key.astype(np.uint8).tobytes(),
            _le(self.patch_at),
            self.patch_bytes,
            _le(self.pieces),
        ]
        return b"".join([struct.pack("<I", len(head)), head, self.prefixes, *cols])

    @classmethod
    def from_bytes(cls, data: bytes, *, full: bool = True) -> ChunkPlan:
        """The plan; with full=False only its facts (no samples, prefixes or pieces: what a layout
        needs, at a fraction of the cost)."""
        (hl,) = struct.unpack_from("<I", data)
        doc = json.loads(data[4 : 4 + hl])
        if doc.get("v") != PLAN_VERSION:
            raise ValueError(f"plan version {doc.get('v')}")
        facts = {
            "tag": bytes.fromhex(doc["tag"]),
            "index": fmp4.ChunkIndex.from_dict(doc["chunk"]),
            "sps": bytes.fromhex(doc["sps"]),
            "pps": bytes.fromhex(doc["pps"]),
            "width": doc["width"],
            "height": doc["height"],
            "rows": [tuple(r) for r in doc["rows"]],
        }
        if not full:
            none = np.empty(0, np.int64)
            samples = Samples(none, none, none, np.empty(0, bool))
            return cls(**facts, samples=samples, prefixes=b"", patch_at=array("q"), patch_bytes=b"", pieces=array("q"))
        view, at = memoryview(data), 4 + hl
        prefixes = bytes(view[at : at + doc["prefixes"]])
        at += len(prefixes)
        n = facts["index"].samples
        dts, pts, size = (np.frombuffer(view, "<i8", n, at + 8 * n * i).astype(np.int64) for i in range(3))
        at += 24 * n
        keys = np.frombuffer(view, np.uint8, n, at).astype(bool)
        at += n
        m = doc["patches"]
        patch_at, patch_bytes = _from_le(view[at : at + 8 * m]), bytes(view[at + 8 * m : at + 12 * m])
        at += 12 * m
        pieces = _from_le(view[at : at + 8 * doc["pieces"]])
        if at + 8 * doc["pieces"] != len(data) or len(pieces) % 2:
            raise ValueError("plan body does not match its header")
        return cls(
            **facts,
            samples=Samples(dts, pts, size, keys),
            prefixes=prefixes,
            patch_at=patch_at,
            patch_bytes=patch_bytes,
            pieces=pieces,
        )


def _le(a: array) -> bytes:
    if sys.byteorder == "big":
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from_le(b: bytes | memoryview) -> array:
    a = array("q")
    a.frombytes(b)
    if sys.byteorder == "big":
        a.byteswap()
    return a


def chunk_plan(plain: bytes | memoryview, tag: bytes) -> ChunkPlan:
    """Plan one MPEG-TS chunk's MP4 fragment (plan time: the processing run, or a first export)."""
    try:
        # the stream facts come from the PMT and the first SPS, without probing seconds of video
        with av.open(io.BytesIO(plain), format="mpegts", options=PROBE) as src:
            if not src.streams.video or src.streams.video[0].codec_context.name != "h264":
                raise NotExportable("the recording has no H.264 video stream")
            st = src.streams.video[0]
            width, height = st.codec_context.width, st.codec_context.height
            rate = st.average_rate or st.guessed_rate
    except av.FFmpegError as exc:
        raise NotExportable(f"chunk does not open as MPEG-TS: {exc}") from None
    try:
        p = mpegts.plan(plain)
    except mpegts.TsError as exc:
        raise NotExportable(str(exc)) from None
    samples = [fmp4.Sample(dts=u.dts, pts=u.pts, key=u.key, size=u.size) for u in p.units]
    # the last sample lasts as long as the chunk's usual frame (the stream's nominal rate can be
    # the field rate, twice the frame rate)
    deltas = Counter(b.dts - a.dts for a, b in zip(samples, samples[1:]) if b.dts > a.dts)
    last = deltas.most_common(1)[0][0] if deltas else int(fmp4.TIMESCALE / rate) if rate else 3000
    idx = fmp4.ChunkIndex(
        samples=len(samples),
        payload=p.payload,
        dts0=samples[0].dts,
        dts_last=samples[-1].dts,
        pts_min=min(x.pts for x in samples),
        last_duration=last,
    )
    return ChunkPlan(
        tag=bytes(tag),
        index=idx,
        sps=p.sps,
        pps=p.pps,
        width=width,
        height=height,
        samples=Samples.of(samples),
        rows=p.rows,
        prefixes=p.prefixes,
        patch_at=array("q", p.patch_at),
        patch_bytes=p.patch_bytes,
        pieces=array("q", [x for piece in p.pieces for x in piece]),
    )


def write_chunk_plan(
    store: ChunkStore, session_id: str, seq: int, plain: bytes | memoryview, *, dek: bytes, tag: bytes
) -> ChunkPlan:
    plan = chunk_plan(plain, tag)
    store.write_mp4_index(
        session_id,
        seq,
        envelope.seal_sidecar(plan.to_bytes(), dek=dek, kind=PLAN_KIND, session_id=uuid.UUID(session_id), seq=seq),
    )
    return plan


def read_chunk_plan(store: ChunkStore, session_id: str, seq: int, *, dek: bytes, full: bool = True) -> ChunkPlan | None:
    """The sealed plan, or None when there is none or it does not open (damaged, moved from another
    chunk, an older version): plans are derived data, made again from the chunk."""
    blob = store.read_mp4_index(session_id, seq)
    if blob is None:
        return None
    try:
        return ChunkPlan.from_bytes(
            envelope.open_sidecar(blob, dek=dek, kind=PLAN_KIND, session_id=uuid.UUID(session_id), seq=seq), full=full
        )
    except (envelope.EnvelopeError, ValueError, KeyError, TypeError, struct.error):
        return None


def _payload_rows(packets: np.ndarray, runs: list[tuple[int, int]], out: np.ndarray) -> None:
    """Bytes 4..188 of the packets of each [first, end) run (checked by the caller), in order, into
    `out` (one row each): a strided block copy per run (~75 per chunk), ~1.8x faster than a gather
    by packet number."""
    payloads, k = packets[:, 4:], 0
    for first, end in runs:
        out[k : k + end - first] = payloads[first:end]
        k += end - first


class Scratch:
    """Buffers one export reuses from chunk to chunk (fresh megabytes per chunk cost page faults
    that were a third of the work); only the finished fragment is a new object."""

    def __init__(self, reader: EnvelopeReader | None = None):
        self.reader, self.plain, self.both = reader, bytearray(0), np.empty(0, np.uint8)

    def plain_view(self, size: int) -> memoryview:
        if len(self.plain) < size:
            self.plain = bytearray(size + size // 4)
        return memoryview(self.plain)[:size]

    def both_array(self, size: int) -> np.ndarray:
        if self.both.size < size:
            self.both = np.empty(size + size // 4, np.uint8)
        return self.both[:size]


def build_fragment(
    plan: ChunkPlan,
    plain: bytes | memoryview,
    sequence: int,
    base_dts: int,
    next_dts: int | None,
    scratch: Scratch | None = None,
) -> bytes:
    """Fragment `sequence` (moof + mdat) from the chunk's plaintext by its full plan: one block copy
    per run of video packets' payloads, one join of ~300 slices; no per-packet Python."""
    data = np.frombuffer(plain, np.uint8)
    packets = data.size // mpegts.PACKET
    if data.size % mpegts.PACKET or not all(0 <= first < end <= packets for first, end in plan.rows):
        raise DamagedChunk("the chunk does not match its MP4 plan")
    rows = sum(end - first for first, end in plan.rows)
    room = len(plan.prefixes)
    both = (scratch or Scratch()).both_array(room + rows * mpegts.PAYLOAD)
    both[:room] = np.frombuffer(plan.prefixes, np.uint8)
    e = both[room:]
    _payload_rows(data.reshape(-1, mpegts.PACKET), plan.rows, e.reshape(rows, mpegts.PAYLOAD))
    if plan.patch_at:
        at = np.frombuffer(plan.patch_at, np.int64)
        if at.min() < 0 or at.max() + 4 > e.size:
            raise DamagedChunk("the chunk does not match its MP4 plan")
        e[at[:, None] + np.arange(4)] = np.frombuffer(plan.patch_bytes, np.uint8).reshape(-1, 4)
    view = memoryview(both)
    ends = iter(plan.pieces)
    parts = [view[a:b] for a, b in zip(ends, ends)]
    s = plan.samples
    head = fmp4.fragment_head(sequence, base_dts, len(s), s.trun(next_dts, plan.index.last_duration), int(s.size.sum()))
    frag = b"".join([head, *parts])
    if len(frag) != fmp4.fragment_size(plan.index):
        raise DamagedChunk("the chunk does not match its MP4 plan")
    return frag


def sealed_cache_key(manifest_chunks: list[dict]) -> str:
    """What names a sealed session's envelopes exactly (its signed manifest's chunk list): the key
    under which Mp4Export caches their layout facts."""
    return hashlib.sha256(json.dumps(manifest_chunks, sort_keys=True).encode()).hexdigest()


class Mp4Export:
    """A session's MP4 as a size, an ETag and any byte range of it.

    Each chunk's plan (layout facts, samples, copy plan) is sealed beside its envelope
    (`<session>/mp4/<seq>.plan`, under the session's data key, bound to the envelope's GCM tag);
    the processing run writes it as it stores the chunk, and a missing, damaged or stale plan is
    made again here from the chunk. A plan that fails to open cannot change a byte of the MP4."""

    # Layout facts of recent sealed sessions, keyed by what identifies their envelopes exactly (the
    # signed manifest's chunk list): a browser seeking sends one Range request per seek, and reading
    # every chunk's plan again costs ~0.1 ms per chunk (0.3 s for a 10-hour recording). An envelope
    # replaced behind the cache's back fails its tag check when its fragment is built.
    FACTS_CACHED = 16
    _facts: OrderedDict = OrderedDict()
    _facts_lock = threading.Lock()

    def __init__(
        self, store: ChunkStore, keyring: Keyring, session_id: str, seqs: list[int], cache_key: str | None = None
    ):
        self.store, self.sid, self.seqs = store, session_id, list(seqs)
        self.dek = store.data_key(session_id, keyring)
        if self.dek is None:
            raise DamagedChunk(f"session {session_id} has no data key (crypto-shredded)")
        key = (store.location, session_id, cache_key) if cache_key else None
        with self._facts_lock:
            facts = self._facts.get(key) if key else None
            if facts is not None:
                self._facts.move_to_end(key)
        if facts is None:
            workers = 1 if store.is_local else 16
            plans = in_parallel(lambda seq: self._plan(seq, full=False), self.seqs, workers)  # the facts: small each
            first = plans[0]
            facts = ([p.tag for p in plans], [p.index for p in plans], first.sps, first.pps, first.width, first.height)
            if key:
                with self._facts_lock:
                    self._facts[key] = facts
                    while len(self._facts) > self.FACTS_CACHED:
                        self._facts.popitem(last=False)
        self.tags, chunks, self.sps, self.pps, self.width, self.height = facts
        self.layout = fmp4.Layout.build(chunks, self.sps, self.pps, self.width, self.height)
        self.offsets = self.layout.offsets()
        self.size = self.layout.size
        self.etag = '"' + hashlib.sha256(b"".join(self.tags) + str(self.size).encode()).hexdigest()[:32] + '"'

    def _plan(self, seq: int, data: memoryview | None = None, *, full: bool = True) -> ChunkPlan:
        tag = (
            bytes(data[-envelope.TAG_LEN :])
            if data is not None
            else self.store.read_envelope_tail(self.sid, seq, envelope.TAG_LEN)
        )
        if tag is None:
            raise DamagedChunk(f"chunk {seq} is missing from the store")
        plan = read_chunk_plan(self.store, self.sid, seq, dek=self.dek, full=full)
        if plan is not None and plan.tag == tag:
            return plan
        data = self.store.read_envelope(self.sid, seq) if data is None else data
        if data is None:
            raise DamagedChunk(f"chunk {seq} is missing from the store")
        try:
            _, plain = envelope.open_envelope(data, dek=self.dek, session_id=uuid.UUID(self.sid), seq=seq)
        except envelope.EnvelopeError as exc:
            raise DamagedChunk(f"chunk {seq}: {exc}") from None
        return write_chunk_plan(self.store, self.sid, seq, plain, dek=self.dek, tag=bytes(data[-envelope.TAG_LEN :]))

    def header(self) -> bytes:
        return self.layout.header(self.sps, self.pps, self.width, self.height)

    def fragments(self, wanted: list[int]) -> Iterator[tuple[int, bytes]]:
        """(i, fragment i) for each wanted chunk, in order. (Two builders in threads were tried:
        no faster, the per-chunk Python holds the GIL.)"""
        scratch = Scratch(EnvelopeReader(self.store))
        if self.store.is_local:
            for i in wanted:
                yield i, self._fragment(i, scratch)
            return
        ahead = self.store.read_ahead(self.sid, [self.seqs[i] for i in wanted])  # a bucket: fetched ahead
        for i, (_, data) in zip(wanted, ahead):
            yield i, self._fragment(i, scratch, data)

    def _fragment(self, i: int, scratch: Scratch, fetched: bytes | None = None) -> bytes:
        """Fragment i: read, tag-checked against the layout's, decrypted, built."""
        seq = self.seqs[i]
        data = scratch.reader.read(self.sid, seq) if fetched is None else memoryview(fetched)
        if data is None:
            raise DamagedChunk(f"chunk {seq} is missing from the store")
        if bytes(data[-envelope.TAG_LEN :]) != self.tags[i]:
            raise DamagedChunk(f"chunk {seq} changed since this export began")
        plan = self._plan(seq, data)
        if plan.index != self.layout.chunks[i]:
            raise DamagedChunk(f"chunk {seq}: its MP4 plan changed since this export began")
        try:
            plain = scratch.plain_view(envelope.parse_header(data).raw_len)
            envelope.open_into(data, plain, dek=self.dek, session_id=uuid.UUID(self.sid), seq=seq)
        except envelope.EnvelopeError as exc:
            raise DamagedChunk(f"chunk {seq}: {exc}") from None
        return build_fragment(plan, plain, i + 1, plan.index.dts0 - self.layout.t0, self.layout.next_dts(i), scratch)

    def byte_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes start..end (inclusive), building only the fragments they touch."""
        if start < self.header_size:
            yield memoryview(self.header())[start : min(end + 1, self.header_size)]
        first = max(0, bisect.bisect_right(self.offsets, start) - 1)
        last = bisect.bisect_right(self.offsets, end)  # a seek touches one or two of thousands of fragments
        wanted = [i for i in range(first, last) if self.offsets[i] + fmp4.fragment_size(self.layout.chunks[i]) > start]
        for i, frag in self.fragments(wanted):
            off = self.offsets[i]
            yield memoryview(frag)[max(start, off) - off : min(end + 1, off + len(frag)) - off]

    @property
    def header_size(self) -> int:
        return self.layout.header_size


def coalesce(parts: Iterable[bytes | memoryview], at_least: int = 1 << 20) -> Iterator[bytes | memoryview]:
    """Join small pieces into writes of at least `at_least` bytes: each piece a streamed response
    sends costs a hop to a worker thread and a socket write, which dominates for small chunks.
    A large piece is never copied into a batch: the small ones before it go out first (an evidence
    bundle's 512-byte tar header before each chunk cost a copy of the whole chunk)."""
    batch, size = [], 0
    for part in parts:
        if len(part) >= at_least:
            if batch:
                yield b"".join(batch) if len(batch) > 1 else batch[0]
                batch, size = [], 0
            yield part
            continue
        batch.append(part)
        size += len(part)
        if size >= at_least:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch) if len(batch) > 1 else batch[0]
