"""A deterministic fragmented MP4 (ISO BMFF) for H.264 recordings: one fragment per chunk, every
box's size known from a small per-chunk index, so a whole session's MP4 has a size and byte offsets
before any fragment is built, and any byte range can be served by building only the fragments it
touches (HTTP Range, browser seeking).

Layout: ftyp | moov (avc1 + avcC, mvex with mehd = total duration) | sidx (one reference per
fragment) | moof+mdat per chunk. Timescale 90 kHz (MPEG-TS's own). Samples are the chunk's H.264
access units with Annex-B start codes replaced by 4-byte lengths and access unit delimiters left
out (nothing else changes: no re-encode, parameter sets stay in-band as in the source).

Pure: no PyAV, no I/O. core/mpegts.py turns a chunk into `Sample`s and the bytes of its mdat."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

TIMESCALE = 90_000
MOVIE_TIMESCALE = 1000
KEY_FLAGS = 0x02000000  # sample_depends_on = 2 (an I frame)
NON_KEY_FLAGS = 0x01010000  # depends on others, not a sync sample


class Sample(NamedTuple):  # a tuple: thousands are made per second while exporting
    dts: int  # 90 kHz, absolute (as in the source)
    pts: int
    key: bool
    size: int  # of the length-prefixed data


@dataclass(frozen=True)
class ChunkIndex:
    """What the layout needs to know of one chunk without its bytes."""

    samples: int
    payload: int  # mdat payload bytes
    dts0: int  # first decode time
    dts_last: int
    pts_min: int
    last_duration: int  # of the last sample when no chunk follows

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> ChunkIndex:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})


# --- boxes -------------------------------------------------------------------------------------


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def avcc(sps: bytes, pps: bytes) -> bytes:
    body = bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + struct.pack(">H", len(sps)) + sps
    body += bytes([1]) + struct.pack(">H", len(pps)) + pps
    if sps[1] in (100, 110, 122, 144):  # high profiles: chroma 4:2:0, 8-bit, no SPS extensions
        body += bytes([0xFC | 1, 0xF8, 0xF8, 0])
    return box(b"avcC", body)


# long: the init segment's box tree, written top to bottom as ISO/IEC 14496-12 nests it
def init_segment(sps: bytes, pps: bytes, width: int, height: int, duration: int) -> bytes:
    """ftyp + moov; `duration` in 90 kHz units."""
    movie_dur = duration * MOVIE_TIMESCALE // TIMESCALE
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, movie_dur),
        struct.pack(">IH10x", 0x00010000, 0x0100),
        MATRIX,
        bytes(24),
        struct.pack(">I", 2),
    )
    tkhd = full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">IIIII", 0, 0, 1, 0, movie_dur),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),
        MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    # version 1: 64-bit times (90 kHz overflows 32 bits after 13 hours)
    mdhd = full_box(b"mdhd", 1, 0, struct.pack(">QQIQHH", 0, 0, TIMESCALE, duration, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I", 0), b"vide", bytes(12), b"Lucid video\x00")
    name = b"Lucid".ljust(32, b"\x00")
    avc1 = box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),
        bytes(16),
        struct.pack(">HH", width, height),
        struct.pack(">III", 0x00480000, 0x00480000, 0),
        struct.pack(">H", 1),
        bytes([5]) + name[:31],
        struct.pack(">Hh", 0x18, -1),
        avcc(sps, pps),
    )
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    minf = box(
        b"minf",
        full_box(b"vmhd", 0, 1, bytes(8)),
        box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1))),
        stbl,
    )
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    mvex = box(
        b"mvex",
        full_box(b"mehd", 0, 0, struct.pack(">I", movie_dur)),
        full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)),
    )
    return ftyp + box(b"moov", mvhd, trak, mvex)


def sidx(earliest_pts: int, references: list[tuple[int, int]]) -> bytes:
    """One reference per fragment: (size in bytes, duration in 90 kHz units), each starting with a
    sync sample."""
    body = struct.pack(">IIQQHH", 1, TIMESCALE, earliest_pts, 0, 0, len(references))
    body += b"".join(struct.pack(">III", size & 0x7FFFFFFF, dur, 0x90000000) for size, dur in references)
    return full_box(b"sidx", 1, 0, body)


def sidx_size(fragments: int) -> int:
    return 40 + 12 * fragments


def moof_size(samples: int) -> int:
    return 88 + 16 * samples


def fragment_size(c: ChunkIndex) -> int:
    return moof_size(c.samples) + 8 + c.payload


def trun_entries(samples: list[Sample], durations: list[int]) -> bytes:
    """The samples' 16-byte entries in a fragment's trun: duration, size, flags, composition
    offset (the reference form; the exports build the same bytes with numpy, playback.py)."""
    return b"".join(
        struct.pack(">IIIi", d, s.size, KEY_FLAGS if s.key else NON_KEY_FLAGS, s.pts - s.dts)
        for s, d in zip(samples, durations)
    )


def fragment_head(sequence: int, base_dts: int, samples: int, entries: bytes, payload: int) -> bytes:
    """moof + the mdat header of one fragment of `samples` samples whose trun `entries` (16 bytes
    each, as trun_entries makes them) are given; its `payload` bytes are the samples' data in order."""
    if len(entries) != 16 * samples:
        raise ValueError(f"{len(entries)} bytes of trun entries for {samples} samples")
    trun = full_box(b"trun", 1, 0x000F01, struct.pack(">Ii", samples, moof_size(samples) + 8), entries)
    traf = box(
        b"traf",
        full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1)),
        full_box(b"tfdt", 1, 0, struct.pack(">Q", base_dts)),
        trun,
    )
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), traf)
    assert len(moof) == moof_size(samples)
    return moof + struct.pack(">I4s", 8 + payload, b"mdat")


@dataclass(frozen=True)
class Layout:
    """Where everything is in the session's MP4, from the chunk indexes alone."""

    chunks: tuple[ChunkIndex, ...]
    header_size: int  # ftyp + moov + sidx

    @property
    def t0(self) -> int:
        return self.chunks[0].dts0

    def durations(self) -> list[int]:
        out = []
        for i, c in enumerate(self.chunks):
            end = self.chunks[i + 1].dts0 if i + 1 < len(self.chunks) else c.dts_last + c.last_duration
            out.append(end - c.dts0)
        return out

    @property
    def duration(self) -> int:
        return sum(self.durations())

    def offsets(self) -> list[int]:
        out, at = [], self.header_size
        for c in self.chunks:
            out.append(at)
            at += fragment_size(c)
        return out

    @property
    def size(self) -> int:
        return self.header_size + sum(fragment_size(c) for c in self.chunks)

    def next_dts(self, i: int) -> int | None:
        return self.chunks[i + 1].dts0 if i + 1 < len(self.chunks) else None

    def header(self, sps: bytes, pps: bytes, width: int, height: int) -> bytes:
        refs = [(fragment_size(c), d) for c, d in zip(self.chunks, self.durations())]
        out = init_segment(sps, pps, width, height, self.duration) + sidx(self.chunks[0].pts_min - self.t0, refs)
        if len(out) != self.header_size:
            raise ValueError("header size differs from the layout's (parameter sets changed?)")
        return out

    @classmethod
    def build(cls, chunks: list[ChunkIndex], sps: bytes, pps: bytes, width: int, height: int) -> Layout:
        probe = init_segment(sps, pps, width, height, 0)
        return cls(tuple(chunks), len(probe) + sidx_size(len(chunks)))
