#!/usr/bin/env python3
"""Screen-text (OCR) quality and cost, measured here in one run (issue #15).

1. A corpus rendered with Pillow with known ground truth: a terminal, an editor (file sidebar, line
   numbers, code) and a browser-like page (tab, address bar, heading, sub-headings, paragraphs),
   light and dark themes, a small and a normal font, at 1280x720 and 1920x1080 (24 screens; --quick:
   the small font at 720p, 6 screens).
2. Recorded through the real recorder's codec: the screens follow one another (each held --hold
   frames, so each arrives as a P frame after a full-screen change, as on a real desktop) through the
   recorder's own encoder (services.recorder.capture.open_encoder: its preference order, and for
   libx264 its preset ultrafast, tune zerolatency, yuv420p, forced IDR, keyint, GOP = fps x chunk
   seconds), muxed to MPEG-TS in memory with the recorder's muxer options, demuxed and decoded back.
   The frame OCR'd is the last of each hold (--first: the first, straight after the change).
3. lucid_assets.insight.ocr.Reader (threads=1) reads each decoded frame: word recall and precision
   (whitespace words, case-insensitive, outer punctuation stripped, counted as multisets) per
   category, theme, font size, resolution and overall, and CPU-seconds per full frame
   (time.process_time) at 720p and 1080p. Targets from the issue: recall >= 95 %, precision >= 95 %.
4. The same for Debian's tesseract (--psm 6, OMP_THREAD_LIMIT=1, its CPU counted from the child's
   rusage) when `tesseract` is on PATH; skipped otherwise.

Usage: python bench/ocr.py [--quick] [--hold 10] [--first] [--no-tesseract] [--json results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np
from av.video.frame import PictureType
from PIL import Image, ImageDraw, ImageFont

FONTS = "/usr/share/fonts/truetype/dejavu/"
MONO, SANS, BOLD = FONTS + "DejaVuSansMono.ttf", FONTS + "DejaVuSans.ttf", FONTS + "DejaVuSans-Bold.ttf"
VOCAB_TEXT = """
error warning connection refused timeout server database customer invoice payment deploy rollback kernel module
service restart failed success config production staging backup snapshot cluster node replica primary secondary
request response header token session account user admin password reset firewall gateway certificate expired renewal
queue worker scheduler pipeline storage volume mount network interface address latency throughput memory process
thread signal terminated report monthly quarterly revenue balance transfer approved pending rejected ticket priority
assigned resolved
"""
VOCAB = VOCAB_TEXT.split()
THEMES = {
    "light": ((250, 250, 250), (20, 20, 20), (0, 70, 160)),
    "dark": ((24, 26, 30), (220, 220, 215), (120, 180, 255)),
}
FPS, CHUNK_SECONDS = 30, 10  # the recorder's defaults (lucid_assets.models video fps, settings.chunk_seconds)
TARGET = 0.95


@dataclass
class Screen:
    cat: str
    theme: str
    font: str  # small | normal
    height: int
    image: Image.Image
    truth: list[str] = field(default_factory=list)  # every drawn text run

    @property
    def name(self) -> str:
        return f"{self.cat}_{self.theme}_{self.font}_{self.height}p"


class Text:
    """Random screen-like words: mostly vocabulary, some host names, ids, numbers and paths."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def word(self) -> str:
        k, r = self.r.random(), self.r
        if k < 0.70:
            return r.choice(VOCAB)
        if k < 0.78:
            host = r.choice(["web", "db", "app", "api", "cache"])
            return f"{host}{r.randint(1, 40):02d}.{r.choice(['prod', 'stage', 'corp'])}.example.com"
        if k < 0.85:
            return f"CUST-{r.randint(10000, 99999)}"
        if k < 0.90:
            return str(r.randint(1, 99999))
        if k < 0.95:
            return f"/var/log/{r.choice(VOCAB)}.log"
        return r.choice(VOCAB).capitalize()

    def line(self, n: int) -> str:
        return " ".join(self.word() for _ in range(n))


def terminal(d: ImageDraw.ImageDraw, s: Screen, t: Text, w: int, h: int, px: int) -> None:
    fg = THEMES[s.theme][1]
    f = ImageFont.truetype(MONO, px)
    lh, y = int(px * 1.25), 6
    while y + lh < h - 6:
        if t.r.random() < 0.2:
            line = f"{t.r.choice(['root@web01', 'ops@db02', 'admin@api07'])}:~$ {t.line(t.r.randint(2, 5))}"
        else:
            line = t.line(t.r.randint(3, 11))
        if f.getlength(line) > w - 12:
            line = t.line(4)
        d.text((6, y), line, font=f, fill=fg)
        s.truth.append(line)
        y += lh


