#!/usr/bin/env python3
"""Export speed and memory, measured in one run against this machine's own limits.

Builds sessions of --short and --long minutes (real libx264 segments through the recorder's writer,
envelopes, MP4 plans and catalog rows through the processor's own code), starts a real storage
service, and for each session measures over HTTP with curl: MP4 and MPEG-TS export throughput, time
to first byte and the storage process's peak memory growth. References, measured in the same run:
- read+decrypt limit: the export's own read path with no HTTP (list, unwrap the data key, read
  and AES-GCM open every envelope), best of --runs;
- bare socket from memory: a server with no HTTP framework sending that plaintext, already
  decrypted, to curl: how fast this machine moves these bytes at all;
- bare socket decrypting: the same server reading and decrypting with the export's own code in one
  thread while another sends: the least work any export does, with nothing else;
- MP4 build rate: the MP4 fragments built with no HTTP.
Targets (issue 6): throughput >= 0.8 x read+decrypt limit, TTFB <= 200 ms, peak memory independent
of the recording's length. The ratio to the bare decrypting server is printed beside it.

Usage: python bench/export.py [--short 1] [--long 30] [--runs 5]
"""

from __future__ import annotations

import argparse
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from lucid_assets.core import catalog
from lucid_assets.core.states import ChunkState
from lucid_assets.defs.resources import VaultResource
from lucid_assets.defs.sessions.assets import _store_one
from lucid_assets.models import RegisteredChunk
from lucid_assets.playback import Mp4Export, plain_chunks, plain_size
from lucid_assets.settings import Settings
from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import record_segments

FPS, W, H, CHUNK_S = 15, 640, 360, 10


def build_session(data: Path, minutes: float) -> tuple[str, int]:
    sid = str(uuid.uuid4())
    vault = VaultResource.from_settings(Settings(data_dir=data, generate_keys=True))
    segs = record_segments(
        data / "recordings" / sid, fps=FPS, seconds=minutes * 60, chunk_seconds=CHUNK_S, size=(W, H), pattern="testsrc2"
    )
    dek = vault.store.data_key(sid, vault.keyring, create=True)
    rows = [
        _store_one(
            vault,
            sid,
            dek,
            RegisteredChunk(
                seq=s.seq,
                sha256=s.sha256,
                size=s.size,
                frames=s.frames,
                path=str(s.path),
                duration_ms=s.duration_ms,
                state=ChunkState.REGISTERED,
                registered_at="2026-11-27T00:00:00+00:00",
                stored_at=None,
                envelope_sha256=None,
                stored_size=None,
                compressed=None,
            ),
        )
        for s in segs
    ]
    vault.lake.append_missing(catalog.CHUNKS, sid, rows, key="seq")
    return sid, sum(r["raw_size"] for r in rows)


