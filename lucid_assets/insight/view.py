"""The read side of a session's insight records: its screen text, activity, seek previews, and the
search across sessions. The storage service serves these (it holds the keys); every answer is
built from sealed records in memory, nothing of the screen is written anywhere in plaintext."""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image

from ..core.states import Insight
from ..keyring import Keyring
from ..store import ChunkStore
from . import derive, index
from .records import Records, unpack
from .session import VERSIONS

SPRITE_COLUMNS, SPRITE_ROWS = 10, 10  # thumbnails per sprite sheet: 100 (8 min 20 s at one per 5 s)
IDLE_SECONDS = 5


class NoKey(Exception):
    """The session has no data key: crypto-shredded, nothing of it can be read."""


@dataclass
class SessionView:
    store: ChunkStore
    keyring: Keyring
    session_id: str
    dek: bytes | None = None  # the session's data key when the caller has it already

    def __post_init__(self):
        self.session_id = str(uuid.UUID(self.session_id))
        self.recs = Records(self.store, self.session_id)
        if self.dek is None:
            self.dek = self.store.data_key(self.session_id, self.keyring)
        if self.dek is None:
            raise NoKey(self.session_id)

    def _records(self, product: Insight) -> Iterable[tuple[int, dict, list[bytes]]]:
        """Every chunk's record, of the current derivation where it has one, else an older one's."""
        for seq in sorted(self.recs.versions(product)):
            raw = self.recs.read_latest(product, seq, VERSIONS[product], dek=self.dek)
            if raw is not None:
                head, blobs = unpack(raw)
                yield seq, head, blobs

    def derived(self) -> dict[str, int]:
        """Per product, how many chunks have a record (of any derivation: readers show older ones)."""
        return {p.value: len(self.recs.versions(p)) for p in VERSIONS}

    def text(self, start_ms: int = 0, end_ms: int | None = None) -> list[dict]:
        """Every line that appeared in [start_ms, end_ms), with its time, box, confidence and words."""
        out = []
        for seq, head, _ in self._records(Insight.TEXT):
            if head["end"] < start_ms or (end_ms is not None and head["start"] >= end_ms):
                continue
            for line in head["lines"]:
                if start_ms <= line["t"] and (end_ms is None or line["t"] < end_ms):
                    out.append({"seq": seq, **line})
        return out

    def chunk_lines(self, seq: int) -> list[dict]:
        raw = self.recs.read_latest(Insight.TEXT, seq, VERSIONS[Insight.TEXT], dek=self.dek)
        return unpack(raw)[0]["lines"] if raw is not None else []

    def activity(self, idle_seconds: int = IDLE_SECONDS) -> dict:
        """A change score per second (the most that changed in any sample of it, 0-1), the idle spans
        (nothing changed for at least idle_seconds) and the scene changes (most of the screen at once)."""
        per: dict[int, float] = {}
        scenes = []
        for _, head, _ in self._records(Insight.ACTIVITY):
            for t, score in head["samples"]:
                per[t // 1000] = max(per.get(t // 1000, 0.0), score)
                if score >= derive.SCENE:
                    scenes.append(t)
        n = max(per) + 1 if per else 0
        seconds = [round(per.get(i, 0.0), 4) for i in range(n)]
        idle, run = [], None
        for i, score in enumerate([*seconds, 1.0]):
            if score == 0 and i < n:
                run = i if run is None else run
            elif run is not None:
                if i - run >= idle_seconds:
                    idle.append([run * 1000, i * 1000])
                run = None
        active = sum(1 for s in seconds if s > 0)
        return {
            "seconds": seconds,
            "idle": idle,
            "scenes": scenes,
            "active_seconds": active,
            "idle_seconds": idle_seconds,
        }

    def thumbnails(self) -> list[tuple[int, bytes]]:
        out = []
        for _, head, blobs in self._records(Insight.THUMBNAILS):
            out += zip(head["times"], blobs, strict=True)
        return out

    def vtt(self, sprite_url: str) -> str:
        """A WebVTT thumbnail track: each cue points at its tile of a sprite sheet (`#xywh=`)."""
        thumbs = self.thumbnails()
        lines = ["WEBVTT", ""]
        for i, (t, jpeg) in enumerate(thumbs):
            w, h = Image.open(io.BytesIO(jpeg)).size
            end = thumbs[i + 1][0] if i + 1 < len(thumbs) else t + derive.THUMB_MS
            sheet, cell = divmod(i, SPRITE_COLUMNS * SPRITE_ROWS)
            x, y = (cell % SPRITE_COLUMNS) * w, (cell // SPRITE_COLUMNS) * h
            lines += [f"{_ts(t)} --> {_ts(end)}", f"{sprite_url.format(sheet=sheet)}#xywh={x},{y},{w},{h}", ""]
        return "\n".join(lines)

    def sprite(self, sheet: int) -> bytes | None:
        """Sprite sheet `sheet` (100 thumbnails, 10x10), built in memory from the sealed thumbnails."""
        per = SPRITE_COLUMNS * SPRITE_ROWS
        thumbs = self.thumbnails()[sheet * per : (sheet + 1) * per]
        if not thumbs:
            return None
        tiles = [Image.open(io.BytesIO(j)).convert("RGB") for _, j in thumbs]
        w, h = tiles[0].size
        rows = -(-len(tiles) // SPRITE_COLUMNS)
        img = Image.new("RGB", (w * min(SPRITE_COLUMNS, len(tiles)), h * rows))
        for i, tile in enumerate(tiles):
            img.paste(tile, ((i % SPRITE_COLUMNS) * w, (i // SPRITE_COLUMNS) * h))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=75)
        return buf.getvalue()


def summary_row(view: SessionView, indexed_chunks: int) -> dict:
    """The session's row of lucid.session_insight (counts and times, no screen content)."""
    act = view.activity(IDLE_SECONDS)
    lines = view.text()
    derived = view.derived()
    return {
        "session_id": view.session_id,
        "derived_at": datetime.now(UTC),
        "chunks_derived": derived[Insight.TEXT.value],
        "recorded_seconds": len(act["seconds"]),
        "active_seconds": act["active_seconds"],
        "idle_seconds": sum(e - s for s, e in act["idle"]) // 1000,
        "idle_spans": len(act["idle"]),
        "scene_changes": len(act["scenes"]),
        "text_lines": len(lines),
        "text_seconds": len({ln["t"] // 1000 for ln in lines}),
        "thumbnails": len(view.thumbnails()),
        "indexed_chunks": indexed_chunks,
        "activity_version": VERSIONS[Insight.ACTIVITY],
        "thumbnails_version": VERSIONS[Insight.THUMBNAILS],
        "text_version": VERSIONS[Insight.TEXT],
    }


def _ts(ms: int) -> str:
    h, rem = divmod(max(0, ms), 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


class SearchKeys:
    """Session -> search key, derived from each session's DEK once and kept in this process (the
    storage service). Forgetting a session (crypto-shred) drops its key."""

    def __init__(self, store: ChunkStore, keyring: Keyring, limit: int = 200_000):
        self.store, self.keyring, self.limit = store, keyring, limit
        self._keys: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_ids: Iterable[str]) -> dict[str, bytes]:
        out = {}
        for sid in session_ids:
            with self._lock:
                key = self._keys.get(sid)
            if key is None:
                dek = self.store.data_key(sid, self.keyring)
                if dek is None:
                    continue  # shredded: unsearchable
                key = index.search_key(dek, sid)
                with self._lock:
                    self._keys[sid] = key
                    while len(self._keys) > self.limit:
                        self._keys.popitem(last=False)
            out[sid] = key
        return out

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._keys.pop(session_id, None)


def search(
    store: ChunkStore,
    keyring: Keyring,
    text_index: index.TextIndex,
    keys: Mapping[str, bytes],
    query: index.Query,
    limit: int = 50,
) -> list[dict]:
    """Hits (session, seq, time, line, box) for the query over the sessions in `keys` (in the
    order given: newest first gives the newest hits). The index proposes chunks; each is checked
    against its decrypted text (whole words, real prefixes, adjacency), line by line first and
    then the chunk's text as a whole (terms split over two lines)."""
    hits: list[dict] = []
    found = text_index.match(query, keys, limit_chunks=max(limit * 4, 200))
    for sid in keys:
        if sid not in found:
            continue
        try:
            view = SessionView(store, keyring, sid)
        except NoKey:
            continue
        for seq in found[sid]:
            lines = view.chunk_lines(seq)
            good = [ln for ln in lines if query.matches(ln["text"])]
            if not good and lines and query.matches("\n".join(ln["text"] for ln in lines)):
                good = lines[:1]
            for ln in good:
                hits.append({"session_id": sid, "seq": seq, "t": ln["t"], "text": ln["text"], "box": ln["box"]})
                if len(hits) >= limit:
                    return hits
    return hits