def editor(d: ImageDraw.ImageDraw, s: Screen, t: Text, w: int, h: int, px: int) -> None:
    bg, fg, accent = THEMES[s.theme]
    scale = h / 720
    f, fs = ImageFont.truetype(MONO, px), ImageFont.truetype(SANS, px)
    lh, side = int(px * 1.4), int(200 * scale)
    d.rectangle([0, 0, side, h], fill=tuple(max(0, c - 12) if s.theme == "light" else c + 12 for c in bg))
    y = 30 * scale
    for _ in range(int((h - 40) / (lh * 1.2))):  # the file sidebar
        name = t.r.choice(VOCAB) + ".py"
        d.text((10, y), name, font=fs, fill=fg)
        s.truth.append(name)
        y += lh * 1.2
    y, n = 8, 1
    while y + lh < h - 6:
        d.text((side + 8, y), f"{n:4d}", font=f, fill=(128, 128, 128))
        s.truth.append(str(n))
        if t.r.random() < 0.15:
            code = f"def {t.r.choice(VOCAB)}_{t.r.choice(VOCAB)}({t.r.choice(VOCAB)}):"
        else:
            code = t.line(t.r.randint(2, 7))
        indent = "    " * t.r.randint(0, 3)
        d.text((side + 8 + f.getlength("00000 "), y), indent + code, font=f, fill=accent if code[:4] == "def " else fg)
        s.truth.append(code)
        y += lh
        n += 1


def browser(d: ImageDraw.ImageDraw, s: Screen, t: Text, w: int, h: int, px: int) -> None:
    bg, fg, accent = THEMES[s.theme]
    scale = h / 720
    d.rectangle([0, 0, w, int(70 * scale)], fill=(222, 225, 230) if s.theme == "light" else (45, 48, 55))
    fb = ImageFont.truetype(SANS, int(14 * scale))
    url = f"https://portal.example.com/{t.r.choice(VOCAB)}/{t.r.randint(1, 999)}"
    d.rounded_rectangle([int(120 * scale), int(38 * scale), w - int(120 * scale), int(62 * scale)], 8, fill=bg)
    d.text((int(130 * scale), int(41 * scale)), url, font=fb, fill=fg)
    tab = t.line(3)
    d.text((int(14 * scale), int(8 * scale)), tab, font=fb, fill=fg)
    s.truth += [url, tab]
    x0, y = int(200 * scale), int(90 * scale)
    fh = ImageFont.truetype(BOLD, int(px * 1.8))
    heading = t.line(4).capitalize()
    while fh.getlength(heading) > w - x0 - 20:
        heading = " ".join(heading.split()[:-1])
    d.text((x0, y), heading, font=fh, fill=fg)
    s.truth.append(heading)
    y += int(px * 3)
    f, fsub = ImageFont.truetype(SANS, px), ImageFont.truetype(BOLD, int(px * 1.3))
    lh = int(px * 1.5)
    while y + lh < h - 10:
        if t.r.random() < 0.12:  # a sub-heading
            line = t.line(3)
            d.text((x0, y), line, font=fsub, fill=accent)
            y += int(px * 2.2)
        else:
            line = t.line(t.r.randint(6, 14))
            while f.getlength(line) > w - 2 * x0:
                line = " ".join(line.split()[:-1])
            d.text((x0, y), line, font=f, fill=fg)
            y += lh
        s.truth.append(line)


DRAW = {"terminal": terminal, "editor": editor, "browser": browser}


def corpus(heights: tuple[int, ...], fonts: tuple[str, ...]) -> list[Screen]:
    out = []
    for h in heights:
        w = h * 16 // 9
        for cat, draw in DRAW.items():
            for theme in THEMES:
                for font in fonts:
                    scale = h / 720
                    base = {"browser": (12, 16)}.get(cat, (11, 15))[font == "normal"]
                    s = Screen(cat, theme, font, h, Image.new("RGB", (w, h), THEMES[theme][0]))
                    draw(ImageDraw.Draw(s.image), s, Text(zlib.crc32(s.name.encode())), w, h, int(base * scale))
                    out.append(s)
    return out


