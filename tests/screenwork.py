"""Synthetic screen work with known ground truth: a terminal where someone types commands, output
scrolls past and nothing happens for a while, rendered with Pillow and encoded into real segments by
the recorder's own encoder setup and writer (tests/helpers.record_segments does the same for lavfi
patterns). Used by the insight tests and bench/insight.py."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from PIL import Image, ImageDraw, ImageFont

from services.recorder.capture import SegmentWriter, open_encoder

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
THEMES = {"dark": ((24, 26, 30), (220, 220, 215)), "light": ((250, 250, 250), (20, 20, 20))}
_WORDS = """error warning connection refused timeout server database customer invoice payment deploy rollback
kernel module service restart failed success config production staging backup snapshot cluster node
replica primary request response header token session account admin reset firewall gateway
certificate expired renewal queue worker scheduler pipeline storage volume mount network latency"""
WORDS = tuple(_WORDS.split())


@dataclass
class Step:
    kind: str  # "type" (text typed at cps), "print" (lines at once), "scroll" (lines at lps), "idle"
    text: str = ""
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Truth:
    """When each line was complete on screen (seconds from the first frame)."""

    lines: list[tuple[float, str]] = field(default_factory=list)
    active: list[tuple[float, float]] = field(default_factory=list)  # spans where the screen changed
    duration: float = 0.0


def words_line(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        k = rng.random()
        if k < 0.75:
            out.append(rng.choice(WORDS))
        elif k < 0.85:
            out.append(f"CUST-{rng.randint(10000, 99999)}")
        else:
            out.append(f"{rng.choice(['web', 'db', 'api'])}{rng.randint(1, 40):02d}.prod.example.com")
    return " ".join(out)


def office(rng: random.Random, minutes: float = 1.0) -> list[Step]:
    """Typical screen work per minute (bench/insight.py's "typical"): two commands typed, each with a
    few lines of output and a pause to read them, a 20-line page scrolled, half a minute idle (reading,
    thinking): about 28 new lines a minute."""
    steps: list[Step] = []
    for _ in range(max(1, round(minutes))):
        for _ in range(2):
            steps.append(Step("type", text=f"ops@web01:~$ {words_line(rng, rng.randint(2, 4))}"))
            steps.append(Step("print", lines=[words_line(rng, rng.randint(3, 7)) for _ in range(rng.randint(2, 4))]))
            steps.append(Step("idle", seconds=4))
        steps.append(Step("scroll", lines=[words_line(rng, rng.randint(3, 8)) for _ in range(20)], seconds=4))
        steps.append(Step("idle", seconds=30))
    return steps


def typical(rng: random.Random, minutes: float = 1.0) -> list[Step]:
    """Terminal-heavy work per unit (about 48 s): four commands typed, each with 2-6 lines of output,
    a 40-line page scrolled, 20 s idle: about 75 new lines a minute (bench/insight.py's "heavy")."""
    steps: list[Step] = []
    for _ in range(max(1, round(minutes))):
        for _ in range(4):
            steps.append(Step("type", text=f"ops@web01:~$ {words_line(rng, rng.randint(2, 4))}"))
            steps.append(Step("print", lines=[words_line(rng, rng.randint(3, 7)) for _ in range(rng.randint(2, 6))]))
            steps.append(Step("idle", seconds=2))
        steps.append(Step("scroll", lines=[words_line(rng, rng.randint(3, 8)) for _ in range(40)], seconds=8))
        steps.append(Step("idle", seconds=12))
    return steps


class Terminal:
    def __init__(self, width: int, height: int, theme: str = "dark", px: int | None = None):
        self.w, self.h = width, height
        self.bg, self.fg = THEMES[theme]
        self.px = px or max(12, height // 40)
        self.font = ImageFont.truetype(FONT, self.px)
        self.lh = int(self.px * 1.35)
        self.rows = (height - 8) // self.lh
        self.lines: list[str] = []
        self._img: np.ndarray | None = None

    def set(self, lines: list[str]) -> None:
        self.lines, self._img = lines[-self.rows :], None

    def image(self) -> np.ndarray:
        if self._img is None:
            img = Image.new("RGB", (self.w, self.h), self.bg)
            d = ImageDraw.Draw(img)
            for i, text in enumerate(self.lines):
                d.text((6, 4 + i * self.lh), text, font=self.font, fill=self.fg)
            self._img = np.asarray(img)
        return self._img


# long: a small interpreter of the script; one loop keeps the frame clock, the screen and the truth in step
def frames(steps: list[Step], width: int, height: int, fps: int, theme: str = "dark", cps: float = 8.0):
    """(frame index, RGB array) for the script, and the Truth once exhausted (returned by the generator)."""
    term, truth, screen, i = Terminal(width, height, theme), Truth(), [], 0

    def emit(seconds: float):
        nonlocal i
        for _ in range(max(1, round(seconds * fps))):
            yield i, term.image()
            i += 1

    for st in steps:
        t = i / fps
        if st.kind == "type":
            for n in range(1, len(st.text) + 1):
                term.set([*screen, st.text[:n]])
                yield from emit(1 / cps)
            screen.append(st.text)
            truth.lines.append((i / fps, st.text))
            truth.active.append((t, i / fps))
        elif st.kind == "print":
            screen.extend(st.lines)
            term.set(screen)
            truth.lines += [(i / fps, ln) for ln in st.lines[-term.rows :]]
            truth.active.append((t, t + 1 / fps))
            yield from emit(1 / fps)
        elif st.kind == "scroll":
            per = st.seconds / len(st.lines)
            for ln in st.lines:
                screen.append(ln)
                term.set(screen)
                yield from emit(per)
            truth.lines += [(i / fps, ln) for ln in st.lines]  # each was on screen for a while
            truth.active.append((t, i / fps))
        else:
            yield from emit(st.seconds)
        screen = screen[-term.rows :]
    truth.duration = i / fps
    return truth


def record(directory: Path, steps: list[Step], *, size=(640, 360), fps=5, chunk_seconds=10, theme="dark"):
    """Real libx264 segments of the script through the recorder's encoder and writer; (segments, truth)."""
    video = {"width": size[0], "height": size[1], "fps": fps, "encoders": ["libx264"]}
    codec = open_encoder(video, fps * chunk_seconds)
    segs: list = []
    writer = SegmentWriter(directory, codec, fps, segs.append)
    gen = frames(steps, size[0], size[1], fps, theme)
    while True:
        try:
            i, rgb = next(gen)
        except StopIteration as stop:
            truth = stop.value
            break
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        frame.pict_type = PictureType.I if i % (fps * chunk_seconds) == 0 else PictureType.NONE
        for pkt in codec.encode(frame):
            writer.write(pkt)
    for pkt in codec.encode(None):
        writer.write(pkt)
    writer.close_segment()
    return segs, truth
