"""Offline screen-text reader: rapidocr (PP-OCRv6 small detection + recognition ONNX models, shipped
inside the rapidocr wheel, run by onnxruntime on the CPU), no angle classifier.

Why these settings (bench/ocr.py measures them on rendered screens sent through the recorder's
encoder): the 180-degree classifier only ever misfires on screen text (it flipped short lines:
word recall 93 % with it, 99 % without), one onnxruntime intra-op thread costs ~45 % less CPU per
frame than the default pool for the same output (OMP_NUM_THREADS has no effect on it), and the
detector keeps the input size (`limit_type=max`, 2000 px) so a small region is not blown up to
736 px on its short side the way the default `min` limit does.

Word boxes: rapidocr's `return_word_box` places each word from the recognizer's CTC columns (it
splits on whitespace and on wide gaps); those pieces are grouped back into whitespace-separated
words. When a line's pieces do not spell its text (rapidocr drops or shifts entries in a few
corner cases) the line box is apportioned by character count instead. A word's `conf` is its
line's: rapidocr pairs words with per-character scores, which is not a per-word score. A line
without a letter or digit is dropped (flat panels and rules come back as "_" or "|").

CONFIDENTIALITY: what is on screen is the most sensitive data we hold. Nothing here logs text, and
rapidocr's own logger (which has its own stderr handler) is held at ERROR, where it says nothing
about content."""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

# Names the engine, the model files and every parameter that changes output: it is part of the
# derived assets' code_version, so change it whenever output would change.
MODEL_ID = "rapidocr-3.10.0/ppocrv6-small-det+rec/nocls/det-max2000/nopad-edge12/2"
ENGINE_VERSION = "3.10.0"  # tests/test_ocr.py checks the installed rapidocr is this one
MARGIN = 12  # rows of edge padding above and below what is read (see Reader.read)
MIN_SIDE = 8  # a region narrower or lower than this holds no readable text: [] without running the engine

_PARAMS: dict[str, Any] = {
    "Global.log_level": "error",
    "Global.use_cls": False,
    # rapidocr pads a band wider than 8x its height to a fifth of its width: a one-line band of a
    # 1280 px screen was detected as 1280x350 (0.14 CPU-s; unpadded 0.03, the same lines read)
    "Global.use_vertical_padding": False,
    "Det.limit_type": "max",
    "Det.limit_side_len": 2000,
    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
}
_ENGINES: dict[int, Any] = {}
_ENGINES_LOCK = threading.Lock()
_WORD = re.compile(r"\S+")

Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    box: Box  # x, y, w, h in full-frame pixels
    conf: float  # 0..1


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    box: Box
    conf: float
    words: tuple[Word, ...]


def _quiet_rapidocr() -> None:
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)


def _engine(threads: int) -> Any:
    """One rapidocr engine per process per thread count, built on first use (models load lazily too)."""
    with _ENGINES_LOCK:
        eng = _ENGINES.get(threads)
        if eng is None:
            _quiet_rapidocr()  # before the import's and constructor's info lines
            from rapidocr import RapidOCR

            eng = RapidOCR(params={**_PARAMS, "EngineConfig.onnxruntime.intra_op_num_threads": threads})
            _quiet_rapidocr()
            _ENGINES[threads] = eng
        return eng