def through_recorder(screens: list[Screen], hold: int, first: bool) -> tuple[list[np.ndarray], dict]:
    """Encode the screens (one resolution) as the recorder does, mux to MPEG-TS in memory, decode back;
    returns the decoded frame of each screen (the last of its hold, or the first with --first)."""
    from services.recorder.capture import open_encoder

    w, h = screens[0].image.size
    gop = FPS * CHUNK_SECONDS
    c0 = time.process_time()
    cc = open_encoder({"width": w, "height": h, "fps": FPS}, gop)  # the recorder's preference order
    buf = io.BytesIO()
    mux = av.open(buf, "w", format="mpegts", options={"flush_packets": "1", "omit_video_pes_length": "0"})
    stream = mux.add_stream("h264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    grey = Image.new("RGB", (w, h), (90, 90, 90))  # the screen before the first one
    idx = 0
    for img in [grey, *(s.image for s in screens)]:
        frame = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24").reformat(format="yuv420p")
        for _ in range(hold):
            frame.pts, frame.time_base = idx, Fraction(1, FPS)
            frame.pict_type = PictureType.I if idx % gop == 0 else PictureType.NONE  # as Capture forces
            for pkt in cc.encode(frame):
                pkt.stream = stream
                mux.mux(pkt)
            idx += 1
    for pkt in cc.encode(None):
        pkt.stream = stream
        mux.mux(pkt)
    mux.close()
    data = buf.getvalue()
    with av.open(io.BytesIO(data), "r", format="mpegts") as src:
        decoded = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    assert len(decoded) == idx, (len(decoded), idx)
    pick = [(k + 1) * hold + (0 if first else hold - 1) for k in range(len(screens))]
    info = {"encoder": cc.name, "ts_bytes": len(data), "frames": idx, "codec_cpu_s": time.process_time() - c0}
    return [decoded[i] for i in pick], info


def words(text: str) -> list[str]:
    """Whitespace words, case-insensitive, outer punctuation stripped."""
    out = []
    for w in text.split():
        w = w.strip(".,:;!?()[]{}<>'\"`").lower()
        if w:
            out.append(w)
    return out


def score(truth: list[str], text: str) -> tuple[int, int, int]:
    """(matched, ground-truth words, predicted words), multisets."""
    g, p = Counter(words("\n".join(truth))), Counter(words(text))
    return sum((g & p).values()), sum(g.values()), sum(p.values())


def rapid(frames: list[np.ndarray]) -> list[tuple[str, float]]:
    from lucid_assets.insight.ocr import Reader

    reader = Reader(threads=1)
    reader.read(frames[0])  # warm-up: the engine loads its models on first use
    out = []
    for f in frames:
        c0 = time.process_time()
        lines = reader.read(f)
        out.append(("\n".join(ln.text for ln in lines), time.process_time() - c0))
    return out


def tesseract(frames: list[np.ndarray], psm: int) -> list[tuple[str, float]]:
    out = []
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}  # its OpenMP pool otherwise burns ~5x the CPU for the same text
    for f in frames:
        png = io.BytesIO()
        Image.fromarray(f).save(png, format="PNG")
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = subprocess.run(
            ["tesseract", "stdin", "stdout", "--psm", str(psm), "-l", "eng"],
            input=png.getvalue(),
            capture_output=True,
            env=env,
            check=True,
        )
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
        out.append((run.stdout.decode(errors="replace"), cpu))
    return out


def aggregate(rows: list[dict], key) -> dict:
    groups: dict = {}
    for r in rows:
        g = groups.setdefault(key(r), [0, 0, 0, 0.0, 0])
        for i in range(3):
            g[i] += r["score"][i]
        g[3] += r["cpu_s"]
        g[4] += 1
    return {
        k: {"recall": m / max(gt, 1), "precision": m / max(p, 1), "words": gt, "cpu_s_per_frame": c / n}
        for k, (m, gt, p, c, n) in groups.items()
    }


def table(engine: str, rows: list[dict]) -> dict:
    views = {
        "category": lambda r: r["cat"],
        "theme": lambda r: r["theme"],
        "font": lambda r: r["font"],
        "resolution": lambda r: f"{r['height']}p",
        "overall": lambda r: "all",
    }
    summary = {name: aggregate(rows, key) for name, key in views.items()}
    print(f"\n{engine}: word recall / precision (ground-truth words), CPU-s per full frame")
    print("  | view | group | recall | precision | words | CPU-s/frame |")
    print("  |---|---|---|---|---|---|")
    for name, groups in summary.items():
        for g, v in sorted(groups.items()):
            print(
                f"  | {name} | {g} | {v['recall']:.1%} | {v['precision']:.1%} | {v['words']} | "
                f"{v['cpu_s_per_frame']:.2f} |"
            )
    return summary


