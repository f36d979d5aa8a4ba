#!/usr/bin/env python3
"""Search index size and speed (issue 15), measured here in one run.

A synthetic corpus of --hours recorded hours (sessions of --session-minutes, chunks of
--chunk-seconds): per chunk, the words OCR would give for the lines that appeared in it, about
--lines-per-minute new lines of --words-per-line words; 85 % from a Zipf(1.15) vocabulary of
--vocab words (random letters, 3-10 long), 15 % unique-ish ids, numbers and host names (from 5 M).
A chunk's postings are its distinct tokens.

1. Build: every session through `TextIndex.put_chunks` (one call per session, as a backfill would),
   with and without prefix tokens: wall time, CPU-s, DB size, size per recorded hour. The built
   files are cached under --cache keyed by the parameters, so a rerun skips the build.
2. Layout: the postings of the first --layout-sessions sessions copied into the chosen layout
   (one row per session and token, seqs packed) and into one row per (token, session, seq).
   Live indexing: --incremental-sessions sessions through one put_chunk per chunk, then every
   chunk replaced (a rerun with a new OCR model): ms and CPU-ms per chunk.
3. Queries through `TextIndex.match` with ALL sessions' search keys (derived once up front, as the
   storage service would cache them), limit 1000 chunks: words drawn by occurrence (common), words
   drawn uniformly from vocabulary and ids (mostly rare or absent), 2-word phrases of adjacent words,
   3-5 character prefixes, and two words that must both occur (AND): p50 / p95 / max, and the share
   of phrase hits the chunk's text confirms (the index knows co-occurrence in a chunk only).
   Target: word p95 <= 200 ms.

Usage: python bench/search.py [--hours 1000] [--queries 200] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from lucid_assets.insight.index import Kind, TextIndex, parse_query, search_key

IDS = 5_000_000


class WordsOnlyIndex(TextIndex):
    """The same index without prefix tokens: what prefixes cost."""

    _terms_of = staticmethod(lambda w: [(Kind.WORD, w)])


class Corpus:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.sessions = int(args.hours * 60 / args.session_minutes)
        self.chunks = int(args.session_minutes * 60 / args.chunk_seconds)
        self.lines = max(1, round(args.lines_per_minute * args.chunk_seconds / 60))  # new lines per chunk
        r = np.random.default_rng(15)
        lengths = r.integers(3, 11, args.vocab)
        letters = r.integers(0, 26, int(lengths.sum()))
        vocab, at = [], 0
        for n in lengths.tolist():
            vocab.append("".join(chr(97 + c) for c in letters[at : at + n].tolist()))
            at += n
        self.vocab = vocab
        self.ids = {
            sid: str(uuid.UUID(bytes=hashlib.sha256(b"s%d" % sid).digest()[:16])) for sid in range(self.sessions)
        }

    def word(self, w: int) -> str:
        if w < self.a.vocab:
            return self.vocab[w]
        n = w - self.a.vocab
        return (str(10_000 + n * 7), f"srv{n:x}", f"cust{n % 100_000}x{n // 100_000}")[n % 3]

    def session(self, s: int) -> np.ndarray:
        """Word numbers of session s, shaped (chunks, lines per chunk, words per line)."""
        r = np.random.default_rng(1000 + s)
        shape = (self.chunks, self.lines, self.a.words_per_line)
        z = np.minimum(r.zipf(1.15, shape) - 1, self.a.vocab - 1)
        ids = self.a.vocab + r.integers(0, IDS, shape)
        return np.where(r.random(shape) < 0.15, ids, z)

    def chunk_text(self, words: np.ndarray) -> str:
        return "\n".join(" ".join(self.word(w) for w in line) for line in words.tolist())


def build(corpus: Corpus, path: Path, cls: type[TextIndex], keys: dict[str, bytes]) -> dict:
    stats = path.with_suffix(".json")
    if path.exists() and stats.exists():
        return json.loads(stats.read_text()) | {"cached": True}
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    ix = cls(path)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(corpus.sessions):
        words = corpus.session(s)
        chunks = {seq: [corpus.word(w) for w in np.unique(words[seq]).tolist()] for seq in range(corpus.chunks)}
        ix.put_chunks(corpus.ids[s], keys[corpus.ids[s]], chunks)
        if s % 200 == 199:
            done = f"{s + 1}/{corpus.sessions} sessions, {time.perf_counter() - t0:.0f} s"
            print(f"    {cls.__name__}: {done}", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ix._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {t: ix._db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("postings", "chunks")}
    postings = sum(len(b) // 2 for (b,) in ix._db.execute("SELECT refs FROM chunks"))
    ix.close()
    size = path.stat().st_size
    res = {
        "build_s": round(wall, 1),
        "build_cpu_s": round(cpu, 1),
        "db_mb": round(size / 2**20, 1),
        "mb_per_hour": round(size / 2**20 / corpus.a.hours, 3),
        "rows": counts["postings"],
        "chunk_rows": counts["chunks"],
        "postings": postings,
        "bytes_per_posting": round(size / max(postings, 1), 1),
    }
    stats.write_text(json.dumps(res))
    return res


def layout_compare(path: Path, sessions: int) -> dict:
    """Postings of the first sessions in the chosen layout and as one row per (token, session, seq)."""
    src = sqlite3.connect(path)
    rows = src.execute("SELECT sid, token, seqs FROM postings WHERE sid <= ?", (sessions,)).fetchall()
    src.close()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, ddl, data in (
            (
                "session_token_packed_seqs",
                "CREATE TABLE p (sid INTEGER, token BLOB, seqs BLOB, PRIMARY KEY (sid, token)) WITHOUT ROWID",
                rows,
            ),
            (
                "token_session_seq_rows",
                "CREATE TABLE p (token BLOB, sid INTEGER, seq INTEGER, PRIMARY KEY (token, sid, seq)) WITHOUT ROWID",
                [(t, sid, q) for sid, t, b in rows for q in _seqs(b)],
            ),
        ):
            db = sqlite3.connect(Path(d) / f"{name}.sqlite")
            db.execute(ddl)
            db.executemany(f"INSERT INTO p VALUES ({','.join('?' * len(data[0]))})", sorted(data))
            db.commit()
            db.execute("VACUUM")
            db.close()
            out[name] = {"rows": len(data), "mb": round((Path(d) / f"{name}.sqlite").stat().st_size / 2**20, 2)}
    return out


def _seqs(blob: bytes) -> list[int]:
    return np.frombuffer(blob[1:], np.uint16 if blob[0] == 2 else np.uint32).tolist()


def query_sets(corpus: Corpus, n: int) -> dict[str, list[str]]:
    r = random.Random(99)
    sets: dict[str, list[str]] = {"word_common": [], "word_rare": [], "phrase2": [], "prefix": [], "and2": []}
    for _ in range(n):
        words = corpus.session(r.randrange(corpus.sessions))
        seq, line = r.randrange(corpus.chunks), r.randrange(corpus.lines)
        pos = r.randrange(corpus.a.words_per_line - 1)
        a, b = (corpus.word(w) for w in words[seq, line, pos : pos + 2].tolist())
        sets["word_common"].append(a)
        rare = r.randrange(corpus.a.vocab) if r.random() < 0.85 else corpus.a.vocab + r.randrange(IDS)
        sets["word_rare"].append(corpus.word(rare))
        sets["phrase2"].append(f'"{a} {b}"')
        sets["prefix"].append(a[: r.randint(3, 5)] + "*")
        other = words[r.randrange(corpus.chunks), 0, 0]
        sets["and2"].append(f"{a} {corpus.word(int(other))}")
    return sets


def incremental(corpus: Corpus, keys: dict[str, bytes], sessions: int) -> dict:
    """Live indexing (one put_chunk per chunk as it is derived) into a fresh file, then a rerun that
    replaces every chunk of those sessions with the next session's words (a new OCR model)."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        ix = TextIndex(Path(d) / "live.sqlite")
        for name, shift in (("append_ms_per_chunk", 0), ("replace_ms_per_chunk", 1)):
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(sessions):
                words = corpus.session(s + shift)
                for seq in range(corpus.chunks):
                    ix.put_chunk(corpus.ids[s], seq, keys[corpus.ids[s]], [corpus.word(w) for w in words[seq].flat])
            n = sessions * corpus.chunks
            out[name] = round((time.perf_counter() - t0) * 1000 / n, 2)
            out[name.replace("_ms_", "_cpu_ms_")] = round((time.process_time() - c0) * 1000 / n, 2)
        ix.close()
    return out


