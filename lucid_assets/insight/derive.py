"""One chunk's activity, thumbnails and screen text, in one decode pass.

The chunk's frames are decoded once. Every SAMPLE_MS a sample is taken: a quarter-size grey frame.
- Activity: the fraction of the screen's blocks (32x32 px) that changed since the last sample.
- Thumbnails: every THUMB_MS of recording time, a THUMB_W px JPEG.
- Screen text: the blocks that differ from what was last read (the *reference*) are read again, once
  they have settled (unchanged for a sample) or waited MAX_WAIT_MS. A small change (typing, a
  dialog) is read as horizontal bands the width of the screen (a word is never cut at a crop's
  edge); a change over FULL_FRACTION of the screen (scrolling, a new window) is read as a whole
  frame, at most every FULL_EVERY_MS while it never settles. A line is recorded when it *appears*:
  a line whose text was on screen before (scrolled, redrawn) is not recorded again.
What carries from one chunk to the next (the last sample, the reference, the text on screen, the
timers) is the `State`, sealed beside the chunk's records."""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field

import av
import numpy as np
import zstandard

from . import ocr

SAMPLE_MS = 250
THUMB_MS = 5000
THUMB_W = 160
SCALE = 4  # samples are a quarter of the frame's size
BLOCK = 8  # sample pixels per block side: 32 px of the frame
PIX_DIFF = 24  # a sample pixel changed by more than this (0-255 grey) counts ...
PIX_MIN = 2  # ... and a block with at least this many such pixels changed (codec noise is below both)
SCENE = 0.5  # a sample that changed this fraction of the screen is a scene change
PROFILE_COLS = 32  # text tracking compares pixel rows as this many column-group sums ...
ROW_DIFF = 320  # ... a group that moved by more than this (grey levels summed) is a change
BAND_PAD = 3  # px read above and below the lines a band holds
LINE_REACH = 64  # px a band grows up or down to take in the whole line a changed row belongs to
MIN_BLOCKS = 3  # fewer changed blocks than this since the last read is not worth reading (yet)
FULL_FRACTION = 0.35
MAX_WAIT_MS = 5000
FLUSH_MS = 1000  # a change pending this long when a chunk ends is read then (the recording may end there)
FULL_EVERY_MS = 30000

ACTIVITY_VERSION = f"activity/1/{SAMPLE_MS}ms/{BLOCK * SCALE}px/{PIX_DIFF}/{PIX_MIN}"
THUMBS_VERSION = f"thumbnails/1/{THUMB_W}px/{THUMB_MS}ms"
_TEXT_KNOBS = (PROFILE_COLS, ROW_DIFF, BAND_PAD, LINE_REACH, MIN_BLOCKS)
_TEXT_KNOBS += (FULL_FRACTION, MAX_WAIT_MS, FULL_EVERY_MS, FLUSH_MS)
TEXT_VERSION = "/".join(["text/1", ocr.MODEL_ID, *map(str, _TEXT_KNOBS)])
STATE_VERSION = "state/2"
_ZSTD = zstandard.ZstdCompressor(level=3)


class NotDecodable(Exception):
    """The chunk is not video PyAV can decode (a pushed chunk in a format we do not read)."""


@dataclass
class ScreenLine:
    text: str
    box: tuple[int, int, int, int]