def _rect(points: Any, ox: int, oy: int, w: int, h: int) -> Box:
    """Axis-aligned bounding rectangle of a quadrilateral (crop coordinates), clipped to the crop of
    size w x h, in frame coordinates (offset ox, oy)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0 = min(max(math.floor(p[:, 0].min()), 0), w)
    y0 = min(max(math.floor(p[:, 1].min()), 0), h)
    x1 = min(max(math.ceil(p[:, 0].max()), 0), w)
    y1 = min(max(math.ceil(p[:, 1].max()), 0), h)
    return (ox + x0, oy + y0, x1 - x0, y1 - y0)


def _union(boxes: list[Box]) -> Box:
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return (x0, y0, x1 - x0, y1 - y0)


def _apportioned(text: str, box: Box, conf: float) -> tuple[Word, ...]:
    """Whitespace words of `text`, each given the slice of the line box its characters span."""
    x, y, w, h = box
    n = max(len(text), 1)
    out = []
    for m in _WORD.finditer(text):
        x0 = x + math.floor(w * m.start() / n)
        x1 = x + math.ceil(w * m.end() / n)
        out.append(Word(m.group(), (x0, y, max(x1 - x0, 1), h), conf))
    return tuple(out)


def _grouped(text: str, pieces: list[tuple[str, Box]], conf: float) -> tuple[Word, ...] | None:
    """Whitespace words of `text` from rapidocr's word pieces (which split on whitespace and on wide
    gaps), or None when the pieces do not spell the text exactly."""
    out, i = [], 0
    for m in _WORD.finditer(text):
        word, got, boxes = m.group(), "", []
        while len(got) < len(word) and i < len(pieces):
            got += pieces[i][0]
            boxes.append(pieces[i][1])
            i += 1
        if got != word:
            return None
        out.append(Word(word, _union(boxes), conf))
    return tuple(out) if i == len(pieces) else None


def _reading_order(lines: list[Line]) -> list[Line]:
    """Top to bottom, and left to right within a row: a line joins the current row when its
    vertical centre lies inside the row's first line."""
    rows: list[list[Line]] = []
    for ln in sorted(lines, key=lambda ln: (ln.box[1], ln.box[0])):
        centre = ln.box[1] + ln.box[3] / 2
        if rows and rows[-1][0].box[1] <= centre <= rows[-1][0].box[1] + rows[-1][0].box[3]:
            rows[-1].append(ln)
        else:
            rows.append([ln])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.box[0])]


class Reader:
    """Reads screen text from RGB frames. Cheap to create; the engine behind it is shared."""

    def __init__(self, threads: int = 1):
        if not isinstance(threads, int) or threads < 1:
            raise ValueError("threads must be a positive integer")
        self.threads = threads

    def read(self, rgb: np.ndarray, region: tuple[int, int, int, int] | None = None) -> list[Line]:
        """OCR an HxWx3 uint8 RGB frame, or only region (x, y, w, h) of it; boxes always in full-frame
        coordinates; lines in reading order (top to bottom, left to right); empty/blank input -> []."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("expected an HxWx3 uint8 RGB array")
        fh, fw = rgb.shape[:2]
        ox, oy, x1, y1 = 0, 0, fw, fh
        if region is not None:
            rx, ry, rw, rh = (int(v) for v in region)
            ox, oy, x1, y1 = max(rx, 0), max(ry, 0), min(rx + rw, fw), min(ry + rh, fh)
        if x1 - ox < MIN_SIDE or y1 - oy < MIN_SIDE:
            return []
        crop = rgb[oy:y1, ox:x1]
        if crop.min() == crop.max():  # one flat colour: nothing to read
            return []
        # a band gets MARGIN rows of its own edge above and below (background, as a rule): without
        # them the detector cut lines short at a thin band's border, and rapidocr's own padding
        # (to a fifth of the width) cost 4x the detection
        bgr = np.pad(crop[:, :, ::-1], ((MARGIN, MARGIN), (0, 0), (0, 0)), mode="edge")
        res = _engine(self.threads)(bgr, return_word_box=True)
        txts = getattr(res, "txts", None)
        if not txts:
            return []
        cw, ch = x1 - ox, y1 - oy
        words_by_line = getattr(res, "word_results", None) or ()
        aligned = len(words_by_line) == len(txts)
        lines = []
        unpad = np.array([0.0, MARGIN])
        for i, (text, quad, score) in enumerate(zip(txts, res.boxes, res.scores)):
            quad = np.asarray(quad, dtype=np.float64).reshape(-1, 2) - unpad
            if not any(c.isalnum() for c in text):  # "_" or "|" read off panel edges and rules: nothing to find
                continue
            conf = min(max(float(score), 0.0), 1.0)
            box = _rect(quad, ox, oy, cw, ch)
            words = None
            if aligned:
                pieces = [
                    (str(p[0]), _rect(np.asarray(p[2], dtype=np.float64).reshape(-1, 2) - unpad, ox, oy, cw, ch))
                    for p in words_by_line[i]
                    if p[2] is not None
                ]
                words = _grouped(text, pieces, conf)
            lines.append(Line(text, box, conf, words if words is not None else _apportioned(text, box, conf)))
        return _reading_order(lines)