def run_queries(corpus: Corpus, path: Path, keys: dict[str, bytes], sets: dict[str, list[str]]) -> dict:
    ix = TextIndex(path)
    by_id = {v: k for k, v in corpus.ids.items()}
    out = {}
    for name, qs in sets.items():
        lat, hits, confirmed, checked = [], [], 0, 0
        for q in qs:
            query = parse_query(q)
            t0 = time.perf_counter()
            found = ix.match(query, keys)
            lat.append(time.perf_counter() - t0)
            hits.append(sum(map(len, found.values())))
            if name == "phrase2":  # what the caller's check against the chunk's text keeps
                for session, seqs in list(found.items())[:20]:
                    words = corpus.session(by_id[session])
                    for seq in seqs[:20]:
                        checked += 1
                        confirmed += query.matches(corpus.chunk_text(words[seq]))
        ms = np.array(lat) * 1000
        out[name] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1),
            "mean_hits": round(float(np.mean(hits)), 1),
            "zero_hit_queries": hits.count(0),
        }
        if checked:
            out[name]["text_confirms_share"] = round(confirmed / checked, 3)
    ix.close()
    return out


# long: the benchmark's script, one step after another (build, size, live put cost, query classes, summary)
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=1000)
    ap.add_argument("--session-minutes", type=float, default=30)
    ap.add_argument("--chunk-seconds", type=float, default=6)
    ap.add_argument("--lines-per-minute", type=float, default=20)
    ap.add_argument("--words-per-line", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--layout-sessions", type=int, default=100)
    ap.add_argument("--incremental-sessions", type=int, default=10)
    ap.add_argument("--no-words-only", action="store_true", help="skip the build without prefix tokens")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lucid-search-bench")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    corpus = Corpus(args)
    params = [args.hours, args.session_minutes, args.chunk_seconds, args.lines_per_minute, args.words_per_line]
    tag = hashlib.sha256(json.dumps(params + [args.vocab, 1]).encode()).hexdigest()[:12]
    args.cache.mkdir(parents=True, exist_ok=True)
    print(
        f"search bench: {args.hours:g} h = {corpus.sessions} sessions x {corpus.chunks} chunks of "
        f"{args.chunk_seconds:g} s, {corpus.lines} new lines x {args.words_per_line} words per chunk"
    )
    t0 = time.perf_counter()
    deks = {sid: hashlib.sha256(b"dek" + sid.encode()).digest() for sid in corpus.ids.values()}
    keys = {sid: search_key(dek, sid) for sid, dek in deks.items()}
    results: dict = {"params": vars(args) | {"cache": str(args.cache), "json": str(args.json)}}
    results["key_derivation_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    builds = {"with_prefixes": (TextIndex, args.cache / f"{tag}-prefix.sqlite")}
    if not args.no_words_only:
        builds["words_only"] = (WordsOnlyIndex, args.cache / f"{tag}-words.sqlite")
    results["build"] = {name: build(corpus, path, cls, keys) for name, (cls, path) in builds.items()}
    print("\n  | index | build s | CPU-s | DB MB | MB per recorded h | rows | postings | B/posting |")
    print("  |---|---|---|---|---|---|---|---|")
    for name, b in results["build"].items():
        print(
            f"  | {name}{' (cached)' if b.get('cached') else ''} | {b['build_s']} | {b['build_cpu_s']} | "
            f"{b['db_mb']} | {b['mb_per_hour']} | {b['rows']} | {b['postings']} | {b['bytes_per_posting']} |"
        )
    results["layout"] = layout_compare(builds["with_prefixes"][1], args.layout_sessions)
    print(f"\n  layout, postings of the first {args.layout_sessions} sessions (VACUUMed):")
    for name, v in results["layout"].items():
        print(f"  - {name}: {v['rows']} rows, {v['mb']} MB")
    n = min(args.incremental_sessions, corpus.sessions - 1)
    results["incremental"] = inc = incremental(corpus, keys, n)
    print(
        f"\n  put_chunk one chunk at a time ({n} sessions x {corpus.chunks} chunks, prefixes on): "
        f"append {inc['append_ms_per_chunk']} ms ({inc['append_cpu_ms_per_chunk']} CPU-ms) per chunk, "
        f"replace {inc['replace_ms_per_chunk']} ms ({inc['replace_cpu_ms_per_chunk']} CPU-ms) per chunk"
    )
    sets = query_sets(corpus, args.queries)
    results["queries"] = run_queries(corpus, builds["with_prefixes"][1], keys, sets)
    print(f"\n  match(), all {corpus.sessions} sessions' keys, limit 1000 chunks, {args.queries} queries each")
    print("  | queries | p50 ms | p95 ms | max ms | mean hits | no hit | phrase hits the text confirms |")
    print("  |---|---|---|---|---|---|---|")
    for name, q in results["queries"].items():
        conf = q.get("text_confirms_share", "")
        print(
            f"  | {name} | {q['p50_ms']} | {q['p95_ms']} | {q['max_ms']} | {q['mean_hits']} | "
            f"{q['zero_hit_queries']} | {conf} |"
        )
    p95 = results["queries"]["word_common"]["p95_ms"]
    print(f"\n  {'MET ' if p95 <= 200 else 'MISS'} word p95 <= 200 ms: {p95} ms (common words)")
    print(f"  load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} after", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