def read_decrypt_limit(data: Path, sid: str) -> float:
    """The export's own read path with no HTTP: list the chunks, unwrap the data key, read every
    envelope and AES-GCM open it (lucid_assets.playback.plain_chunks, as the TS export uses it)."""
    vault = VaultResource.from_settings(Settings(data_dir=data))
    t = time.perf_counter()
    total = sum(len(p) for p in plain_chunks(vault.store, vault.keyring, sid, vault.store.stored_seqs(sid)))
    return total / (time.perf_counter() - t)


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export(url: str) -> tuple[float, float, int]:
    """(time to first byte, total seconds, bytes) with curl as the client: a Python client would
    measure itself (a new httpx client alone spends ~20 ms building an SSL context)."""
    out = subprocess.run(
        ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def bare_server(data: Path, sid: str, runs: int, decrypt: bool) -> float:
    """A bare socket server (no HTTP framework) sending the session's plaintext to curl with
    blocking sendall. decrypt=False: the plaintext already in memory, as many separate buffers as
    the recording has chunks (fresh memory, not a few cache-hot buffers): how fast this machine
    moves these bytes at all. decrypt=True: the chunks read and decrypted by the export's own code
    in one thread while another sends: the least any export has to do, done with nothing else."""
    vault = VaultResource.from_settings(Settings(data_dir=data))
    seqs = vault.store.stored_seqs(sid)
    size = plain_size(vault.store, sid, seqs)
    held = [] if decrypt else [bytes(c) for c in plain_chunks(vault.store, vault.keyring, sid, seqs)]
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
            if not decrypt:
                for part in held:
                    conn.sendall(part)
                return
            q: queue.Queue = queue.Queue(2)
            producer = threading.Thread(
                target=lambda: [q.put(c) for c in plain_chunks(vault.store, vault.keyring, sid, seqs)] + [q.put(None)]
            )
            producer.start()
            while (part := q.get()) is not None:
                conn.sendall(part)
            producer.join()

    best = 0.0
    with srv:
        for _ in range(runs):
            t = threading.Thread(target=serve)
            t.start()
            _, secs, n = export(f"http://127.0.0.1:{srv.getsockname()[1]}/")
            t.join()
            best = max(best, n / secs)
    return best


def mp4_build_rate(data: Path, sid: str) -> float:
    """The MP4 export's fragments built with no HTTP (what the MP4 path costs beyond decrypting)."""
    vault = VaultResource.from_settings(Settings(data_dir=data))
    export = Mp4Export(vault.store, vault.keyring, sid, vault.store.stored_seqs(sid))
    t = time.perf_counter()
    n = sum(len(p) for p in export.byte_range(0, export.size - 1))
    return n / (time.perf_counter() - t)


# long: a benchmark's steps in order, each printed as it runs
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", type=float, default=1)
    ap.add_argument("--long", type=float, default=30)
    ap.add_argument("--runs", type=int, default=5, help="runs of each measurement; the best is kept")
    args = ap.parse_args()
    print(f"export bench: {W}x{H}@{FPS} libx264 sessions of {args.short} and {args.long} min, {CHUNK_S} s chunks")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        sessions = {}
        for minutes in (args.short, args.long):
            t = time.perf_counter()
            sessions[minutes] = build_session(data, minutes)
            print(
                f"- built {minutes} min session: {sessions[minutes][1] / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s"
            )
        results = {}
        for minutes, (sid, _size) in sessions.items():
            limit = max(read_decrypt_limit(data, sid) for _ in range(args.runs))
            ceiling = bare_server(data, sid, args.runs, decrypt=False)
            bare = bare_server(data, sid, args.runs, decrypt=True)
            build = max(mp4_build_rate(data, sid) for _ in range(args.runs))
            print(
                f"  {minutes:>4} min: read+decrypt limit {limit / 1e6:.0f} MB/s; bare socket from memory "
                f"{ceiling / 1e6:.0f} MB/s; bare socket decrypting {bare / 1e6:.0f} MB/s = {bare / limit:.2f} x limit; "
                f"MP4 build, no HTTP, {build / 1e6:.0f} MB/s"
            )
            for fmt in ("ts", "mp4"):
                p = Platform(
                    data_dir=data,
                    ports={n: free_port() for n in SERVICES},
                    run=("storage",),
                    webserver=False,
                    daemon=False,
                )
                p.start(timeout=60)
                try:
                    pid = p.procs["storage"].pid
                    before = hwm_mb(pid)  # the service started and ready, nothing exported yet
                    export(f"{p.url('storage')}/sessions/{sid}/recording.{fmt}")  # warm caches
                    runs = [export(f"{p.url('storage')}/sessions/{sid}/recording.{fmt}") for _ in range(args.runs)]
                    growth = hwm_mb(pid) - before
                    ttfb = sorted(r[0] for r in runs)[len(runs) // 2]
                    secs, n = min(r[1] for r in runs), runs[0][2]
                finally:
                    p.stop()
                results[(minutes, fmt)] = (n / secs / limit, ttfb, growth)
                print(
                    f"  {minutes:>4} min {fmt:>3}: {n / 1e6 / secs:7.0f} MB/s = {n / secs / limit:.2f} x read+decrypt "
                    f"limit, {n / secs / bare:.2f} x bare socket decrypting; "
                    f"first byte {ttfb * 1000:.0f} ms (median); peak memory +{growth:.1f} MB"
                )
        worst = min(r[0] for r in results.values())
        slow = max(r[1] for r in results.values())
        mem = {m: max(results[(m, f)][2] for f in ("ts", "mp4")) for m in (args.short, args.long)}
        for label, ok, value in (
            ("throughput >= 0.8 x limit (worst export)", worst >= 0.8, f"{worst:.2f}"),
            ("first byte <= 200 ms (slowest)", slow <= 0.2, f"{slow * 1000:.0f} ms"),
            (
                f"memory independent of length ({args.short} vs {args.long} min)",
                mem[args.long] <= mem[args.short] + 16,
                f"+{mem[args.short]:.1f} MB vs +{mem[args.long]:.1f} MB",
            ),
        ):
            print(f"  {'MET ' if ok else 'MISS'} {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
