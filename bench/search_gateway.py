#!/usr/bin/env python3
"""Search latency through the gateway over --hours recorded hours (issue 15), measured here in one run.

Target: "Search: p95 <= 200 ms for a word over 1,000 recorded hours of indexed text (synthetic
corpus), through the gateway."

1. Build (cached under --cache keyed by the parameters; a rerun skips it): the real platform
   (pipeline + storage + api, no Dagster) on a data dir; --hours / 0.5 sessions created through the
   gateway (POST /v1/sessions, admin key, label team=a|b); per session a real DEK
   (`ChunkStore.data_key(create=True)`), per 10 s chunk a real sealed text record as the deriver
   writes it (head with start/end/size/lines/words, `Records` naming, LSC1 sidecar under the DEK),
   and the session's words in the index through one `TextIndex.put_chunks` call. The words are
   bench/search.py's corpus (Zipf vocabulary + ids), 20 new lines of 8 words a minute. The first
   --fsync-sessions sessions' records go through `Records.write` (atomic_write: fsync file and
   directory); the rest are the same bytes at the same names without fsync (bench only): both timed.
2. Measure (platform started on the built data dir, a viewer key, one warm-up search that fills
   storage's search-key cache, timed as "cold"): GET /v1/search (one httpx client, limit 20) for
   common words, rare words, 2-word phrases, prefixes, two words (AND), and common words with
   label=team=a; the same q straight to storage's POST /search (the server-side share); and, in
   this process, the storage code path split: list sessions, search keys (warm), index match,
   record decryption + checks; plus the gateway's per-hit-session name lookups (pipeline GET) and
   the pipeline listing a label filter makes. CPU-ms per search of each service (from /proc, each
   path run as its own loop) next to the latencies: on a shared 2-core machine the CPU is the
   load-independent part.

Here (2 shared cores): the 1000 h build takes ~8 min (2,000 sessions created in ~30 s, index
put_chunks ~330 s of it), the measurement ~3.5 min; a cached rerun only the latter (+ ~20 s when
TEXT_VERSION changed: the cached records are renamed). --quick (50 h) takes ~1.5 min.

Usage: python bench/search_gateway.py [--hours 1000 | --quick] [--queries 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np

from bench.capacity import tree_cpu
from bench.search import Corpus, query_sets
from lucid_assets.core import envelope
from lucid_assets.core.states import Insight
from lucid_assets.insight.index import parse_query, search_key, tokens
from lucid_assets.insight.records import KINDS, Records, pack, version_tag
from lucid_assets.insight.session import VERSIONS, open_index
from lucid_assets.insight.view import SearchKeys, search
from lucid_assets.keyring import Keyring
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import start_platform

ADMIN = "bench-admin-key-0123456789abcdef"
RUN = ("pipeline", "storage", "api")
LIMIT = 20  # the gateway's default page of hits
CHUNK_MS = 10_000
FORMAT = 1  # bump when the built corpus changes shape


def ms_stats(values: list[float]) -> dict:
    a = np.array(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def start(data: Path) -> Platform:
    p = Platform(
        data_dir=data,
        ports={s: free_port() for s in SERVICES},
        run=RUN,
        webserver=False,
        daemon=False,
        extra_env={"LUCID_API_KEY": ADMIN},
    )
    return start_platform(p)


def text_head(corpus: Corpus, words: np.ndarray, seq: int) -> dict:
    """A text record's head as the deriver writes it: the chunk's span and the lines that appeared."""
    start_ms, lines = seq * CHUNK_MS, []
    step = CHUNK_MS // max(1, len(words))
    for i, line in enumerate(words.tolist()):
        x, y, ws = 16, 40 + 20 * ((seq * len(words) + i) % 30), []
        for w in line:
            word = corpus.word(w)
            ws.append([word, x, y, 9 * len(word), 16, 0.93])
            x += 9 * len(word) + 9
        text = " ".join(w[0] for w in ws)
        lines.append({"t": start_ms + i * step, "text": text, "box": [16, y, x - 25, 16], "conf": 0.93, "words": ws})
    return {"start": start_ms, "end": start_ms + CHUNK_MS, "width": 1280, "height": 720, "error": None, "lines": lines}


def write_unsynced(recs: Records, seq: int, body: bytes, dek: bytes) -> int:
    """Records.write's bytes at Records.write's name, without atomic_write's fsyncs (bench only)."""
    blob = envelope.seal_sidecar(
        body, dek=dek, kind=KINDS[Insight.TEXT], session_id=uuid.UUID(recs.session_id), seq=seq
    )
    fd = os.open(recs.path(Insight.TEXT, seq, VERSIONS[Insight.TEXT]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, blob)
    finally:
        os.close(fd)
    return len(blob)


def retag(data: Path, ids: list[str], tag: str) -> float:
    """The cached text records under the current TEXT_VERSION's file name: the version is only in the
    name (not in the sealed bytes), and only records of the current version are searched."""
    t0 = time.perf_counter()
    store = ChunkStore.from_settings(Settings(data_dir=data))
    for sid in ids:
        d = Records(store, sid).dir(Insight.TEXT)
        for name in os.listdir(d):
            seq, old, ext = name.split(".")
            if old != tag:
                os.rename(d / name, d / f"{seq}.{tag}.{ext}")
    return round(time.perf_counter() - t0, 1)


def create_sessions(p: Platform, n: int) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    ids = []
    with httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as api:
        for s in range(n):
            body = {"name": f"search bench {s:05d}", "labels": {"team": "ab"[s % 2]}, "source": {"kind": "push"}}
            r = api.post("/v1/sessions", json=body)
            r.raise_for_status()
            ids.append(r.json()["id"])
            if s % 500 == 499:
                print(f"    {s + 1}/{n} sessions created, {time.perf_counter() - t0:.0f} s", flush=True)
    return ids, time.perf_counter() - t0


# long: the build's steps per session (DEK, records with and without fsync, index), timed apart
def build(args: argparse.Namespace, corpus: Corpus, p: Platform, data: Path) -> dict:
    ids, create_s = create_sessions(p, corpus.sessions)
    store = ChunkStore.from_settings(Settings(data_dir=data))
    keyring = Keyring.load(Settings(data_dir=data), with_signing=False)
    ix = open_index(store)
    t = {"dek": 0.0, "words": 0.0, "records_fsync": 0.0, "records_unsynced": 0.0, "index": 0.0}
    n_fsync = n_unsynced = record_bytes = 0
    t0 = time.perf_counter()
    for s, sid in enumerate(ids):
        a = time.perf_counter()
        dek = store.data_key(sid, keyring, create=True)
        b = time.perf_counter()
        t["dek"] += b - a
        words, recs, chunks = corpus.session(s), Records(store, sid), {}
        recs.dir(Insight.TEXT).mkdir(parents=True, exist_ok=True)
        synced = s < args.fsync_sessions
        for seq in range(corpus.chunks):
            a = time.perf_counter()
            body = pack(text_head(corpus, words[seq], seq))
            chunks[seq] = [corpus.word(w) for w in np.unique(words[seq]).tolist()]
            b = time.perf_counter()
            t["words"] += b - a
            if synced:
                recs.write(Insight.TEXT, seq, VERSIONS[Insight.TEXT], body, dek=dek)
                record_bytes += recs.path(Insight.TEXT, seq, VERSIONS[Insight.TEXT]).stat().st_size
                n_fsync += 1
                t["records_fsync"] += time.perf_counter() - b
            else:
                record_bytes += write_unsynced(recs, seq, body, dek)
                n_unsynced += 1
                t["records_unsynced"] += time.perf_counter() - b
        if s == 0:  # the corpus words are what the deriver's tokens() gives for these lines
            for seq in range(corpus.chunks):
                lines = text_head(corpus, words[seq], seq)["lines"]
                assert {w for ln in lines for w in tokens(ln["text"])} == set(chunks[seq]), seq
        a = time.perf_counter()
        ix.put_chunks(sid, search_key(dek, sid), chunks)
        t["index"] += time.perf_counter() - a
        if s % 200 == 199:
            print(f"    {s + 1}/{len(ids)} sessions built, {time.perf_counter() - t0:.0f} s", flush=True)
    ix._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ix.close()
    disk = 0
    for sid in ids:
        with os.scandir(Records(store, sid).dir(Insight.TEXT)) as it:
            disk += sum(e.stat().st_blocks * 512 for e in it)
    return {
        "sessions": len(ids),
        "chunks": len(ids) * corpus.chunks,
        "create_sessions_s": round(create_s, 1),
        "build_s": round(time.perf_counter() - t0, 1),
        "dek_s": round(t["dek"], 1),
        "words_and_pack_s": round(t["words"], 1),
        "index_put_s": round(t["index"], 1),
        "records_fsync": n_fsync,
        "record_ms_fsync": round(t["records_fsync"] * 1000 / max(n_fsync, 1), 3),
        "records_unsynced": n_unsynced,
        "record_ms_unsynced": round(t["records_unsynced"] * 1000 / max(n_unsynced, 1), 3),
        "records_s": round(t["records_fsync"] + t["records_unsynced"], 1),
        "records_mb": round(record_bytes / 2**20, 1),
        "records_disk_mb": round(disk / 2**20, 1),
        "index_mb": round(open_index(store).path.stat().st_size / 2**20, 1),
        "ids": ids,
    }


def queries(corpus: Corpus, n: int) -> dict[str, tuple[list[str], list[str]]]:
    """Query class -> (queries, label filters): bench/search.py's sets and a label-filtered word."""
    sets = query_sets(corpus, n)
    out = {name: (qs, []) for name, qs in sets.items()}
    out["word_label_team_a"] = (sets["word_common"], ["team=a"])
    return out


def cpu_ms(p: Platform) -> dict[str, float]:
    return {name: tree_cpu(proc.pid) * 1000 for name, proc in p.procs.items()}


# long: one query class through the gateway, straight to storage, and through the code path in process
def measure_class(ctx: dict, qs: list[str], labels: list[str]) -> dict:
    gw, st, p, n = ctx["gw"], ctx["st"], ctx["p"], len(qs)
    sessions = ctx["team_a"] if labels else None
    lat = {"gateway": [], "storage": [], "list": [], "keys": [], "match": [], "verify": []}
    searched, hits, hit_sessions = [], [], []
    cpu0 = cpu_ms(p)
    for q in qs:  # each loop apart, so the services' CPU per search is known per path
        t0 = time.perf_counter()
        r = gw.get("/v1/search", params={"q": q, "label": labels, "limit": LIMIT})
        lat["gateway"].append(time.perf_counter() - t0)
        r.raise_for_status()
        body = r.json()
        searched.append(body["sessions_searched"])
        hits.append(len(body["items"]))
        hit_sessions.append(len({h["session_id"] for h in body["items"]}))
    cpu1 = cpu_ms(p)
    for q in qs:
        t0 = time.perf_counter()
        r = st.post("/search", json={"q": q, "sessions": sessions, "limit": LIMIT})
        lat["storage"].append(time.perf_counter() - t0)
        r.raise_for_status()
    cpu2, search_cpu = cpu_ms(p), 0.0
    for q in qs:
        query = parse_query(q)  # the storage route's steps (routes/insight.py _search), timed apart
        t0 = time.perf_counter()
        order = sessions if sessions is not None else ctx["index"].sessions_newest_first()
        t1 = time.perf_counter()
        keys = ctx["keys"].get(order)
        t2 = time.perf_counter()
        ctx["index"].match(query, keys, limit_chunks=max(LIMIT * 4, 200))
        t3, c3 = time.perf_counter(), time.process_time()
        search(ctx["store"], ctx["keyring"], ctx["index"], keys, query, limit=LIMIT)
        t4 = time.perf_counter()
        search_cpu += time.process_time() - c3
        lat["list"].append(t1 - t0)
        lat["keys"].append(t2 - t1)
        lat["match"].append(t3 - t2)
        lat["verify"].append(max(0.0, (t4 - t3) - (t3 - t2)))  # search() = match + decrypt and check
    out = {k: ms_stats(v) for k, v in lat.items()}
    out["cpu_ms_per_search"] = {
        "via_gateway": {k: round((cpu1[k] - cpu0[k]) / n, 1) for k in cpu0},
        "storage_direct": round((cpu2["storage"] - cpu1["storage"]) / n, 1),
        "inprocess_search": round(search_cpu * 1000 / n, 1),
    }
    out["sessions_searched"] = sorted(set(searched))
    out["mean_hits"] = round(float(np.mean(hits)), 1)
    out["mean_hit_sessions"] = round(float(np.mean(hit_sessions)), 2)
    out["zero_hit_queries"] = hits.count(0)
    return out


def name_lookup_ms(p: Platform, ids: list[str], n: int = 50) -> float:
    """The gateway's per-hit-session call: pipeline GET /sessions/{id}, as the api presents itself."""
    headers = {**p.service_headers("api"), "X-Lucid-Actor": "key:bench"}
    with httpx.Client(base_url=p.url("pipeline"), headers=headers, timeout=60) as c:
        c.get(f"/sessions/{ids[0]}").raise_for_status()
        t0 = time.perf_counter()
        for sid in ids[:n]:
            c.get(f"/sessions/{sid}").raise_for_status()
        return (time.perf_counter() - t0) * 1000 / min(n, len(ids))


def label_listing_ms(p: Platform, label: str, n: int = 10) -> list[float]:
    """What a label filter costs the gateway before storage is asked: the pipeline's session pages
    (500 a page, as routes/insight.py `_sessions` asks), every one, n times."""
    headers = {**p.service_headers("api"), "X-Lucid-Actor": "key:bench"}
    out = []
    with httpx.Client(base_url=p.url("pipeline"), headers=headers, timeout=60) as c:
        for _ in range(n):
            t0, offset = time.perf_counter(), 0
            while True:
                r = c.get("/sessions", params={"label": [label], "limit": 500, "offset": offset})
                r.raise_for_status()
                page = r.json()
                offset += len(page["items"])
                if not page["items"] or offset >= page["total"]:
                    break
            out.append(time.perf_counter() - t0)
    return out


# long: the measurement's steps in order (keys, clients, warm-up, the classes, name lookups)
def measure(args: argparse.Namespace, corpus: Corpus, p: Platform, data: Path, ids: list[str]) -> dict:
    admin = httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    r = admin.post("/v1/api-keys", json={"name": "search bench viewer", "role": "viewer"})
    r.raise_for_status()
    viewer = r.json()["key"]
    admin.close()
    settings = Settings(data_dir=data)
    store = ChunkStore.from_settings(settings)
    keyring = Keyring.load(settings, with_signing=False)
    ctx = {
        "p": p,
        "gw": httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {viewer}"}, timeout=600),
        "st": httpx.Client(base_url=p.url("storage"), headers=p.service_headers("api"), timeout=600),
        "store": store,
        "keyring": keyring,
        "index": open_index(store),
        "keys": SearchKeys(store, keyring),
        "team_a": [sid for s, sid in reversed(list(enumerate(ids))) if s % 2 == 0],  # newest first, as listed
    }
    sets = queries(corpus, args.queries)
    warm_q = sets["word_common"][0][0]
    out: dict = {}
    t0 = time.perf_counter()
    ctx["gw"].get("/v1/search", params={"q": warm_q, "limit": LIMIT}).raise_for_status()
    out["cold_first_search_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    t0 = time.perf_counter()
    ctx["keys"].get(ctx["index"].sessions_newest_first())
    out["inprocess_key_cache_fill_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    t0 = time.perf_counter()
    ctx["gw"].get("/v1/search", params={"q": warm_q, "limit": LIMIT}).raise_for_status()
    out["warm_same_search_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    out["classes"] = {}
    for name, (qs, labels) in sets.items():
        c0 = time.process_time()
        out["classes"][name] = measure_class(ctx, qs, labels)
        print(f"    {name}: {len(qs)} queries, bench CPU {time.process_time() - c0:.0f} s", flush=True)
    out["pipeline_get_session_ms"] = round(name_lookup_ms(p, ids), 2)
    out["label_listing"] = ms_stats(label_listing_ms(p, "team=a"))
    ctx["gw"].close()
    ctx["st"].close()
    ctx["index"].close()
    return out


def print_report(corpus: Corpus, b: dict, m: dict) -> None:
    print(
        f"\n  build{' (cached)' if b.get('cached') else ''}: {b['sessions']} sessions x {corpus.chunks} chunks "
        f"= {b['chunks']} records; sessions created through the gateway in {b['create_sessions_s']} s; "
        f"records + index in {b['build_s']} s (DEKs {b['dek_s']} s, words+pack {b['words_and_pack_s']} s, "
        f"records {b['records_s']} s, index put_chunks {b['index_put_s']} s)"
    )
    print(
        f"  record write: {b['record_ms_fsync']} ms each with atomic_write's fsyncs ({b['records_fsync']} records), "
        f"{b['record_ms_unsynced']} ms without ({b['records_unsynced']} records)"
    )
    print(
        f"  disk: index {b['index_mb']} MB ({b['index_mb'] / corpus.a.hours:.3f} MB per recorded h); "
        f"text records {b['records_mb']} MB of bytes, {b['records_disk_mb']} MB on disk"
    )
    print(
        f"  first search after start (fills storage's key cache for every session): {m['cold_first_search_ms']} ms; "
        f"the same search warm {m['warm_same_search_ms']} ms; key cache fill in process "
        f"{m['inprocess_key_cache_fill_ms']} ms; pipeline GET /sessions/{{id}} {m['pipeline_get_session_ms']} ms "
        f"(the gateway makes one per hit session); label=team=a session listing from the pipeline "
        f"{m['label_listing']['p50_ms']} / {m['label_listing']['p95_ms']} ms p50 / p95"
    )
    print(f"\n  limit {LIMIT}, ms p50 / p95 / max")
    print(
        "  | queries | gateway | storage POST /search | in process: match | decrypt+check | keys (warm) "
        "| list | sessions searched | hits | hit sessions | no hit |"
    )
    print("  |---|---|---|---|---|---|---|---|---|---|---|")
    for name, c in m["classes"].items():

        def f(k: str, c=c) -> str:
            return f"{c[k]['p50_ms']} / {c[k]['p95_ms']} / {c[k]['max_ms']}"

        print(
            f"  | {name} | {f('gateway')} | {f('storage')} | {f('match')} | {f('verify')} | {f('keys')} | "
            f"{c['list']['p50_ms']} | {','.join(map(str, c['sessions_searched']))} | {c['mean_hits']} | "
            f"{c['mean_hit_sessions']} | {c['zero_hit_queries']} |"
        )
    print("\n  CPU-ms per search (what a quiet machine would wait at least), by process")
    print("  | queries | via gateway: api | storage | pipeline | storage POST /search alone | search() in process |")
    print("  |---|---|---|---|---|---|")
    for name, c in m["classes"].items():
        cpu = c["cpu_ms_per_search"]
        g = cpu["via_gateway"]
        print(
            f"  | {name} | {g['api']} | {g['storage']} | {g['pipeline']} | {cpu['storage_direct']} | "
            f"{cpu['inprocess_search']} |"
        )
    words = ("word_common", "word_rare", "word_label_team_a")
    worst = max(m["classes"][k]["gateway"]["p95_ms"] for k in words)
    print(f"\n  {'MET ' if worst <= 200 else 'MISS'} word p95 <= 200 ms through the gateway: worst class {worst} ms")
    print(f"  load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} after", flush=True)


# long: the benchmark's script (parameters, cached build, measurement, report)
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=1000)
    ap.add_argument("--quick", action="store_true", help="50 recorded hours")
    ap.add_argument("--queries", type=int, default=100, help="per query class")
    ap.add_argument("--fsync-sessions", type=int, default=3, help="sessions whose records are written with fsync")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lucid-search-gateway-bench")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.hours = 50
    cargs = argparse.Namespace(
        hours=args.hours, session_minutes=30, chunk_seconds=CHUNK_MS / 1000, lines_per_minute=20, words_per_line=8
    )
    cargs.vocab = 50_000
    corpus = Corpus(cargs)
    tag = hashlib.sha256(json.dumps([args.hours, 30, CHUNK_MS, 20, 8, 50_000, FORMAT]).encode()).hexdigest()[:12]
    root = args.cache / tag
    built = root / "built.json"
    if args.rebuild or not built.exists():
        shutil.rmtree(root, ignore_errors=True)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    text_version = version_tag(VERSIONS[Insight.TEXT])
    if built.exists():
        b = json.loads(built.read_text())
        if b.get("text_version") != text_version:  # TEXT_VERSION changed since the build
            print(f"  cached records renamed to text version {text_version}: {retag(data, b['ids'], text_version)} s")
            built.write_text(json.dumps(b | {"text_version": text_version}))
        for name in ("api.db", "api.db-wal", "api.db-shm"):  # the gateway's keys and search log: made afresh
            (data / name).unlink(missing_ok=True)
    print(
        f"search through the gateway: {args.hours:g} h = {corpus.sessions} sessions x {corpus.chunks} chunks "
        f"of {CHUNK_MS // 1000} s, {corpus.lines} new lines x 8 words per chunk; data {data}",
        flush=True,
    )
    p = start(data)
    try:
        if built.exists():
            b = json.loads(built.read_text()) | {"cached": True}
        else:
            b = build(args, corpus, p, data)
            b["text_version"] = text_version
            built.write_text(json.dumps(b))
        m = measure(args, corpus, p, data, b["ids"])
    finally:
        p.stop()
    print_report(corpus, b, m)
    if not m["classes"]["word_common"]["mean_hits"]:
        raise SystemExit("no hits for words that are in the corpus: the records are not searchable (version?)")
    if args.json:
        res = {"params": {"hours": args.hours, "queries": args.queries}, "build": b | {"ids": len(b["ids"])}, **m}
        args.json.write_text(json.dumps(res, indent=2))
    summary = {
        k: {"gateway_p95_ms": v["gateway"]["p95_ms"], "storage_p95_ms": v["storage"]["p95_ms"]}
        for k, v in m["classes"].items()
    }
    print(json.dumps({"hours": args.hours, "sessions": b["sessions"], "index_mb": b["index_mb"], **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