@dataclass
class State:
    """What the next chunk's derivation starts from."""

    prev: np.ndarray | None = None  # the last sample
    ref: np.ndarray | None = None  # the sample the screen text was last brought up to date from
    profile: np.ndarray | None = None  # ... and its row profile (full resolution)
    lines: list[ScreenLine] = field(default_factory=list)  # the text on screen
    pending_since: int | None = None
    last_full: int = -(10**9)
    next_thumb: int = 0
    next_sample: int = 0

    ARRAYS = ("prev", "ref", "profile")

    def to_record(self) -> tuple[dict, list[bytes]]:
        arrays = {n: a for n in self.ARRAYS if (a := getattr(self, n)) is not None}
        head = {
            "v": STATE_VERSION,
            "lines": [[ln.text, *ln.box] for ln in self.lines],
            "pending_since": self.pending_since,
            "last_full": self.last_full,
            "next_thumb": self.next_thumb,
            "next_sample": self.next_sample,
            "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in arrays.items()],
        }
        return head, [_ZSTD.compress(a.tobytes()) for a in arrays.values()]

    @classmethod
    def from_record(cls, head: dict, blobs: list[bytes]) -> State:
        if head.get("v") != STATE_VERSION:
            return cls()
        arrays = {
            n: np.frombuffer(zstandard.ZstdDecompressor().decompress(b), np.dtype(dt)).reshape(shape).copy()
            for (n, dt, shape), b in zip(head["arrays"], blobs, strict=True)
            if n in cls.ARRAYS
        }
        return cls(
            lines=[ScreenLine(r[0], tuple(r[1:5])) for r in head["lines"]],
            pending_since=head["pending_since"],
            last_full=head["last_full"],
            next_thumb=head["next_thumb"],
            next_sample=head["next_sample"],
            **arrays,
        )


@dataclass
class Derived:
    """One chunk's products (times in ms from the session's first frame) and what they cost."""

    start: int = 0
    end: int = 0
    width: int = 0
    height: int = 0
    samples: list[tuple[int, float]] = field(default_factory=list)
    thumbs: list[tuple[int, bytes]] = field(default_factory=list)
    lines: list[dict] = field(default_factory=list)
    reads: Counter = field(default_factory=Counter)  # "full" / "band" OCR calls
    cpu: Counter = field(default_factory=Counter)  # seconds per product (decode is shared)
    state: State = field(default_factory=State)
    error: str | None = None


def first_pts_ms(plain: bytes | memoryview) -> int:
    """The earliest presentation time in a chunk, from its packets (no decoding): the session's
    time zero when it is the first chunk."""
    try:
        with av.open(io.BytesIO(plain), format="mpegts") as c:
            stream = c.streams.video[0]
            pts = [p.pts for _, p in zip(range(8), c.demux(stream), strict=False) if p.pts is not None]
            return int(min(pts) * stream.time_base * 1000)
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise NotDecodable(f"not MPEG-TS video: {exc}") from None


