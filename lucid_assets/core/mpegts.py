"""MPEG-TS chunk -> H.264 access units, and the plan that turns the chunk's bytes into MP4 sample
data with a handful of bulk copies (no per-packet work when exporting).

A chunk is 188-byte TS packets; its H.264 elementary stream is the payload of the video PID's
packets, cut into PES packets (one access unit each), each NAL unit behind an Annex-B start code.
MP4 wants each NAL unit behind its 4-byte length instead. The plan:

1. `rows`: the video packets, in order. Copying bytes 4..188 of each (one strided gather) gives
   the "payload matrix" E: the elementary stream plus, where a packet had an adaptation field,
   that field's bytes (which no NAL unit uses, so they are skipped below).
2. `patches`: most NAL units have four bytes of E just before them that nothing keeps (a 4-byte
   start code, a PES header): their length is written there, so the unit and its length are one
   run of E, and so are consecutive units. A unit without such room (a 3-byte start code right
   after the previous unit) gets its length from `prefixes` instead.
3. `pieces`: (start, end) ranges of the buffer  prefixes || E  whose join is the mdat payload:
   ~2 per access unit (a split where a packet's adaptation field interrupts a unit).

Samples (decode/presentation times from the PES headers, keyframe = has an IDR slice, size) give
the moof. Pure: no I/O, no PyAV; playback.py does the copies.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from dataclasses import dataclass, field

PACKET = 188
PAYLOAD = PACKET - 4
SYNC = 0x47
STREAM_TYPE_H264 = 0x1B
NAL_IDR, NAL_SPS, NAL_PPS, NAL_AUD = 5, 7, 8, 9


class TsError(ValueError):
    """Not an MPEG-TS chunk with an H.264 stream that this plan can describe."""


@dataclass
class AccessUnit:
    dts: int
    pts: int
    key: bool = False
    size: int = 0  # length-prefixed bytes
    nals: list[int] = field(default_factory=list)  # NAL unit lengths


@dataclass
class Plan:
    rows: list[tuple[int, int]]  # [first, end) runs of video packet numbers
    units: list[AccessUnit]
    prefixes: bytes  # 4-byte lengths of the NAL units with no room before them in E
    patch_at: list[int]  # positions in E where a NAL unit's 4-byte length is written
    patch_bytes: bytes  # those lengths, 4 bytes each
    pieces: list[tuple[int, int]]  # ranges of prefixes || E (patched)
    sps: bytes
    pps: bytes

    @property
    def payload(self) -> int:
        return sum(u.size for u in self.units)


def _pts(b: bytes | memoryview, i: int) -> int:
    return ((b[i] >> 1) & 0x07) << 30 | b[i + 1] << 22 | (b[i + 2] >> 1) << 15 | b[i + 3] << 7 | b[i + 4] >> 1


def _section(payload: bytes) -> bytes:
    """A PSI section from the payload of a packet that starts one (pointer field first)."""
    if not payload:
        raise TsError("empty PSI packet")
    start = 1 + payload[0]
    sec = payload[start:]
    if len(sec) < 3:
        raise TsError("truncated PSI section")
    length = ((sec[1] & 0x0F) << 8) | sec[2]
    if len(sec) < 3 + length:
        raise TsError("PSI section spans packets (not supported)")
    return sec[: 3 + length]


def _pmt_pid(pat: bytes) -> int:
    for i in range(8, len(pat) - 4, 4):
        program = (pat[i] << 8) | pat[i + 1]
        if program != 0:
            return ((pat[i + 2] & 0x1F) << 8) | pat[i + 3]
    raise TsError("the PAT lists no program")


def _video_pid(pmt: bytes) -> int:
    if len(pmt) < 16:
        raise TsError("truncated PMT")
    info_len = ((pmt[10] & 0x0F) << 8) | pmt[11]
    i = 12 + info_len
    while i + 5 <= len(pmt) - 4:
        stype, pid = pmt[i], ((pmt[i + 1] & 0x1F) << 8) | pmt[i + 2]
        if stype == STREAM_TYPE_H264:
            return pid
        i += 5 + (((pmt[i + 3] & 0x0F) << 8) | pmt[i + 4])
    raise TsError("the recording has no H.264 video stream")


def _nal_bounds(es: bytes) -> list[tuple[int, int]]:
    """(start, end) of each NAL unit's bytes in an Annex-B stream: start codes removed, trailing
    zero bytes dropped (as the MP4 sample data wants them)."""
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


# long: one pass over the packets in one frame: the hot path of plan making (bench/export.py)
def plan(data: bytes | memoryview) -> Plan:
    """The chunk's access units and its MP4 copy plan (see the module's doc)."""
    data = bytes(data)
    if not data or len(data) % PACKET:
        raise TsError(f"{len(data)} bytes is not a whole number of {PACKET}-byte TS packets")
    n = len(data) // PACKET
    if data[0::PACKET].count(SYNC) != n:
        k = next(k for k, b in enumerate(data[0::PACKET]) if b != SYNC)
        raise TsError(f"packet {k} has no sync byte (not a {PACKET}-byte MPEG-TS stream)")
    pmt_pid = video_pid = None
    # per video packet with a payload: (packet number, where its payload starts in the packet, starts a PES)
    video: list[tuple[int, int, bool]] = []
    rows: list[tuple[int, int]] = []
    # the header bytes of every packet at once (extended slices run in C, not per packet in Python)
    for k, b1, b2, b3, b4 in zip(range(n), data[1::PACKET], data[2::PACKET], data[3::PACKET], data[4::PACKET]):
        if not b3 & 0x10:
            continue  # adaptation field only
        start = 5 + b4 if b3 & 0x20 else 4
        if start > PACKET:
            raise TsError(f"packet {k} has an adaptation field longer than the packet")
        pid = ((b1 & 0x1F) << 8) | b2
        if pid == video_pid:
            video.append((k, start, bool(b1 & 0x40)))
            if rows and rows[-1][1] == k:
                rows[-1] = (rows[-1][0], k + 1)
            else:
                rows.append((k, k + 1))
        elif pid == 0 and b1 & 0x40 and pmt_pid is None:
            pmt_pid = _pmt_pid(_section(data[k * PACKET + start : (k + 1) * PACKET]))
        elif pid == pmt_pid and b1 & 0x40 and video_pid is None:
            video_pid = _video_pid(_section(data[k * PACKET + start : (k + 1) * PACKET]))
    if video_pid is None:
        raise TsError("no PAT/PMT announcing an H.264 stream before its packets")
    # cut into PES packets: each a list of (offset in E, length) payload ranges
    pes: list[list[tuple[int, int]]] = []
    for row, (_, start, pusi) in enumerate(video):
        if pusi:
            pes.append([])
        if pes and start < PACKET:
            pes[-1].append((row * PAYLOAD + start - 4, PACKET - start))
    units: list[AccessUnit] = []
    nal_ranges: list[list[tuple[int, int]]] = []  # per NAL unit: ranges of E
    sps = pps = None
    for ranges in pes:
        # the PES's bytes, in one piece for parsing (plan time only)
        raw = b"".join(
            [
                data[at : at + ln]
                for at, ln in ((video[o // PAYLOAD][0] * PACKET + 4 + o % PAYLOAD, ln) for o, ln in ranges)
            ]
        )
        if len(raw) < 9 or raw[:3] != b"\x00\x00\x01":
            raise TsError("a video PES packet does not start with a PES header")
        flags, hlen = raw[7] >> 6, raw[8]
        if flags & 0x02 == 0:
            raise TsError("a video PES packet has no presentation time")
        if hlen < (10 if flags == 0x03 else 5) or len(raw) < 9 + hlen:
            raise TsError("a video PES header is shorter than its time stamps")
        pts = _pts(raw, 9)
        dts = _pts(raw, 14) if flags == 0x03 else pts
        au = AccessUnit(dts=dts, pts=pts)
        skip = 9 + hlen
        cum = list(itertools.accumulate((ln for _, ln in ranges), initial=0))
        for s, e in _nal_bounds(raw[skip:]):
            kind = raw[skip + s] & 0x1F
            if kind == NAL_AUD:
                continue  # an access unit delimiter says nothing an MP4 sample needs: left out
            if kind == NAL_IDR:
                au.key = True
            elif kind == NAL_SPS and sps is None:
                sps = raw[skip + s : skip + e]
            elif kind == NAL_PPS and pps is None:
                pps = raw[skip + s : skip + e]
            au.nals.append(e - s)
            au.size += 4 + e - s
            nal_ranges.append(_map(ranges, cum, skip + s, skip + e))
        if au.nals:
            units.append(au)
    if not units or sps is None or pps is None:
        raise TsError("chunk has no H.264 access units with parameter sets")
    lengths = [n for u in units for n in u.nals]
    room_for = []  # per NAL unit: does E have 4 unused bytes right before it?
    kept_to = 0  # E is used up to here
    for ranges in nal_ranges:
        room_for.append(ranges[0][0] - 4 >= kept_to)
        kept_to = ranges[-1][1]
    prefixes = struct.pack(f">{room_for.count(False)}I", *(n for n, r in zip(lengths, room_for) if not r))
    patched = [(ranges[0][0] - 4, n) for ranges, n, r in zip(nal_ranges, lengths, room_for) if r]
    base, pieces, k = len(prefixes), [], 0
    for ranges, room in zip(nal_ranges, room_for):
        if room:
            pieces.append((base + ranges[0][0] - 4, base + ranges[0][0]))
        else:
            pieces.append((4 * k, 4 * k + 4))
            k += 1
        pieces.extend((base + a, base + b) for a, b in ranges)
    return Plan(
        rows,
        units,
        prefixes,
        [at for at, _ in patched],
        struct.pack(f">{len(patched)}I", *(n for _, n in patched)),
        _merge(pieces),
        sps,
        pps,
    )


def _map(ranges: list[tuple[int, int]], cum: list[int], s: int, e: int) -> list[tuple[int, int]]:
    """Bytes s..e of a PES (counted over its payload ranges; cum = their running starts) as
    ranges of E."""
    out = []
    i = bisect.bisect_right(cum, s) - 1
    while i < len(ranges) and cum[i] < e:
        off, ln = ranges[i]
        lo, hi = max(s, cum[i]), min(e, cum[i] + ln)
        if lo < hi:
            out.append((off + lo - cum[i], off + hi - cum[i]))
        i += 1
    return out


def _merge(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in pieces:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def gather_reference(data: bytes | memoryview, p: Plan) -> bytes:
    """The mdat payload by the plan, the slow obvious way (tests)."""
    data = bytes(data)
    e = bytearray()
    for first, end in p.rows:
        for k in range(first, end):
            e += data[k * PACKET + 4 : (k + 1) * PACKET]
    for j, at in enumerate(p.patch_at):
        e[at : at + 4] = p.patch_bytes[4 * j : 4 * j + 4]
    buf = p.prefixes + bytes(e)
    return b"".join(buf[a:b] for a, b in p.pieces)


@dataclass
class Salvage:
    """How much of a segment cut short (a recorder killed mid-write) is whole: `size` bytes, which
    hold `units` complete video PES packets (access units); `cut` bytes after them are dropped."""

    size: int
    units: int
    cut: int


# long: one pass over the packets: PSI, the video PES starts and their declared lengths
def salvage(data: bytes | memoryview) -> Salvage:
    """The longest prefix of a partial MPEG-TS segment that ends after a complete access unit.

    The bytes are cut to whole 188-byte packets (up to the first packet without a sync byte), then
    before the first video PES that is not known to be complete. A PES is complete when another one
    starts after it (a muxer writes them in order), or when its declared PES_packet_length is
    reached (the recorder's muxer declares it: `omit_video_pes_length=0`); the last PES of an
    unbounded length (0, e.g. an IDR frame over 64 KiB) cannot be told apart from a torn one and is
    dropped. A segment with no complete access unit (or no PAT/PMT) salvages to 0 bytes."""
    data = bytes(data)
    n = len(data) // PACKET
    syncs = data[0 : n * PACKET : PACKET]
    if syncs.count(SYNC) != n:
        n = next(k for k, b in enumerate(syncs) if b != SYNC)
    pmt_pid = video_pid = None
    starts: list[int] = []  # packet number of each video PES start
    need = got = 0  # the last PES: declared length (0: unbounded) and bytes seen
    for k in range(n):
        b1, b2, b3 = data[k * PACKET + 1], data[k * PACKET + 2], data[k * PACKET + 3]
        if not b3 & 0x10:
            continue
        start = 5 + data[k * PACKET + 4] if b3 & 0x20 else 4
        if start >= PACKET:
            continue
        payload = data[k * PACKET + start : (k + 1) * PACKET]
        pid = ((b1 & 0x1F) << 8) | b2
        try:
            if pid == 0 and b1 & 0x40 and pmt_pid is None:
                pmt_pid = _pmt_pid(_section(payload))
                continue
            if pid == pmt_pid and b1 & 0x40 and video_pid is None:
                video_pid = _video_pid(_section(payload))
                continue
        except TsError:
            break
        if pid != video_pid or video_pid is None:
            continue
        if b1 & 0x40:
            if len(payload) < 6 or payload[:3] != b"\x00\x00\x01":
                break  # not a PES header: nothing from here on is trusted
            starts.append(k)
            need, got = (payload[4] << 8 | payload[5]) + 6 if payload[4] | payload[5] else 0, 0
        if starts:
            got += len(payload)
    if not starts:
        return Salvage(0, 0, len(data))
    last_whole = bool(need) and got >= need
    units = len(starts) if last_whole else len(starts) - 1
    size = n * PACKET if last_whole else starts[-1] * PACKET
    if units == 0:
        size = 0
    return Salvage(size, units, len(data) - size)
