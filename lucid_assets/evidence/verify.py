#!/usr/bin/env python3
"""Standalone verifier of a Lucid evidence bundle (`lucid-evidence/1`, docs/FORMAT.md §10).

    python3 verify.py BUNDLE.tar [--key-fingerprint HEX] [--json]

Needs Python 3.9+ and the `cryptography` package, nothing else (no Lucid code, no network). It
reads the tar, checks every signature, hash, proof and chain the bundle carries, re-derives
`recording.mp4` from the chunks and compares it byte for byte, prints a report and exits 0 when
everything verifies, 1 when something does not (each problem is named), 2 when the input is not a
usable bundle. VERIFY.md, shipped beside this file, says what each check means.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import struct
import sys
import tarfile
import traceback
from collections import Counter

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - the one dependency
    sys.exit("verify.py needs the `cryptography` package: python3 -m pip install cryptography")

BUNDLE_FORMAT = "lucid-evidence/1"
MANIFEST_FORMAT = "lucid-manifest/1"
CHECKPOINT_FORMAT = "lucid-checkpoint/1"
GENESIS = "0" * 64
HEX64 = re.compile("[0-9a-f]{64}")
TABLE_KEYS = {"format", "session_id", "scope", "key_id", "audit", "mp4_size"}
SCOPE_KEYS = {"first_seq", "last_seq", "chunk_count", "window_ms"}
CHECKS = ("bundle", "key", "manifest", "merkle", "proofs", "checkpoints", "audit", "chunks", "mp4")


class Unusable(Exception):
    """The input is not a bundle this verifier can read at all (exit 2)."""


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --- RFC 6962 / RFC 9162 Merkle trees ------------------------------------------------------------


def leaf_hash(d: bytes) -> bytes:
    return sha256(b"\x00" + d)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def merkle_root(leaves: list) -> bytes:
    """MTH(D[n]) over the leaves' hashes (RFC 6962 §2.1)."""
    if not leaves:
        return sha256(b"")
    return _root_of([leaf_hash(x) for x in leaves])


def _root_of(hashes: list) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k << 1 < len(hashes):
        k <<= 1
    return node_hash(_root_of(hashes[:k]), _root_of(hashes[k:]))


def root_from_inclusion(leaf: bytes, index: int, size: int, path: list):
    """RFC 9162 §2.1.3.2: the root the audit path leads to, or None when it cannot."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def consistent(size1: int, size2: int, proof: list, root1: bytes, root2: bytes) -> bool:
    """RFC 9162 §2.1.4.2: the tree of size1 and root1 is a prefix of the tree of size2 and root2."""
    if size1 < 1 or size2 < size1:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 & (size1 - 1) == 0:
        proof = [root1, *proof]
    if not proof:
        return False
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root1 and sr == root2


def hexes(values) -> list:
    """A list of SHA-256 digests in lowercase hex as bytes (ValueError when it is not one)."""
    if not isinstance(values, list) or not all(isinstance(v, str) and HEX64.fullmatch(v) for v in values):
        raise ValueError("not a list of SHA-256 digests in lowercase hex")
    return [bytes.fromhex(v) for v in values]


# --- the bundle ----------------------------------------------------------------------------------


class Bundle:
    """The tar's members by their name below `lucid-evidence-<session>/`."""

    def __init__(self, path: str):
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open while the checks read it
            infos = self.tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise Unusable(f"{path} is not a readable tar file ({exc})") from None
        tops = [i.name[: -len("/bundle.json")] for i in infos if re.fullmatch(r"[^/]+/bundle\.json", i.name)]
        if len(tops) != 1:
            raise Unusable(f"{path} has {'no' if not tops else 'more than one'} <top>/bundle.json: not a Lucid bundle")
        self.top = tops[0]
        self.members: dict = {}
        self.odd: list = []  # problems with the tar's structure itself
        for i in infos:
            if not i.name.startswith(self.top + "/"):
                self.odd.append(f"{i.name} is outside the bundle's directory {self.top}/")
            elif not i.isfile():
                self.odd.append(f"{i.name} is not a regular file")
            elif i.name[len(self.top) + 1 :] in self.members:
                self.odd.append(f"{i.name} appears more than once (an extracted copy would be the last one)")
            else:
                self.members[i.name[len(self.top) + 1 :]] = i

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str):
        info = self.members.get(name)
        if info is None:
            return None
        f = self.tar.extractfile(info)
        return f.read() if f is not None else None

    def open(self, name: str):
        info = self.members.get(name)
        return self.tar.extractfile(info) if info is not None else None

    def names(self, prefix: str) -> list:
        return sorted(n for n in self.members if n.startswith(prefix))

    def json(self, name: str):
        data = self.read(name)
        if data is None:
            return None, f"{name} is missing"
        try:
            return json.loads(data), None
        except (ValueError, UnicodeDecodeError):
            return None, f"{name} is not valid JSON (damaged)"


class Check:
    def __init__(self, name: str):
        self.name, self.problems, self.detail, self.skipped = name, [], "", False

    def problem(self, text: str) -> None:
        self.problems.append(text)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "ok": self.ok,
            "skipped": self.skipped,
            "detail": self.detail if self.ok else "; ".join(self.problems),
            "problems": list(self.problems),
        }


def signature_problem(doc, key, key_id: str):
    """Why a signed document does not verify with the bundle's key, or None when it does."""
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict) or not isinstance(doc.get("signature"), dict):
        return "is not a signed document"
    sig = doc["signature"]
    if sig.get("alg") != "Ed25519":
        return f"has an unsupported signature algorithm {sig.get('alg')!r}"
    if sig.get("key_id") != key_id:
        return f"names signing key {sig.get('key_id')}, not the bundle's key {key_id}"
    if key is None:
        return "cannot be checked: the bundle has no usable public key"
    try:
        value = base64.b64decode(sig["value"], validate=True)
        if base64.b64encode(value).decode() != sig["value"]:  # bits base64 ignores: still an edit
            return "has a signature value that is not in canonical base64 (edited)"
        key.verify(value, canonical_json(doc["body"]))
    except InvalidSignature:
        return "has a signature that does not match its body (altered, or signed by another key)"
    except (KeyError, TypeError, ValueError) as exc:
        return f"has a malformed signature ({exc})"
    return None


