"""The OCR reader on text rendered with Pillow, through the real rapidocr engine (no mocks): words
come back with boxes where they were drawn, light and dark; region reads answer in full-frame
coordinates; blank input reads as nothing; and nothing recognized reaches a log or the console."""

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from lucid_assets.insight import ocr

REPO = Path(__file__).resolve().parent.parent
FONTS = Path("/usr/share/fonts/truetype/dejavu")
THEMES = {"light": ((250, 250, 250), (20, 20, 20)), "dark": ((24, 26, 30), (220, 220, 215))}
# (font, px, x, y, text): a sidebar entry and a code line share the first row (left comes first)
SCREEN = (
    ("DejaVuSans.ttf", 15, 12, 20, "settings.py"),
    ("DejaVuSansMono.ttf", 15, 300, 20, "def rollback(snapshot):"),
    ("DejaVuSans-Bold.ttf", 24, 12, 70, "Quarterly revenue report"),
    ("DejaVuSansMono.ttf", 14, 12, 130, "root@web01:~$ tail -f /var/log/kernel.log CUST-48213"),
    ("DejaVuSans.ttf", 16, 12, 180, "Illuminated invoice approved by Wilhelmina"),
)


def render(theme: str, size: tuple[int, int] = (900, 240), screen=SCREEN) -> tuple[np.ndarray, list[tuple[str, tuple]]]:
    """The frame and every drawn word with its ink box (x, y, w, h)."""
    bg, fg = THEMES[theme]
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    drawn = []
    for name, px, x, y, text in screen:
        font = ImageFont.truetype(str(FONTS / name), px)
        for word in text.split():
            x0, y0, x1, y1 = d.textbbox((x, y), word, font=font)
            d.text((x, y), word, font=font, fill=fg)
            drawn.append((word, (x0, y0, x1 - x0, y1 - y0)))
            x += font.getlength(word + " ")
    return np.asarray(img), drawn


def covers(box: tuple, drawn: tuple) -> bool:
    """The box holds the drawn word's centre and most (60 %) of its ink box."""
    bx, by, bw, bh = box
    dx, dy, dw, dh = drawn
    cx, cy = dx + dw / 2, dy + dh / 2
    inter_w = max(0.0, min(bx + bw, dx + dw) - max(bx, dx))
    inter_h = max(0.0, min(by + bh, dy + dh) - max(by, dy))
    return bx <= cx <= bx + bw and by <= cy <= by + bh and inter_w * inter_h >= 0.6 * dw * dh


@pytest.fixture(scope="module")
def reader() -> ocr.Reader:
    return ocr.Reader(threads=1)


def test_model_id_names_the_installed_engine_and_models():
    assert version("rapidocr") == ocr.ENGINE_VERSION and f"rapidocr-{ocr.ENGINE_VERSION}/" in ocr.MODEL_ID
    cfg = ocr._engine(1).cfg
    assert (cfg.Det.ocr_version.value, cfg.Det.model_type.value) == ("PP-OCRv6", "small")
    assert (cfg.Rec.ocr_version.value, cfg.Rec.model_type.value) == ("PP-OCRv6", "small")
    assert cfg.Global.use_cls is False and "nocls" in ocr.MODEL_ID and "ppocrv6-small" in ocr.MODEL_ID
    assert (str(cfg.Det.limit_type), cfg.Det.limit_side_len) == ("max", 2000) and "det-max2000" in ocr.MODEL_ID
    assert cfg.Global.use_vertical_padding is False and "nopad" in ocr.MODEL_ID


@pytest.mark.parametrize("theme", THEMES)
def test_words_come_back_where_they_were_drawn(reader, theme):
    frame, drawn = render(theme)
    lines = reader.read(frame)
    assert [ln.text for ln in lines] == [text for *_, text in SCREEN]  # reading order, row by row
    words = [w for ln in lines for w in ln.words]
    assert [w.text for w in words] == [t for t, _ in drawn]
    for w, (_, ink) in zip(words, drawn):
        assert covers(w.box, ink), (w.text, w.box, ink)
        assert 0.5 <= w.conf <= 1.0
    for ln in lines:
        assert ln.text == " ".join(w.text for w in ln.words)
        x, y, bw, bh = ln.box
        assert all(x <= w.box[0] and w.box[0] + w.box[2] <= x + bw for w in ln.words)
        assert x >= 0 and y >= 0 and x + bw <= frame.shape[1] and y + bh <= frame.shape[0]


