#!/usr/bin/env python3
"""Export speed and memory, measured in one run against this machine's own read + decrypt limit.

Builds sessions of --short and --long minutes (real libx264 segments through the recorder's writer,
envelopes and catalog rows through the processor's own code), starts a real storage service, and
for each session measures over HTTP: MP4 and MPEG-TS export throughput against the same run's limit
(read every envelope + AES-GCM open, nothing else), time to first byte, and the storage process's
peak memory growth. Targets (issue 6): throughput >= 0.8 x limit, TTFB <= 200 ms, peak memory
independent of the recording's length.

Usage: python bench/export.py [--short 1] [--long 30]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from lucid_assets.core import catalog, envelope  # noqa: E402
from lucid_assets.defs.assets import _store_one  # noqa: E402
from lucid_assets.defs.resources import VaultResource  # noqa: E402
from lucid_assets.settings import Settings  # noqa: E402
from services.launcher import SERVICES, Platform  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.helpers import record_segments  # noqa: E402

FPS, W, H, CHUNK_S = 15, 640, 360, 10


def build_session(data: Path, minutes: float) -> tuple[str, int]:
    sid = str(uuid.uuid4())
    vault = VaultResource.from_settings(Settings(data_dir=data, generate_keys=True))
    segs = record_segments(data / "recordings" / sid, fps=FPS, seconds=minutes * 60, chunk_seconds=CHUNK_S,
                           size=(W, H), pattern="testsrc2")
    dek = vault.store.data_key(sid, vault.keyring, create=True)
    rows = [_store_one(vault, sid, dek, {"seq": s.seq, "sha256": s.sha256, "path": str(s.path),
                                         "duration_ms": s.duration_ms, "registered_at": "2026-11-27T00:00:00+00:00"})
            for s in segs]
    vault.lake.append_missing(catalog.CHUNKS, sid, rows, key="seq")
    return sid, sum(r["raw_size"] for r in rows)


def read_decrypt_limit(data: Path, sid: str) -> float:
    vault = VaultResource.from_settings(Settings(data_dir=data))
    dek = vault.store.data_key(sid, vault.keyring)
    total, t = 0, time.perf_counter()
    for seq in vault.store.stored_seqs(sid):
        total += len(envelope.open_envelope(vault.store.read_envelope(sid, seq), dek=dek)[1])
    return total / (time.perf_counter() - t)


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export(url: str) -> tuple[float, float, int]:
    """(time to first byte, total seconds, bytes) with curl as the client: a Python client would
    measure itself (a new httpx client alone spends ~20 ms building an SSL context)."""
    out = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}",
                          url], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


CEILING_APP = """
import os
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
app = FastAPI()
@app.get("/stream/{mb}")
def stream(mb: int):
    chunks = [bytearray(os.urandom(1 << 20)) for _ in range(8)]
    return StreamingResponse(memoryview(chunks[i % 8]) for i in range(mb))
"""


def http_ceiling(mb: int) -> float:
    """The same HTTP stack (uvicorn + FastAPI StreamingResponse + curl) streaming bytes already in
    memory: the most any export can reach here, whatever it does before sending."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "ceiling.py").write_text(CEILING_APP)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "ceiling:app", "--port", str(port), "--log-level",
                                 "warning"], cwd=d)
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            best = 0.0
            for _ in range(3):
                _, secs, n = export(f"http://127.0.0.1:{port}/stream/{mb}")
                best = max(best, n / secs)
            return best
        finally:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", type=float, default=1)
    ap.add_argument("--long", type=float, default=30)
    args = ap.parse_args()
    print(f"export bench: {W}x{H}@{FPS} libx264 sessions of {args.short} and {args.long} min, {CHUNK_S} s chunks")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        sessions = {}
        for minutes in (args.short, args.long):
            t = time.perf_counter()
            sessions[minutes] = build_session(data, minutes)
            print(f"- built {minutes} min session: {sessions[minutes][1] / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s")
        ceiling = http_ceiling(256)
        print(f"- HTTP ceiling of this stack (in-memory bytes, uvicorn -> curl): {ceiling / 1e6:.0f} MB/s")
        results = {}
        for minutes, (sid, size) in sessions.items():
            limit = max(read_decrypt_limit(data, sid) for _ in range(3))
            for fmt in ("ts", "mp4"):
                p = Platform(data_dir=data, ports={n: free_port() for n in SERVICES}, run=("storage",),
                             webserver=False, daemon=False)
                p.start(timeout=60)
                try:
                    pid = p.procs["storage"].pid
                    export(f"{p.url('storage')}/sessions/{sid}/recording.{fmt}")  # warm caches
                    before = hwm_mb(pid)
                    runs = [export(f"{p.url('storage')}/sessions/{sid}/recording.{fmt}") for _ in range(3)]
                    growth = hwm_mb(pid) - before
                    ttfb = sorted(r[0] for r in runs)[1]
                    secs, n = min(r[1] for r in runs), runs[0][2]
                finally:
                    p.stop()
                results[(minutes, fmt)] = (n / secs / limit, ttfb, growth)
                print(f"  {minutes:>4} min {fmt:>3}: {n / 1e6 / secs:7.0f} MB/s = {n / secs / limit:.2f} x read+decrypt "
                      f"limit ({limit / 1e6:.0f} MB/s), {n / secs / min(limit, ceiling):.2f} x min(limit, HTTP ceiling); "
                      f"first byte {ttfb * 1000:.0f} ms; peak memory +{growth:.1f} MB")
        worst = min(r[0] for r in results.values())
        slow = max(r[1] for r in results.values())
        mem = {m: max(results[(m, f)][2] for f in ("ts", "mp4")) for m in (args.short, args.long)}
        for label, ok, value in (
                ("throughput >= 0.8 x limit (worst export)", worst >= 0.8, f"{worst:.2f}"),
                ("first byte <= 200 ms (slowest)", slow <= 0.2, f"{slow * 1000:.0f} ms"),
                (f"memory independent of length ({args.short} vs {args.long} min)",
                 mem[args.long] <= mem[args.short] + 16, f"+{mem[args.short]:.1f} MB vs +{mem[args.long]:.1f} MB")):
            print(f"  {'MET ' if ok else 'MISS'} {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
