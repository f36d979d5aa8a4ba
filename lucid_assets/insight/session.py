"""Deriving a session's insight records from its stored chunks (no Dagster: the assets in
`lucid_assets/defs/insight` run this for their partitions, the live follower for many sessions).

Chunks are derived in order, each from the state the previous one left (`derive.State`); a chunk
whose previous record is missing starts from a fresh state (it reads its first frame whole). Which
chunks are missing or stale is a directory listing (`records.py`). Nothing here logs screen content:
counts and CPU seconds only."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import playback
from ..core.states import Insight
from ..keyring import Keyring
from ..store import ChunkStore
from . import derive, index, ocr
from .records import Records, pack, unpack, version_tag

VERSIONS = {
    Insight.ACTIVITY: derive.ACTIVITY_VERSION,
    Insight.THUMBNAILS: derive.THUMBS_VERSION,
    Insight.TEXT: derive.TEXT_VERSION,
}
PRODUCTS = tuple(VERSIONS)


def index_path(store: ChunkStore) -> Path:
    """The keyed-token index of every session's screen text: beside a local store's sessions, under
    data_dir with a bucket (settings.insight_index_path)."""
    return store.index_path


def open_index(store: ChunkStore) -> index.TextIndex:
    path = index_path(store)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return index.TextIndex(path)


def todo(store: ChunkStore, session_id: str, products=PRODUCTS, *, new_only: bool = False) -> dict[Insight, list[int]]:
    """Per product, the stored chunks without a record of the current version (in seq order); with
    new_only, only those without a record of any version (the live follower's: re-deriving what an
    older derivation made is the backfill's)."""
    stored = store.stored_seqs(session_id)
    recs = Records(store, session_id)
    out = {}
    for p in products:
        have = set(recs.versions(p)) if new_only else recs.current(p, VERSIONS[p])
        if missing := [s for s in stored if s not in have]:
            out[p] = missing
    return out


def stale(store: ChunkStore, session_id: str, products=PRODUCTS) -> bool:
    """Some chunk has a record of another version only (a changed derivation: what a backfill is
    for), as opposed to a chunk not derived yet (what the live follower is for)."""
    recs = Records(store, session_id)
    for p in products:
        current = version_tag(VERSIONS[p])
        if any(current not in tags for tags in recs.versions(p).values()):
            return True
    return False


def follow_candidates(store: ChunkStore, sessions: Iterable[str]) -> dict[str, dict[Insight, list[int]]]:
    """What the live follower has to do: these sessions' stored chunks not derived yet (the caller
    names the live sessions and those that changed state recently: finalized or sealed meanwhile).
    Older sessions are the backfill's (`backfill_candidates`). Looks at no other session: on a
    bucket, each one looked at costs a listing or two."""
    out = {}
    for sid in sorted(set(sessions)):
        if store.has_data_key(sid) and (work := todo(store, sid, new_only=True)):
            out[sid] = work
    return out


def backfill_candidates(store: ChunkStore, exclude: set[str]) -> dict[Insight, list[str]]:
    """Per product, the sessions (not in `exclude`: the live ones) with a chunk whose record is
    missing or of another version: what a backfill re-derives."""
    out: dict[Insight, list[str]] = {}
    for sid in store.sessions():
        if sid in exclude or not store.has_data_key(sid):
            continue
        for p in todo(store, sid):
            out.setdefault(p, []).append(sid)
    return out


@dataclass
class Report:
    """What deriving one session did (no screen content)."""

    session_id: str
    chunks: int = 0
    lines: int = 0
    thumbnails: int = 0
    undecodable: int = 0
    active_seconds: float = 0.0
    text_seconds: float = 0.0  # active seconds in which a line appeared
    reads: Counter = field(default_factory=Counter)
    cpu: Counter = field(default_factory=Counter)
    error: str | None = None
    text_seqs: list[int] = field(default_factory=list)  # chunks whose text record this run wrote

    def merge(self, other: Report) -> None:
        for name in ("chunks", "lines", "thumbnails", "undecodable", "active_seconds", "text_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reads.update(other.reads)
        self.cpu.update(other.cpu)
        if other.error and not self.error:
            self.error = f"{other.session_id}: {other.error}"

    def metadata(self, product: Insight) -> dict:
        meta = {"chunks_derived": self.chunks, "undecodable_chunks": self.undecodable}
        if product == Insight.TEXT:
            meta |= {
                "lines_found": self.lines,
                "band_reads": self.reads["band"],
                "rows_read": self.reads["rows"],
                "ocr_cpu_s": round(self.cpu["text"], 3),
            }
        elif product == Insight.ACTIVITY:
            meta |= {"active_seconds": round(self.active_seconds, 1), "cpu_s": round(self.cpu["activity"], 3)}
        else:
            meta |= {"thumbnails": self.thumbnails, "cpu_s": round(self.cpu["thumbnails"], 3)}
        meta["decode_cpu_s"] = round(self.cpu["decode"], 3)
        return meta


class SessionDeriver:
    """Derives the chunks of one session it is given, in order, sealing every record."""

    def __init__(self, store: ChunkStore, keyring: Keyring, session_id: str, text_index: index.TextIndex | None):
        self.store, self.keyring, self.sid = store, keyring, str(uuid.UUID(session_id))
        self.recs, self.index = Records(store, self.sid), text_index

    def _t0(self, first: bytes | memoryview | None) -> int:
        """The session's time zero: chunk 0's first presentation time (`first`: its plaintext, when
        it is at hand); 0 when chunk 0 is gone or is not video."""
        try:
            if first is None:
                first = next(playback.plain_chunks(self.store, self.keyring, self.sid, [0]))
            return derive.first_pts_ms(first)
        except (playback.DamagedChunk, derive.NotDecodable):
            return 0

    def _state(self, dek: bytes, seq: int) -> tuple[derive.State, int | None]:
        """The state chunk seq-1 left, and the session's time zero it recorded."""
        if seq == 0:
            return derive.State(), None
        raw = self.recs.read(Insight.STATE, seq - 1, derive.STATE_VERSION, dek=dek)
        if raw is None:
            return derive.State(), None
        head, blobs = unpack(raw)
        return derive.State.from_record(head, blobs), head.get("t0")

    def run(self, products: set[Insight], seqs: list[int], *, deadline: float | None = None) -> Report:
        rep = Report(self.sid)
        dek = self.store.data_key(self.sid, self.keyring)
        if dek is None:
            rep.error = "no data key (crypto-shredded)"
            return rep
        key = index.search_key(dek, self.sid) if Insight.TEXT in products and self.index else None
        reader = ocr.Reader(threads=1) if Insight.TEXT in products else None
        dv = derive.Deriver(reader, thumbs=Insight.THUMBNAILS in products)
        state, t0 = self._state(dek, seqs[0]) if seqs else (derive.State(), None)
        prev = seqs[0] - 1 if seqs else -1
        chunks = playback.plain_chunks(self.store, self.keyring, self.sid, seqs)  # each tag checked
        for seq in seqs:
            if deadline is not None and time.monotonic() > deadline:
                break
            if seq != prev + 1:  # a gap in what we were given: the state of seq-1 is on disk, or none
                state, t0 = self._state(dek, seq)
            prev = seq
            try:
                plain = next(chunks)
            except playback.DamagedChunk as exc:
                rep.error = str(exc)
                break
            if t0 is None:
                t0 = self._t0(plain if seq == 0 else None)
            out = dv.chunk(plain, t0, state)
            self._write(dek, key, seq, products, out, t0)
            self._count(rep, out)
            if Insight.TEXT in products:
                rep.text_seqs.append(seq)
            state = out.state
        return rep

    def _write(self, dek, key, seq: int, products: set[Insight], out: derive.Derived, t0: int) -> None:
        span = {"start": out.start, "end": out.end, "width": out.width, "height": out.height, "error": out.error}
        if Insight.ACTIVITY in products:
            body = pack({**span, "samples": out.samples})
            self.recs.write(Insight.ACTIVITY, seq, VERSIONS[Insight.ACTIVITY], body, dek=dek)
        if Insight.THUMBNAILS in products:
            body = pack({**span, "times": [t for t, _ in out.thumbs]}, [j for _, j in out.thumbs])
            self.recs.write(Insight.THUMBNAILS, seq, VERSIONS[Insight.THUMBNAILS], body, dek=dek)
        if Insight.TEXT in products:
            body = pack({**span, "lines": out.lines})
            self.recs.write(Insight.TEXT, seq, VERSIONS[Insight.TEXT], body, dek=dek)
            if self.index is not None:
                self.index.put_chunk(self.sid, seq, key, index.words(out.lines))
        head, blobs = out.state.to_record()
        self.recs.write(Insight.STATE, seq, derive.STATE_VERSION, pack({**head, "t0": t0}, blobs), dek=dek)
        if seq > 0:  # only the newest state is read again (by the next chunk): the older one goes
            self.store.objects.delete(self.recs.key(Insight.STATE, seq - 1, derive.STATE_VERSION))

    @staticmethod
    def _count(rep: Report, out: derive.Derived) -> None:
        rep.chunks += 1
        rep.undecodable += out.error is not None and not out.samples
        rep.lines += len(out.lines)
        rep.thumbnails += len(out.thumbs)
        rep.reads.update(out.reads)
        rep.cpu.update(out.cpu)
        active = {t // 1000 for t, score in out.samples if score > 0}
        rep.active_seconds += len(active)
        rep.text_seconds += len(active & {line["t"] // 1000 for line in out.lines})