def test_a_region_read_answers_in_full_frame_coordinates(reader):
    frame, drawn = render("dark")
    ink = dict(drawn)
    region = (0, 115, 620, 50)  # the terminal line only
    lines = reader.read(frame, region)
    assert [ln.text for ln in lines] == ["root@web01:~$ tail -f /var/log/kernel.log CUST-48213"]
    for w in lines[0].words:
        assert covers(w.box, ink[w.text]), (w.text, w.box, ink[w.text])
        assert region[1] <= w.box[1] and w.box[1] + w.box[3] <= region[1] + region[3]
    # a region reaching past the frame is clipped to it: the same words in the same places
    clipped = reader.read(frame, (-40, 115, 5000, 50))
    assert [w.text for ln in clipped for w in ln.words] == [w.text for w in lines[0].words]
    assert all(covers(w.box, ink[w.text]) for ln in clipped for w in ln.words)
    # a thin band (wider than 8x its height: rapidocr would pad it vertically; we do not) maps back to the frame
    band = reader.read(frame, (0, 126, 900, 24))
    assert [w.text for ln in band for w in ln.words] == [w.text for w in lines[0].words]
    assert all(covers(w.box, ink[w.text]) for ln in band for w in ln.words)


def test_blank_empty_and_tiny_input_reads_as_nothing(reader):
    assert reader.read(np.zeros((720, 1280, 3), np.uint8)) == []
    assert reader.read(np.full((360, 640, 3), 250, np.uint8)) == []
    shapes = np.full((360, 640, 3), 240, np.uint8)
    shapes[40:200, 60:400] = (30, 90, 200)  # flat panels, no text: the engine runs and finds nothing
    shapes[250:330, 420:600] = (200, 40, 40)
    assert reader.read(shapes) == []
    assert reader.read(np.zeros((0, 0, 3), np.uint8)) == []
    frame, _ = render("light")
    assert reader.read(frame, (12, 70, 7, 40)) == []  # narrower than 8 px
    assert reader.read(frame, (12, 70, 300, 5)) == []  # lower than 8 px
    assert reader.read(frame, (5000, 5000, 100, 100)) == []  # outside the frame
    with pytest.raises(ValueError):
        reader.read(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        reader.read(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        ocr.Reader(threads=0)


SECRET_SCREEN = (
    ("DejaVuSans.ttf", 18, 12, 20, "Zanzibar marmalade quokka"),
    ("DejaVuSansMono.ttf", 16, 12, 70, "Xylophone Hunter7Falcon CUST-73519"),
)
PROBE = """
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, force=True)  # everything, to the console
import rapidocr  # noqa: F401  (its logger exists, as in production, before handlers are added)
from tests.test_ocr import SECRET_SCREEN, render
from lucid_assets.insight import ocr
for name in list(logging.Logger.manager.loggerDict):  # loggers that do not propagate: to stdout too
    lg = logging.getLogger(name)
    if not lg.propagate:
        lg.addHandler(logging.StreamHandler(sys.stdout))
frame, drawn = render("light", (700, 120), SECRET_SCREEN)
lines = ocr.Reader().read(frame)
got = {w.text.lower() for ln in lines for w in ln.words}
logging.getLogger("lucid").info("probe done")
print(json.dumps({"read": sum(t.lower() in got for t, _ in drawn), "of": len(drawn)}))
"""


def test_nothing_recognized_reaches_a_log_or_the_console():
    """A fresh process with every logger at DEBUG on stderr (and a stdout handler on loggers that do
    not propagate, such as rapidocr's) reads secret words: they come back, and appear nowhere in the
    process's stdout or stderr (captured at the file-descriptor level, so C++ logs count too)."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["read"] == counts["of"] == 6, counts  # the words really were recognized
    assert "probe done" in out.stderr  # logging really reached the captured stream
    console = (out.stdout + out.stderr).lower()
    for _, _, _, _, text in SECRET_SCREEN:
        for word in text.split():
            assert word.lower() not in console, word