def run_engine(engine: str, reads: list[tuple[str, float]], screens: list[Screen]) -> tuple[list[dict], dict]:
    rows = []
    for s, (text, cpu) in zip(screens, reads):
        rows.append(
            {
                "name": s.name,
                "cat": s.cat,
                "theme": s.theme,
                "font": s.font,
                "height": s.height,
                "score": score(s.truth, text),
                "cpu_s": cpu,
            }
        )
    return rows, table(engine, rows)


def verdict(results: dict, engines: list[str], heights: tuple[int, ...]) -> dict:
    """PASS/FAIL against the issue's targets, CPU per frame and its ratio; the short summary per engine."""
    print("\ntargets (issue #15), rapidocr overall:")
    overall = results["rapidocr"]["summary"]["overall"]["all"]
    for label, value in (("word recall >= 95 %", overall["recall"]), ("word precision >= 95 %", overall["precision"])):
        print(f"  {'PASS' if value >= TARGET else 'FAIL'} {label}: {value:.1%}")
    for h in heights:
        per = {e: results[e]["summary"]["resolution"][f"{h}p"]["cpu_s_per_frame"] for e in engines}
        ratios = "".join(
            f", {e} {v:.2f} (rapidocr/{e} = {per['rapidocr'] / v:.1f}x)" for e, v in per.items() if e != "rapidocr"
        )
        print(f"  CPU-s per full {h}p frame: rapidocr (threads=1) {per['rapidocr']:.2f}{ratios}")
    return {
        e: {k: round(v, 4) for k, v in results[e]["summary"]["overall"]["all"].items()}
        | {f"cpu_s_{h}p": round(results[e]["summary"]["resolution"][f"{h}p"]["cpu_s_per_frame"], 2) for h in heights}
        for e in engines
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="720p, small font only: 6 screens")
    ap.add_argument("--hold", type=int, default=10, help="frames each screen is held before the next one")
    ap.add_argument("--first", action="store_true", help="OCR the first frame after each change, not the last")
    ap.add_argument("--no-tesseract", action="store_true")
    ap.add_argument("--tess-psm", type=int, default=6)
    ap.add_argument("--rows", action="store_true", help="also print a line per screen")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    heights, fonts = ((720,), ("small",)) if args.quick else ((720, 1080), ("small", "normal"))
    t0 = time.perf_counter()
    screens = corpus(heights, fonts)
    frames, codec = [], []
    for h in heights:
        mine = [s for s in screens if s.height == h]
        got, info = through_recorder(mine, args.hold, args.first)
        frames += got
        codec.append({"height": h, **info})
    print(
        f"ocr bench: {len(screens)} rendered screens through the recorder's encoder ({codec[0]['encoder']}, "
        f"{FPS} fps, held {args.hold} frames, OCR of the {'first' if args.first else 'last'} frame after each change)"
    )
    for c in codec:
        mb, cpu = c["ts_bytes"] / 1e6, c["codec_cpu_s"]
        print(f"- {c['height']}p: {c['frames']} frames, {mb:.1f} MB MPEG-TS, encode+mux+decode {cpu:.1f} CPU-s")
    from lucid_assets.insight.ocr import MODEL_ID

    results: dict = {"model_id": MODEL_ID, "screens": len(screens), "codec": codec, "first": args.first}
    engines = {"rapidocr": lambda: rapid(frames)}
    if args.no_tesseract:
        print("- tesseract: skipped (--no-tesseract)")
    elif shutil.which("tesseract") is None:
        print("- tesseract: skipped, not on PATH (apt-get install tesseract-ocr tesseract-ocr-eng)")
    else:
        engines[f"tesseract-psm{args.tess_psm}"] = lambda: tesseract(frames, args.tess_psm)
    for engine, read in engines.items():
        rows, summary = run_engine(engine, read(), screens)
        if args.rows:
            for r in rows:
                m, g, p = r["score"]
                print(f"  {r['name']}: recall {m / g:.3f} precision {m / max(p, 1):.3f} cpu {r['cpu_s']:.2f}")
        results[engine] = {"summary": summary, "rows": rows}
    results["wall_s"] = time.perf_counter() - t0
    short = verdict(results, list(engines), heights)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  bench wall time {results['wall_s']:.0f} s; load average {load}")
    print(json.dumps({"model_id": MODEL_ID, "screens": len(screens), "encoder": codec[0]["encoder"], **short}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