def changed_blocks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which BLOCKxBLOCK blocks differ between two samples of the same shape."""
    h, w = a.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)) > PIX_DIFF
    bh, bw = -(-h // BLOCK), -(-w // BLOCK)
    padded = np.zeros((bh * BLOCK, bw * BLOCK), bool)
    padded[:h, :w] = diff
    return padded.reshape(bh, BLOCK, bw, BLOCK).sum(axis=(1, 3)) >= PIX_MIN


def profile(gray: np.ndarray) -> np.ndarray:
    """Each pixel row as PROFILE_COLS column-group sums: what the text tracking compares."""
    h, w = gray.shape
    cols = w // PROFILE_COLS * PROFILE_COLS
    return gray[:, :cols].reshape(h, PROFILE_COLS, -1).sum(axis=2, dtype=np.int32)


def changed_rows(cur: np.ndarray, ref: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Which rows of `cur` show something not in `ref`, allowing `ref` to have scrolled up by dy rows
    (the dy that leaves fewest rows changed; 0 when scrolling explains nothing)."""
    if ref is None or ref.shape != cur.shape:
        return np.ones(cur.shape[0], bool), 0
    differ = lambda a, b: (np.abs(a - b) > ROW_DIFF).any(axis=1)
    rows, best = differ(cur, ref), 0
    if rows.mean() < 0.2:
        return rows, 0
    h = cur.shape[0]
    for dy in range(1, h - h // 8):
        shifted = np.ones(h, bool)
        shifted[: h - dy] = differ(cur[: h - dy], ref[dy:])
        if shifted.sum() < rows.sum():
            rows, best = shifted, dy
    return rows, best


def _grow(blocks: np.ndarray | None) -> np.ndarray | None:
    """The blocks and their eight neighbours."""
    if blocks is None:
        return None
    out = blocks.copy()
    out[1:] |= blocks[:-1]
    out[:-1] |= blocks[1:]
    grown = out.copy()
    out[:, 1:] |= grown[:, :-1]
    out[:, :-1] |= grown[:, 1:]
    return out


def row_bands(rows: np.ndarray, ink: np.ndarray) -> list[tuple[int, int]]:
    """Changed rows as bands to read: each grown to the whole text lines it touches (to the blank
    rows around it, at most LINE_REACH px each way) plus BAND_PAD px, merged when they meet. A band
    never takes a sliver of the next line, which the detector would read as a broken word."""
    height = len(rows)
    out: list[tuple[int, int]] = []
    for y in np.flatnonzero(rows & ink):
        y = int(y)
        if out and y < out[-1][1]:
            continue
        lo, hi = y, y + 1
        while lo > 0 and ink[lo - 1] and y - lo < LINE_REACH:
            lo -= 1
        while hi < height and ink[hi] and hi - y < LINE_REACH:
            hi += 1
        lo, hi = max(0, lo - BAND_PAD), min(height, hi + BAND_PAD)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class Deriver:
    """Runs the derivation of consecutive chunks of one session."""

    def __init__(self, reader: ocr.Reader | None, *, thumbs: bool = True):
        self.reader, self.want_thumbs = reader, thumbs

    # long: one decode loop feeds the three products; splitting it would re-decode or pass a dozen locals
    def chunk(self, plain: bytes | memoryview, t0: int, state: State) -> Derived:
        out = Derived(state=state)
        t_dec = time.process_time()
        try:
            container = av.open(io.BytesIO(plain), format="mpegts")
        except av.FFmpegError as exc:
            out.error = f"not decodable: {exc}"
            return out
        with container:
            if not container.streams.video:
                out.error = "no video stream"
                return out
            stream = container.streams.video[0]
            first, last = True, None
            try:
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = int(frame.pts * stream.time_base * 1000) - t0
                    if first:
                        out.start, out.width, out.height, first = t, frame.width, frame.height, False
                    out.end = t
                    if t < state.next_sample:
                        continue
                    state.next_sample = t - t % SAMPLE_MS + SAMPLE_MS
                    small = frame.reformat(
                        width=max(1, frame.width // SCALE),
                        height=max(1, frame.height // SCALE),
                        format="gray",
                        interpolation="AREA",
                    ).to_ndarray()
                    out.cpu["decode"] += time.process_time() - t_dec
                    self._sample(out, state, frame, small, t)
                    last = (frame, small, t)
                    t_dec = time.process_time()
            except av.FFmpegError as exc:  # a damaged tail: keep what decoded
                out.error = f"decoding stopped: {exc}"
        out.cpu["decode"] += time.process_time() - t_dec
        if (
            self.reader is not None
            and last
            and state.pending_since is not None
            and last[2] - state.pending_since >= FLUSH_MS
        ):
            # a change that stayed to the chunk's end is read now: the recording may end with it
            c = time.process_time()
            self._text(out, state, *last[:2], None, last[2], force=True)
            out.cpu["text"] += time.process_time() - c
        if out.samples:
            out.end = max(out.end, out.samples[-1][0])
        return out

    def _sample(self, out: Derived, state: State, frame: av.VideoFrame, small: np.ndarray, t: int) -> None:
        c = time.process_time()
        if state.prev is not None and state.prev.shape != small.shape:
            state.prev = state.ref = state.profile = None  # the recording changed size: start over
        motion = changed_blocks(small, state.prev) if state.prev is not None else None
        # measured whether or not the activity record is written: the text check reads active time from it
        out.samples.append((t, round(float(motion.mean()), 4) if motion is not None else 0.0))
        out.cpu["activity"] += time.process_time() - c
        if self.want_thumbs and t >= state.next_thumb:
            c = time.process_time()
            out.thumbs.append((t, _thumb(frame)))
            state.next_thumb = t - t % THUMB_MS + THUMB_MS
            out.cpu["thumbnails"] += time.process_time() - c
        if self.reader is not None:
            c = time.process_time()
            self._text(out, state, frame, small, motion, t)
            out.cpu["text"] += time.process_time() - c
        state.prev = small

    def _text(self, out: Derived, state: State, frame, small: np.ndarray, motion, t: int, force=False) -> None:
        if state.ref is not None and state.ref.shape == small.shape:
            todo = changed_blocks(small, state.ref)
            if not todo.any():
                state.pending_since = None
                return
        else:
            todo = np.ones_like(motion) if motion is not None else None
        if state.pending_since is None:
            state.pending_since = t
        if not force and todo is not None and todo.sum() < MIN_BLOCKS and t - state.pending_since < MAX_WAIT_MS:
            return  # a small change is read once it stayed MAX_WAIT_MS (a blinking cursor never does)
        # settled: nothing moved since the last sample in or next to what is to be read (a cursor
        # blinking elsewhere does not hold the read back)
        settled = force or (motion is not None and not (motion & _grow(todo)).any())
        if not (settled or t - state.pending_since >= MAX_WAIT_MS or state.profile is None):
            return
        prof = profile(frame.reformat(format="gray").to_ndarray())
        rows, dy = changed_rows(prof, state.profile)
        ink = (prof.max(axis=1) - prof.min(axis=1)) > ROW_DIFF  # a uniform row holds no text
        bands = row_bands(rows, ink)
        if sum(hi - lo for lo, hi in bands) >= FULL_FRACTION * frame.height and not settled:
            if state.profile is not None and t - state.last_full < FULL_EVERY_MS:
                return  # a large change still moving (fast scrolling): read it when it settles, or at this pace
            state.last_full = t
        if dy:  # scrolled: what was on screen moved up by dy; what left the top is gone
            state.lines = [
                ScreenLine(ln.text, (ln.box[0], ln.box[1] - dy, ln.box[2], ln.box[3]))
                for ln in state.lines
                if ln.box[1] + ln.box[3] - dy > 0
            ]
        cleared = rows & ~ink  # rows that went blank: their lines are gone
        mid = lambda ln: min(len(cleared) - 1, max(0, ln.box[1] + ln.box[3] // 2))
        state.lines = [ln for ln in state.lines if not cleared[mid(ln)]]
        rgb = frame.to_ndarray(format="rgb24") if bands else None
        for y0, y1 in bands:
            lines = self.reader.read(rgb, region=(0, y0, frame.width, y1 - y0))
            self._replace(out, state, lines, (y0, y1), t)
            out.reads["band"] += 1
            out.reads["rows"] += y1 - y0
            out.reads["lines_read"] += len(lines)
        state.ref, state.profile, state.pending_since = small, prof, None

    @staticmethod
    def _replace(out: Derived, state: State, lines: list[ocr.Line], band: tuple[int, int], t: int) -> None:
        """Lines read from a band replace the lines there; those whose text was not there before are
        recorded as appearing at t."""

        def inside(b: tuple[int, int, int, int]) -> bool:
            return band[0] <= b[1] + b[3] / 2 < band[1]

        gone = Counter(ln.text for ln in state.lines if inside(ln.box))
        state.lines = [ln for ln in state.lines if not inside(ln.box)]
        for line in lines:
            state.lines.append(ScreenLine(line.text, tuple(line.box)))
            if gone[line.text] > 0:
                gone[line.text] -= 1
                continue
            out.lines.append(
                {
                    "t": t,
                    "text": line.text,
                    "box": list(line.box),
                    "conf": round(line.conf, 3),
                    "words": [[w.text, *w.box, round(w.conf, 3)] for w in line.words],
                }
            )


def _thumb(frame: av.VideoFrame) -> bytes:
    h = max(2, round(THUMB_W * frame.height / frame.width / 2) * 2)
    img = frame.reformat(width=THUMB_W, height=h, format="rgb24", interpolation="AREA").to_image()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70)
    return buf.getvalue()