# --- H.264 in MPEG-TS -> MP4 samples (what lucid_assets/core/mpegts.py plans) -----------------------

PACKET = 188
STREAM_TYPE_H264 = 0x1B
NAL_IDR, NAL_SPS, NAL_PPS, NAL_AUD = 5, 7, 8, 9


class ChunkError(ValueError):
    """A chunk that is not H.264 in MPEG-TS as the recorder writes it."""


def _section(payload: bytes) -> bytes:
    if not payload:
        raise ChunkError("empty PSI packet")
    sec = payload[1 + payload[0] :]
    if len(sec) < 3:
        raise ChunkError("truncated PSI section")
    length = ((sec[1] & 0x0F) << 8) | sec[2]
    if len(sec) < 3 + length:
        raise ChunkError("PSI section spans packets")
    return sec[: 3 + length]


def _pmt_pid(pat: bytes) -> int:
    for i in range(8, len(pat) - 4, 4):
        if (pat[i] << 8) | pat[i + 1]:
            return ((pat[i + 2] & 0x1F) << 8) | pat[i + 3]
    raise ChunkError("the PAT lists no program")


def _video_pid(pmt: bytes) -> int:
    if len(pmt) < 16:
        raise ChunkError("truncated PMT")
    i = 12 + (((pmt[10] & 0x0F) << 8) | pmt[11])
    while i + 5 <= len(pmt) - 4:
        if pmt[i] == STREAM_TYPE_H264:
            return ((pmt[i + 1] & 0x1F) << 8) | pmt[i + 2]
        i += 5 + (((pmt[i + 3] & 0x0F) << 8) | pmt[i + 4])
    raise ChunkError("no H.264 video stream")


def _timestamp(b: bytes, i: int) -> int:
    return ((b[i] >> 1) & 0x07) << 30 | b[i + 1] << 22 | (b[i + 2] >> 1) << 15 | b[i + 3] << 7 | b[i + 4] >> 1


def video_pes(data: bytes) -> list:
    """The video stream's PES packets, each as the list of its packets' payload offsets."""
    n = len(data) // PACKET
    if not data or len(data) % PACKET:
        raise ChunkError(f"{len(data)} bytes is not a whole number of {PACKET}-byte TS packets")
    if data[0::PACKET].count(0x47) != n:
        raise ChunkError("a packet has no sync byte")
    pmt_pid = video_pid = None
    pes: list = []
    # every packet's header bytes at once: strided slices run in C, the loop only branches
    for k, b1, b2, b3, b4 in zip(range(n), data[1::PACKET], data[2::PACKET], data[3::PACKET], data[4::PACKET]):
        if not b3 & 0x10:
            continue
        start = 5 + b4 if b3 & 0x20 else 4
        if start > PACKET:
            raise ChunkError(f"packet {k} has an adaptation field longer than the packet")
        pid = ((b1 & 0x1F) << 8) | b2
        if pid == video_pid:
            if b1 & 0x40:
                pes.append([])
            if pes and start < PACKET:
                pes[-1].append(k * PACKET + start)
        elif pid == 0 and b1 & 0x40 and pmt_pid is None:
            pmt_pid = _pmt_pid(_section(data[k * PACKET + start : (k + 1) * PACKET]))
        elif pid == pmt_pid and b1 & 0x40 and video_pid is None:
            video_pid = _video_pid(_section(data[k * PACKET + start : (k + 1) * PACKET]))
    if video_pid is None:
        raise ChunkError("no PAT/PMT announcing an H.264 stream")
    return pes


def nal_units(es: bytes) -> list:
    """(start, end) of each NAL unit of an Annex-B stream: start codes and trailing zeros left out."""
    out = []
    i = es.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = es.find(b"\x00\x00\x01", start)
        end = len(es) if nxt < 0 else nxt
        while end > start and es[end - 1] == 0:
            end -= 1
        if end > start:
            out.append((start, end))
        i = nxt
    return out


class Chunk:
    """One chunk's MP4 samples: (dts, pts, key, size) each, their data, its first SPS and PPS."""

    def __init__(self, data: bytes):
        self.samples: list = []
        parts: list = []
        self.sps = self.pps = None
        pack = struct.Struct(">I").pack
        for offsets in video_pes(data):
            raw = b"".join([data[o : o - o % PACKET + PACKET] for o in offsets])
            if len(raw) < 9 or raw[:3] != b"\x00\x00\x01":
                raise ChunkError("a video PES packet does not start with a PES header")
            flags, hlen = raw[7] >> 6, raw[8]
            if not flags & 0x02:
                raise ChunkError("a video PES packet has no presentation time")
            if hlen < (10 if flags == 0x03 else 5) or len(raw) < 9 + hlen:
                raise ChunkError("a video PES header is shorter than its time stamps")
            pts = _timestamp(raw, 9)
            dts = _timestamp(raw, 14) if flags == 0x03 else pts
            es = raw[9 + hlen :]
            key, size = False, 0
            for s, e in nal_units(es):
                kind = es[s] & 0x1F
                if kind == NAL_AUD:
                    continue
                if kind == NAL_IDR:
                    key = True
                elif kind == NAL_SPS and self.sps is None:
                    self.sps = es[s:e]
                elif kind == NAL_PPS and self.pps is None:
                    self.pps = es[s:e]
                parts += (pack(e - s), es[s:e])
                size += 4 + e - s
            if size:
                self.samples.append((dts, pts, key, size))
        if not self.samples or self.sps is None or self.pps is None:
            raise ChunkError("no H.264 access units with parameter sets")
        self.data = b"".join(parts)
        deltas = Counter(b[0] - a[0] for a, b in zip(self.samples, self.samples[1:]) if b[0] > a[0])
        # the last sample lasts the chunk's most common frame time (lucid_assets/playback.py chunk_plan)
        self.last_duration = deltas.most_common(1)[0][0] if deltas else None
        self.dts0, self.dts_last = self.samples[0][0], self.samples[-1][0]
        self.pts_min = min(s[1] for s in self.samples)


