"""What deriving insight costs per recorded hour (issue 15), per asset, and what it finds.

Typical screen work (tests/screenwork.py: a terminal where commands are typed, output printed, a
page scrolled, and idle stretches) is rendered, encoded by the recorder's own encoder setup into
10 s chunks, sealed as envelopes, and derived by the real SessionDeriver (rapidocr, one thread) like
the follower does. Reported per recorded hour: CPU-minutes of decoding (shared), activity,
thumbnails and text; word recall/precision of the text found against what was on screen (distinct
words, case-insensitive); the index and record sizes. Targets: <= 6 CPU-min per recorded hour at
720p, <= 15 at 1080p.

    .venv/bin/python bench/insight.py [--minutes 3] [--fps 15] [--sizes 1280x720,1920x1080]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lucid_assets.core import envelope
from lucid_assets.core.states import Insight
from lucid_assets.insight.session import SessionDeriver, open_index, todo
from lucid_assets.insight.view import SessionView
from lucid_assets.keyring import Keyring
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from tests import screenwork

TARGET = {720: 6.0, 1080: 15.0}
ALL = {Insight.ACTIVITY, Insight.THUMBNAILS, Insight.TEXT}


def words(text: str) -> set[str]:
    stripped = (w.strip(".,:;()[]'\"") for w in re.split(r"\s+", text.lower()))
    return {w for w in stripped if w}


MIXES = {"typical": screenwork.office, "heavy": screenwork.typical}


def one(size: tuple[int, int], minutes: float, fps: int, tmp: Path, mix: str) -> dict:
    rng = random.Random(15)
    t0 = time.process_time()
    steps = MIXES[mix](rng, minutes)
    segs, truth = screenwork.record(tmp / f"rec{size[1]}{mix}", steps, size=size, fps=fps)
    render = time.process_time() - t0
    settings = Settings(data_dir=tmp / f"data{size[1]}{mix}", generate_keys=True)
    keyring, store = Keyring.load(settings, with_signing=False), ChunkStore.from_settings(settings)
    sid = str(uuid.uuid4())
    dek = store.data_key(sid, keyring, create=True)
    for s in segs:
        raw = s.path.read_bytes()
        store.write_envelope(sid, s.seq, envelope.seal(raw, dek=dek, session_id=uuid.UUID(sid), seq=s.seq))
    idx = open_index(store)
    wall = time.perf_counter()
    rep = SessionDeriver(store, keyring, sid, idx).run(ALL, todo(store, sid)[Insight.TEXT])
    wall = time.perf_counter() - wall
    hours = truth.duration / 3600
    found = set().union(*(words(ln["text"]) for ln in SessionView(store, keyring, sid).text()))
    shown = set().union(*(words(text) for _, text in truth.lines))
    derived = store.session_dir(sid) / "derived"
    return {
        "size": f"{size[0]}x{size[1]}",
        "mix": mix,
        "new_lines_per_min": round(len(truth.lines) / truth.duration * 60, 1),
        "recorded_s": round(truth.duration, 1),
        "chunks": rep.chunks,
        "render_encode_cpu_s": round(render, 1),
        "cpu_min_per_hour": {k: round(v / 60 / hours, 2) for k, v in sorted(rep.cpu.items())},
        "total_cpu_min_per_hour": round(sum(rep.cpu.values()) / 60 / hours, 2),
        "wall_s": round(wall, 1),
        "band_reads": rep.reads["band"],
        "lines_read": rep.reads["lines_read"],
        "rows_read_share": round(rep.reads["rows"] / (size[1] * truth.duration / 0.25), 4),
        "lines_found": rep.lines,
        "word_recall": round(len(found & shown) / len(shown), 4),
        "word_precision": round(len(found & shown) / max(1, len(found)), 4),
        "records_kb_per_hour": round(sum(p.stat().st_size for p in derived.rglob("*.bin")) / 1024 / hours),
        "active_share": round(rep.active_seconds / truth.duration, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="minutes of typical screen work per size")
    ap.add_argument("--fps", type=int, default=15, help="the recording's frame rate (the viewer's default)")
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    ap.add_argument("--mixes", default="typical,heavy", help="typical (about 28 new lines/min), heavy (about 75)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="lucid-bench-insight-") as tmp:
        for mix in args.mixes.split(","):
            for spec in args.sizes.split(","):
                w, h = (int(x) for x in spec.split("x"))
                r = one((w, h), args.minutes, args.fps, Path(tmp), mix)
                results.append(r)
                print(f"{mix} {r['size']}: {r['recorded_s']} s in {r['chunks']} chunks, derived in {r['wall_s']} s")
    head = ("mix", "lines/m", "size", "decode", "activity", "thumbs", "text", "total", "target", "", "recall", "prec.")
    print("\n" + " ".join(f"{h:>8}" for h in head))
    for r in results:
        c, h = Counter(r["cpu_min_per_hour"]), int(r["size"].split("x")[1])
        target = TARGET.get(h)
        verdict = "" if target is None else ("PASS" if r["total_cpu_min_per_hour"] <= target else "FAIL")
        cells = [r["mix"], r["new_lines_per_min"], r["size"], *(f"{c[k]:.2f}" for k in ("decode", "activity"))]
        cells += [f"{c['thumbnails']:.2f}", f"{c['text']:.2f}", f"{r['total_cpu_min_per_hour']:.2f}", target or "-"]
        cells += [verdict, f"{r['word_recall']:.1%}", f"{r['word_precision']:.1%}"]
        print(" ".join(f"{x:>8}" for x in cells))
    print("(CPU-minutes per recorded hour; text recall/precision over distinct words shown vs found)")
    print(json.dumps({"insight": results, "fps": args.fps, "minutes": args.minutes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