class Bits:
    def __init__(self, data: bytes):
        self.v, self.n, self.pos = int.from_bytes(data, "big"), 8 * len(data), 0

    def u(self, k: int) -> int:
        if self.pos + k > self.n:
            raise ChunkError("the SPS ends early")
        self.pos += k
        return (self.v >> (self.n - self.pos)) & ((1 << k) - 1)

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ChunkError("the SPS has an invalid Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)


def _skip_scaling_lists(b: Bits, count: int) -> None:
    for i in range(count):
        if b.u(1):
            last = nxt = 8
            for _ in range(16 if i < 6 else 64):
                if nxt:
                    nxt = (last + b.se() + 256) % 256
                last = nxt or last


def sps_size(sps: bytes) -> tuple:
    """The picture's (width, height) from an H.264 SPS NAL unit, frame cropping applied
    (ITU-T H.264 §7.3.2.1.1, §7.4.2.1.1)."""
    b = Bits(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # seq_parameter_set_id
    chroma, separate = 1, 0
    if profile in HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            separate = b.u(1)
        b.ue(), b.ue(), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass
        if b.u(1):
            _skip_scaling_lists(b, 8 if chroma != 3 else 12)
    b.ue()  # log2_max_frame_num
    poc = b.ue()
    if poc == 0:
        b.ue()
    elif poc == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue(), b.u(1)  # max_num_ref_frames, gaps
    w_mbs, h_units = b.ue() + 1, b.ue() + 1
    frame_only = b.u(1)
    if not frame_only:
        b.u(1)
    b.u(1)  # direct_8x8_inference
    crop = (b.ue(), b.ue(), b.ue(), b.ue()) if b.u(1) else (0, 0, 0, 0)
    if separate or chroma == 0:
        cx, cy = 1, 2 - frame_only
    else:
        cx, cy = (1 if chroma == 3 else 2), (2 if chroma == 1 else 1) * (2 - frame_only)
    width = 16 * w_mbs - cx * (crop[0] + crop[1])
    height = 16 * h_units * (2 - frame_only) - cy * (crop[2] + crop[3])
    return width, height


# --- the fragmented MP4 (what lucid_assets/core/fmp4.py writes) -----------------------------------

TIMESCALE, MOVIE_TIMESCALE = 90000, 1000
KEY_FLAGS, NON_KEY_FLAGS = 0x02000000, 0x01010000
MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"mvex"}


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def avcc(sps: bytes, pps: bytes) -> bytes:
    body = bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + struct.pack(">H", len(sps)) + sps
    body += bytes([1]) + struct.pack(">H", len(pps)) + pps
    if sps[1] in (100, 110, 122, 144):
        body += bytes([0xFD, 0xF8, 0xF8, 0])
    return box(b"avcC", body)


def init_segment(sps: bytes, pps: bytes, width: int, height: int, duration: int) -> bytes:
    """ftyp + moov, `duration` in 90 kHz units."""
    movie = duration * MOVIE_TIMESCALE // TIMESCALE
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41")
    times = struct.pack(">IIIIIH10x", 0, 0, MOVIE_TIMESCALE, movie, 0x10000, 0x100)
    mvhd = full_box(b"mvhd", 0, 0, times, MATRIX, bytes(24), struct.pack(">I", 2))
    tkhd = full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">IIIII", 0, 0, 1, 0, movie),
        bytes(8),
        bytes(8),
        MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = full_box(b"mdhd", 1, 0, struct.pack(">QQIQHH", 0, 0, TIMESCALE, duration, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"Lucid video\x00")
    avc1 = box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),
        bytes(16),
        struct.pack(">HHIIIH", width, height, 0x00480000, 0x00480000, 0, 1),
        bytes([5]) + b"Lucid".ljust(31, b"\x00"),
        struct.pack(">Hh", 0x18, -1),
        avcc(sps, pps),
    )
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        full_box(b"stts", 0, 0, bytes(4)),
        full_box(b"stsc", 0, 0, bytes(4)),
        full_box(b"stsz", 0, 0, bytes(8)),
        full_box(b"stco", 0, 0, bytes(4)),
    )
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    mvex = box(
        b"mvex",
        full_box(b"mehd", 0, 0, struct.pack(">I", movie)),
        full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)),
    )
    return ftyp + box(b"moov", mvhd, trak, mvex)


def sidx(earliest_pts: int, references: list) -> bytes:
    body = struct.pack(">IIQQHH", 1, TIMESCALE, earliest_pts, 0, 0, len(references))
    body += b"".join(struct.pack(">III", size & 0x7FFFFFFF, dur, 0x90000000) for size, dur in references)
    return full_box(b"sidx", 1, 0, body)


def moof_size(samples: int) -> int:
    return 88 + 16 * samples


def fragment_head(sequence: int, base_dts: int, samples: list, durations: list) -> bytes:
    """moof + mdat header of one fragment."""
    n = len(samples)
    entries = b"".join(
        struct.pack(">IIIi", d, size, KEY_FLAGS if key else NON_KEY_FLAGS, pts - dts)
        for (dts, pts, key, size), d in zip(samples, durations)
    )
    trun = full_box(b"trun", 1, 0x000F01, struct.pack(">Ii", n, moof_size(n) + 8), entries)
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))
    traf = box(b"traf", tfhd, full_box(b"tfdt", 1, 0, struct.pack(">Q", base_dts)), trun)
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), traf)
    return moof + struct.pack(">I4s", 8 + sum(s[3] for s in samples), b"mdat")


def first_difference(a: bytes, b: bytes) -> int:
    """The first index where a and b differ (len of the shorter when one is a prefix of the other)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 64:  # halve by comparing slices (C speed) until the region is small
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return next(i for i in range(lo, hi) if a[i] != b[i])


def box_path(buf: bytes, at: int) -> str:
    """The boxes (ftyp, moov/trak/tkhd ...) that byte `at` of an MP4 header lies in."""
    path, i, end = [], 0, len(buf)
    while i + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, i)
        if size < 8 or i + size > end:
            break
        if i <= at < i + size:
            path.append(kind.decode("latin-1"))
            if kind not in CONTAINERS:
                break
            i, end = i + 8, i + size
        else:
            i += size
    return "/".join(path) or "?"


class Mp4Comparison:
    """recording.mp4 against the MP4 re-derived from the chunks, streamed: one chunk in memory.

    Fragment i starts where the header (whose size does not depend on the durations) and the
    fragments before it end, so each chunk's sample data is compared as soon as the chunk is read;
    its moof waits for the next chunk (its last sample lasts until that chunk's first decode time),
    and the header (durations, sizes) is compared last."""

    def __init__(self, f, size: int, count: int):
        self.f, self.size, self.count = f, size, count
        self.diffs: list = []  # (position in the file, what differs)
        self.index: list = []  # per chunk: (dts0, dts_last, pts_min, fragment size)
        self.pending = None  # (seq, i, samples, moof as found, last_duration)
        self.offset = 0
        self.first = None  # the first chunk: its SPS, PPS and picture size make the header
        self.notes: list = []

    def _read(self, at: int, n: int) -> bytes:
        if at >= self.size:
            return b""
        self.f.seek(at)
        return self.f.read(min(n, self.size - at))

    def add(self, seq: int, chunk: Chunk) -> None:
        i = len(self.index)
        if i == 0:
            width, height = sps_size(chunk.sps)
            self.first = (chunk, width, height)
            self.offset = len(init_segment(chunk.sps, chunk.pps, width, height, 0)) + 40 + 12 * self.count
        n = len(chunk.samples)
        head, total = moof_size(n), moof_size(n) + 8 + len(chunk.data)
        found = self._read(self.offset, total)
        mdat = struct.pack(">I4s", 8 + len(chunk.data), b"mdat")
        if found[head : head + 8] != mdat[: max(0, len(found) - head)]:
            self.diffs.append((self.offset + head, f"recording.mp4 fragment for chunk {seq} differs (its mdat size)"))
        got = found[head + 8 :]
        if got != chunk.data[: len(got)]:
            k = first_difference(got, chunk.data)
            j, at = 0, 0
            while at + chunk.samples[j][3] <= k:
                at += chunk.samples[j][3]
                j += 1
            self.diffs.append(
                (
                    self.offset + head + 8 + k,
                    f"recording.mp4 fragment for chunk {seq} differs from the chunk (sample {j} data)",
                )
            )
        self._close_pending(chunk.dts0)
        self.pending = (seq, i, self.offset, chunk.samples, found[:head], chunk.last_duration)
        self.index.append((chunk.dts0, chunk.dts_last, chunk.pts_min, total))
        self.offset += total

    def _close_pending(self, next_dts) -> None:
        """Compare the previous chunk's moof, now that its last sample's duration is known."""
        if self.pending is None:
            return
        seq, i, offset, samples, found, last = self.pending
        if next_dts is None and last is None:  # one frame and no chunk after it: as the MP4 says
            last = struct.unpack_from(">I", found, len(found) - 16)[0] if len(found) >= 104 else 3000
            self.notes.append(f"chunk {seq} has one frame: its duration is taken from recording.mp4")
            self.pending = (*self.pending[:5], last)
        durations = [b[0] - a[0] for a, b in zip(samples, samples[1:])]
        durations.append(next_dts - samples[-1][0] if next_dts is not None else last)
        try:
            want = fragment_head(i + 1, samples[0][0] - self.index[0][0], samples, durations)[:-8]
        except struct.error:
            self.diffs.append((offset, f"chunk {seq}'s decode times do not make an MP4 fragment (out of order)"))
            return
        if found != want[: len(found)]:
            k = first_difference(found, want)
            if k >= 88:
                what = f"sample {(k - 88) // 16} " + ("time", "data", "flags", "time")[(k - 88) % 16 // 4]
            else:
                what = {20: "sequence number", 60: "decode time", 80: "sample count"}.get(k - k % 4, "box structure")
                what = "decode time" if 60 <= k < 68 else what
            self.diffs.append((offset + k, f"recording.mp4 fragment for chunk {seq} differs from the chunk ({what})"))

    def finish(self) -> None:
        if not self.index:
            return
        self._close_pending(None)
        last_duration = self.pending[5]
        chunk, width, height = self.first
        t0 = self.index[0][0]
        durations = [b[0] - a[0] for a, b in zip(self.index, self.index[1:])]
        durations.append(self.index[-1][1] + last_duration - self.index[-1][0])
        header = init_segment(chunk.sps, chunk.pps, width, height, sum(durations))
        header += sidx(self.index[0][2] - t0, [(c[3], d) for c, d in zip(self.index, durations)])
        found = self._read(0, len(header))
        if found != header[: len(found)]:  # a cut-short file is named as such below
            k = first_difference(found, header)
            where = box_path(header, k) if k < len(header) else "end"
            self.diffs.append((k, f"recording.mp4 header differs (first at byte {k}, in {where})"))
        if self.size > self.offset:
            self.diffs.append((self.offset, f"recording.mp4 has {self.size - self.offset} extra bytes after its end"))
        elif self.size < self.offset:
            self.diffs.append(
                (
                    self.size,
                    f"recording.mp4 is shorter than the chunks make it ({self.offset - self.size} bytes missing)",
                )
            )

    def problem(self):
        if not self.diffs:
            return None
        self.diffs.sort()
        more = len(self.diffs) - 1
        return self.diffs[0][1] + (f" (and {more} more differing region{'s' * (more > 1)})" if more else "")


# --- the checks ----------------------------------------------------------------------------------

KNOWN = re.compile(
    r"VERIFY\.md|verify\.py|bundle\.json|signing-key\.pem|manifest\.json|audit\.jsonl|recording\.mp4"
    r"|(manifests|checkpoints|proofs|chunks)/.*"
)


class Verifier:
    # long: reads the two documents everything else is checked against, then runs the checks in order
    def __init__(self, bundle: Bundle, pinned=None):
        self.b, self.pinned = bundle, pinned
        self.checks = {name: Check(name) for name in CHECKS}
        table, why = bundle.json("bundle.json")
        if not isinstance(table, dict) or table.get("format") != BUNDLE_FORMAT:
            raise Unusable(why or f"bundle.json is not a {BUNDLE_FORMAT} table of contents")
        self.table = table
        doc, why = bundle.json("manifest.json")
        if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
            raise Unusable(why or "manifest.json is not a signed manifest")
        self.doc, self.body = doc, doc["body"]
        self.sid = str(table.get("session_id"))
        entries = self.body.get("chunks") if isinstance(self.body.get("chunks"), list) else []
        self.entries = [e for e in entries if isinstance(e, dict)]
        self.by_seq = {e.get("seq"): e for e in self.entries if is_int(e.get("seq"))}
        self.n = len(self.entries)
        self.leaves = []
        for e in self.entries:
            try:
                self.leaves.append(bytes.fromhex(e.get("envelope_sha256", "")))
            except (TypeError, ValueError):
                self.leaves.append(b"")
        self.root = merkle_root(self.leaves)
        scope = table.get("scope") if isinstance(table.get("scope"), dict) else {}
        first, last = scope.get("first_seq"), scope.get("last_seq")
        self.scope_ok = is_int(first) and is_int(last) and 0 <= first <= last < self.n
        self.first, self.last = (first, last) if self.scope_ok else (0, self.n - 1)
        w = scope.get("window_ms")  # shown only when it is a range (the bundle check names anything else)
        self.window = w if isinstance(w, list) and len(w) == 2 and all(map(is_int, w)) else None
        self.partial = self.scope_ok and (self.first, self.last) != (0, self.n - 1)
        self.key = None
        self.key_id = self.fingerprint = "?"

    def run(self) -> None:
        self.check_key()
        self.check_bundle()
        self.check_manifest()
        self.check_merkle()
        self.check_proofs()
        self.check_checkpoints()
        self.check_audit()
        self.check_chunks_and_mp4()

    @property
    def scope(self) -> range:
        return range(self.first, self.last + 1)

    def signed(self):
        """Every signed document of the bundle: (what, document)."""
        out = [("the manifest", self.doc)]
        for name in self.b.names("manifests/") + self.b.names("checkpoints/"):
            doc, _ = self.b.json(name)
            out.append((name, doc))
        return out

    # long: the key check names each way a key can fail to be the one the signatures and the auditor expect
    def check_key(self) -> None:
        c = self.checks["key"]
        pem = self.b.read("signing-key.pem")
        if pem is None:
            c.problem("signing-key.pem is missing: no signature can be checked")
            return
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            c.problem(f"signing-key.pem is not a public key ({exc})")
            return
        if not isinstance(key, Ed25519PublicKey):
            c.problem(f"signing-key.pem is a {type(key).__name__}, not an Ed25519 key")
            return
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key, self.fingerprint = key, hashlib.sha256(raw).hexdigest()
        self.key_id = self.fingerprint[:16]
        named = (self.doc.get("signature") or {}).get("key_id") if isinstance(self.doc.get("signature"), dict) else None
        if named != self.key_id:
            c.problem(f"key replaced: the manifest names key {named}, the bundle carries key {self.key_id}")
        others = sorted(
            {
                f"{what} names key {(d.get('signature') or {}).get('key_id')}"
                for what, d in self.signed()[1:]
                if isinstance(d, dict)
                and isinstance(d.get("signature"), dict)
                and d["signature"].get("key_id") != self.key_id
            }
        )
        if others:
            c.problem(f"key replaced: the bundle carries key {self.key_id}, but " + ", ".join(others))
        if self.pinned is not None and self.pinned != self.fingerprint:
            c.problem(
                f"the bundle's key (fingerprint {self.fingerprint}) is not the key you gave with --key-fingerprint "
                f"({self.pinned}): its signatures prove nothing about the platform you trust"
            )
        pinned = (
            "it matches --key-fingerprint"
            if self.pinned
            else "compare its fingerprint with the one the operator publishes (GET /v1/keys/signing)"
        )
        c.detail = f"Ed25519 key {self.key_id} signs the manifest and every checkpoint; {pinned}"

    def check_bundle(self) -> None:
        c, t = self.checks["bundle"], self.table
        for odd in self.b.odd:
            c.problem(odd)
        if self.b.top != f"lucid-evidence-{self.sid}":
            c.problem(f"the bundle's directory {self.b.top}/ does not name its session {self.sid}")
        if t.get("key_id") != self.key_id:
            c.problem(f"bundle.json names key {t.get('key_id')}, signing-key.pem is key {self.key_id}")
        if "key_fingerprint" in t and t["key_fingerprint"] != self.fingerprint:
            c.problem(f"bundle.json's key fingerprint {t['key_fingerprint']} is not signing-key.pem's")
        if t.get("audit") != self.body.get("audit"):
            c.problem("bundle.json's audit summary is not the one the manifest signs")
        scope = t.get("scope") if isinstance(t.get("scope"), dict) else {}
        if not self.scope_ok:
            c.problem(f"bundle.json's scope {scope} is not a run of the session's {self.n} chunks")
        if scope.get("chunk_count") != self.n:
            c.problem(f"bundle.json says {scope.get('chunk_count')} chunks, the manifest signs {self.n}")
        info = self.b.members.get("recording.mp4")
        if info is not None and t.get("mp4_size") != info.size:
            c.problem(f"bundle.json says recording.mp4 has {t.get('mp4_size')} bytes, it has {info.size}")
        for name in sorted(self.b.members):
            if not KNOWN.fullmatch(name):
                c.problem(f"{name} is not a file a {BUNDLE_FORMAT} bundle has")
        self._table_form(c, t, scope)
        c.detail = f"{len(self.b.members)} files, table of contents consistent with the manifest"

    def _table_form(self, c: Check, t: dict, scope: dict) -> None:
        """bundle.json is unsigned: it must at least be exactly the table the format defines."""
        if self.b.read("bundle.json") != canonical_json(t):
            c.problem("bundle.json is not in canonical JSON form (edited)")
        if not TABLE_KEYS <= set(t) <= TABLE_KEYS | {"key_fingerprint"} or set(scope) != SCOPE_KEYS:
            c.problem("bundle.json does not have the fields of a lucid-evidence/1 table of contents (edited)")
        w = scope.get("window_ms")
        if w is not None and not (isinstance(w, list) and len(w) == 2 and all(map(is_int, w)) and 0 <= w[0] < w[1]):
            c.problem(f"bundle.json's window_ms {w!r} is not a [from, to) range of milliseconds")

    def check_manifest(self) -> None:
        c, body = self.checks["manifest"], self.body
        why = signature_problem(self.doc, self.key, self.key_id)
        if why:
            c.problem(f"manifest.json {why}")
        if body.get("format") != MANIFEST_FORMAT:
            c.problem(f"manifest.json is {body.get('format')!r}, not {MANIFEST_FORMAT}")
        named = (body.get("session") or {}).get("id") if isinstance(body.get("session"), dict) else None
        if named != self.sid:
            c.problem(f"the manifest is for session {named}, the bundle for {self.sid}")
        version = body.get("version")
        if not is_int(version) or version < 1:
            c.problem(f"the manifest's version {version!r} is not a positive integer")
            return
        older = {}
        for name in self.b.names("manifests/"):
            m = re.fullmatch(r"manifests/v([1-9][0-9]*)\.json", name)
            if not m or int(m.group(1)) >= version:
                c.problem(f"{name} is not an earlier version of the manifest (the latest is v{version})")
            else:
                older[int(m.group(1))] = name
        for v in range(1, version):
            name = older.get(v)
            if name is None:
                c.problem(f"manifest version {v} is missing (manifests/v{v}.json; versions 1..{version} were signed)")
                continue
            doc, why = self.b.json(name)
            why = why or signature_problem(doc, self.key, self.key_id)
            if why:
                c.problem(f"{name} {why}" if not why.startswith(name) else why)
                continue
            b = doc["body"]
            named = b["session"].get("id") if isinstance(b.get("session"), dict) else None
            if named != self.sid or b.get("version") != v:
                c.problem(f"{name} is not version {v} of this session's manifest (moved or replaced)")
        c.detail = (
            f"{MANIFEST_FORMAT} version {version} for session {self.sid}, signed"
            + (f"; versions 1..{version - 1} present and signed" if version > 1 else "")
            + f"; sealed at {body.get('sealed_at')}"
        )

    def check_merkle(self) -> None:
        c, body = self.checks["merkle"], self.body
        seqs = [e.get("seq") for e in self.entries]
        if seqs != list(range(self.n)):
            c.problem("the manifest's chunks are not numbered 0, 1, 2 ... in order")
        if body.get("chunk_count") != self.n:
            c.problem(f"the manifest lists {self.n} chunks but says chunk_count {body.get('chunk_count')}")
        if any(len(x) != 32 for x in self.leaves):
            c.problem("an envelope_sha256 of the manifest is not a SHA-256 digest")
        mk = body.get("merkle") if isinstance(body.get("merkle"), dict) else {}
        if mk.get("alg") != "RFC6962-SHA256":
            c.problem(f"merkle.alg is {mk.get('alg')!r}, not RFC6962-SHA256")
        if mk.get("size") != self.n:
            c.problem(f"merkle.size is {mk.get('size')!r}, the manifest lists {self.n} chunks")
        if mk.get("root") != self.root.hex():
            c.problem(
                f"the Merkle root over the listed chunks is {self.root.hex()}, the manifest signs {mk.get('root')}"
            )
        c.detail = f"root {self.root.hex()} over the {self.n} chunks' envelope hashes is the signed root"

    def check_proofs(self) -> None:
        c = self.checks["proofs"]
        want = {f"proofs/{seq:08d}.json": seq for seq in self.scope}
        for name in self.b.names("proofs/"):
            if name not in want:
                c.problem(f"{name} is extra: not a proof for a chunk of the bundle's scope")
        for name, seq in want.items():
            doc, why = self.b.json(name)
            if why:
                c.problem(f"the inclusion proof of chunk {seq}: {why}")
                continue
            entry = self.by_seq.get(seq) or {}
            try:
                path = hexes(doc.get("path"))
                leaf = bytes.fromhex(doc.get("leaf"))
            except (TypeError, ValueError, AttributeError):
                c.problem(f"{name} is malformed")
                continue
            if doc.get("seq") != seq:
                c.problem(f"{name} is the proof of chunk {doc.get('seq')} (moved)")
            elif doc.get("leaf") != entry.get("envelope_sha256"):
                c.problem(f"the proof of chunk {seq} is for another leaf than the manifest's envelope_sha256")
            elif doc.get("tree_size") != self.n or doc.get("root") != self.root.hex():
                c.problem(f"the proof of chunk {seq} is for another tree than the manifest's")
            elif root_from_inclusion(leaf, seq, self.n, path) != self.root:
                c.problem(f"the inclusion proof of chunk {seq} does not lead to the signed root")
        c.detail = f"chunks {self.first}..{self.last}: each inclusion proof leads to the signed root"

    # long: one walk of the signed chain (core/checkpoint.py verify_linked), each link checked where followed
    def check_checkpoints(self) -> None:
        c = self.checks["checkpoints"]
        bodies = {}
        for name in self.b.names("checkpoints/"):
            doc, why = self.b.json(name)
            why = why or signature_problem(doc, self.key, self.key_id)
            if why:
                c.problem(f"{name} {why}" if not why.startswith(name) else why)
                continue
            body = doc["body"]
            size = body.get("tree_size")
            if body.get("format") != CHECKPOINT_FORMAT or body.get("session_id") != self.sid:
                c.problem(f"{name} is not a checkpoint of this session")
            elif not is_int(size) or not 0 < size <= self.n:
                c.problem(f"{name}: tree size {size!r} is outside the sealed tree of {self.n}")
            elif name != f"checkpoints/{size:08d}.json":
                c.problem(f"{name} holds checkpoint {size} under another name (renamed or moved)")
            else:
                bodies[name] = body
        link, who, child_size, child_root = self.body.get("checkpoint"), "the manifest", self.n, self.root.hex()
        chain = []
        while link is not None:
            size = link.get("tree_size") if isinstance(link, dict) else None
            limit = child_size - 1 if chain else child_size
            if not is_int(size) or not 0 < size <= limit:
                c.problem(f"{who} links checkpoint {size!r}, which cannot precede a tree of {child_size}")
                break
            name = f"checkpoints/{size:08d}.json"
            body = bodies.get(name)
            if body is None:
                if not self.b.has(name):
                    c.problem(f"checkpoint {size}, which {who} links, is missing")
                break
            if body.get("root") != link.get("root"):
                c.problem(f"checkpoint {size} is not the one {who} links (its root differs)")
                break
            try:
                ok = consistent(
                    size,
                    child_size,
                    hexes(link.get("consistency")),
                    bytes.fromhex(link["root"]),
                    bytes.fromhex(child_root),
                )
            except (TypeError, ValueError, KeyError):
                ok = False
            if not ok:
                c.problem(f"{who}'s consistency proof from checkpoint {size} does not verify")
            if merkle_root(self.leaves[:size]).hex() != body["root"]:
                c.problem(f"checkpoint {size}: the first {size} sealed chunks no longer match its root (rewritten)")
            chain.append(name)
            link, who, child_size, child_root = body.get("previous"), f"checkpoint {size}", size, body["root"]
        for name in sorted(set(bodies) - set(chain)):
            c.problem(f"{name} is not part of the chain the manifest signs")
        c.detail = (
            f"{len(chain)} checkpoint{'s' * (len(chain) > 1)} chained from the manifest back to the first, "
            "consistent with the sealed tree"
            if chain
            else "the manifest links no checkpoint and the bundle has none"
        )

    # long: the audit chain, each way a row can break it named as its own problem
    def check_audit(self) -> None:
        c = self.checks["audit"]
        signed = self.body.get("audit") if isinstance(self.body.get("audit"), dict) else {}
        count, head = signed.get("entries"), signed.get("head")
        data = self.b.read("audit.jsonl")
        if data is None:
            c.problem("audit.jsonl is missing")
            return
        rows = []
        lines = data.split(b"\n")  # one row per line, each ending in a newline (no other line breaks)
        if lines[-1]:
            c.problem("audit.jsonl does not end with a newline (cut short or appended to)")
        for k, line in enumerate(lines[:-1]):
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict) or not isinstance(row.get("entry"), dict):
                    raise ValueError
                rows.append(row)
            except ValueError:  # also UnicodeDecodeError
                c.problem(f"line {k + 1} of audit.jsonl is not an audit row (damaged)")
                return
        prev = GENESIS
        for k, row in enumerate(rows):
            entry = row["entry"]
            if entry.get("idx", k) != k:
                c.problem(f"audit line {k + 1} holds entry {entry.get('idx')} (entries removed or reordered)")
            try:
                digest = hashlib.sha256(bytes.fromhex(row.get("prev_hash")) + canonical_json(entry)).hexdigest()
            except (TypeError, ValueError):
                digest = None
            if row.get("prev_hash") != prev:
                c.problem(f"audit entry {k} does not follow entry {k - 1} (entries removed or reordered)")
            if digest != row.get("hash"):
                c.problem(f"audit entry {k} was altered (its hash does not match its content)")
            if entry.get("session_id") != self.sid:
                c.problem(f"audit entry {k} is about session {entry.get('session_id')}")
            prev = row.get("hash")
        if not is_int(count):
            c.problem("the manifest signs no audit summary")
        elif count != len(rows):
            c.problem(f"audit.jsonl has {len(rows)} entries, the manifest signs {count}")
        elif (rows[-1].get("hash") if rows else GENESIS) != head and count:
            c.problem(f"the last audit entry's hash is not the head {head} the manifest signs")
        c.detail = f"{len(rows)} entries chained from the first to the head the manifest signs"

    # long: one pass over the chunks: each is hashed and, once verified, turned into the MP4 it must give
    def check_chunks_and_mp4(self) -> None:
        c, m = self.checks["chunks"], self.checks["mp4"]
        by_raw = {}
        for e in self.entries:
            by_raw.setdefault(e.get("raw_sha256"), e.get("seq"))
        info = self.b.members.get("recording.mp4")
        mp4 = Mp4Comparison(self.b.open("recording.mp4"), info.size, len(self.scope)) if info is not None else None
        if mp4 is None:
            m.problem("recording.mp4 is missing")
        stopped = None
        for seq in self.scope:
            name, entry = f"chunks/{seq:08d}.ts", self.by_seq.get(seq) or {}
            data = self.b.read(name)
            if data is None:
                c.problem(f"chunk {seq} is missing ({name} is not in the bundle)")
                stopped = stopped or f"chunk {seq} is missing"
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.get("raw_sha256"):
                other = by_raw.get(digest)
                if other is not None and other != seq:
                    c.problem(f"chunk file {seq} holds chunk {other} (swapped or moved)")
                else:
                    c.problem(
                        f"chunk {seq} was altered: {len(data)} bytes with SHA-256 {digest[:16]}…, "
                        f"the manifest signs {entry.get('raw_size')} bytes with {str(entry.get('raw_sha256'))[:16]}…"
                    )
                stopped = stopped or f"chunk {seq} did not verify"
                continue
            if len(data) != entry.get("raw_size"):
                c.problem(f"chunk {seq} has {len(data)} bytes, the manifest signs {entry.get('raw_size')}")
            if mp4 is not None and stopped is None:
                try:
                    mp4.add(seq, Chunk(data))
                except (ChunkError, IndexError, ValueError, struct.error) as exc:
                    m.problem(f"chunk {seq} does not give MP4 samples: {exc}")
                    stopped = f"chunk {seq} is not H.264 in MPEG-TS"
        want = {f"chunks/{seq:08d}.ts" for seq in self.scope}
        for name in self.b.names("chunks/"):
            if name not in want:
                c.problem(f"{name} is extra: not a chunk of the bundle's scope {self.first}..{self.last}")
        c.detail = f"chunks {self.first}..{self.last} present, each of the signed size and SHA-256"
        if mp4 is None or m.problems:
            return
        if stopped:
            m.skipped, m.detail = True, f"not compared: {stopped}"
            return
        mp4.finish()
        why = mp4.problem()
        if why:
            m.problem(why)
        m.detail = (
            f"recording.mp4 ({info.size} bytes) is exactly the MP4 the verified chunks give (header, sample data, "
            "times, key flags)" + "".join(f"; {note}" for note in mp4.notes)
        )

    @property
    def problems(self) -> list:
        return [f"{c.name}: {p}" for c in self.checks.values() for p in c.problems]

    def as_dict(self) -> dict:
        session = self.body.get("session") if isinstance(self.body.get("session"), dict) else {}
        return {
            "format": "lucid-verify/1",
            "bundle": self.b.top,
            "session_id": self.sid,
            "session_name": session.get("name"),
            "scope": {
                "partial": self.partial,
                "first_seq": self.first,
                "last_seq": self.last,
                "chunk_count": self.n,
                "window_ms": self.window,
            },
            "key": {"key_id": self.key_id, "fingerprint": self.fingerprint, "pinned": self.pinned is not None},
            "checks": [c.as_dict() for c in self.checks.values()],
            "problems": self.problems,
            "verdict": "FAILED" if self.problems else "VERIFIED",
        }


def render(v: Verifier) -> str:
    d = v.as_dict()
    s = d["scope"]
    if s["partial"]:
        scope = f"partial: chunks {s['first_seq']}..{s['last_seq']} of {s['chunk_count']}"
        if s["window_ms"]:
            scope += f" (a share window, ms {s['window_ms'][0]}..{s['window_ms'][1]} of the recording)"
    else:
        scope = f"whole session: chunks 0..{s['chunk_count'] - 1} ({s['chunk_count']} chunks)"
    if not v.pinned:
        pin = "NOT pinned: compare this fingerprint with the one the operator publishes"
    elif v.pinned == v.fingerprint:
        pin = "matches --key-fingerprint"
    else:
        pin = "does NOT match --key-fingerprint"
    lines = [
        f"Lucid evidence bundle {d['bundle']}",
        f"session      {d['session_id']}" + (f"  ({d['session_name']})" if d["session_name"] else ""),
        f"scope        {scope}",
        f"signing key  {d['key']['key_id']}",
        f"fingerprint  {d['key']['fingerprint']}  ({pin})",
        "",
    ]
    for c in v.checks.values():
        if c.skipped:
            lines.append(f"SKIPPED  {c.name:<12} {c.detail}")
        elif c.ok:
            lines.append(f"OK       {c.name:<12} {c.detail}")
        for p in c.problems:
            lines.append(f"PROBLEM  {c.name:<12} {p}")
    n = len(d["problems"])
    lines += ["", "VERIFIED: every check passed" if not n else f"FAILED: {n} problem{'s' * (n > 1)}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Verify a Lucid evidence bundle (lucid-evidence/1).")
    ap.add_argument("bundle", help="the .tar file")
    ap.add_argument("--key-fingerprint", help="SHA-256 of the raw Ed25519 key you trust (64 hex digits)")
    ap.add_argument("--json", action="store_true", help="print a machine-readable report")
    args = ap.parse_args(argv)
    pinned = None
    if args.key_fingerprint is not None:
        pinned = re.sub(r"[\s:]", "", args.key_fingerprint).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", pinned):
            print("--key-fingerprint must be 64 hex digits (SHA-256 of the raw public key)", file=sys.stderr)
            return 2
    try:
        v = Verifier(Bundle(args.bundle), pinned)
        v.run()
    except Exception as exc:  # whatever the input: a verdict and exit 2 (with the traceback for a bug report)
        if not isinstance(exc, Unusable):
            traceback.print_exc()
            exc = Unusable(f"the bundle could not be read ({type(exc).__name__}: {exc})")
        if args.json:
            print(json.dumps({"format": "lucid-verify/1", "verdict": "UNUSABLE", "error": str(exc)}))
        else:
            print(f"UNUSABLE: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(v.as_dict(), indent=2, ensure_ascii=False) if args.json else render(v))
    return 1 if v.problems else 0


if __name__ == "__main__":
    sys.exit(main())
