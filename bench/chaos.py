#!/usr/bin/env python3
"""Chaos on the embedded default (#14), with the real platform (the four services and Dagster's
daemon, SQLite): kill a component with SIGKILL at random moments and measure what is lost.

Scenarios (one for now; the issue's others — pipeline, storage, gateway, daemon, run worker,
webserver, disk full, a PostgreSQL restart — fit the same shape):

  recorder-kill   --sessions N sessions record (the test pattern); at a random moment the recorder
                  process is killed with SIGKILL and restarted; its crash recovery finalizes every
                  session from the completed segments plus the partial one, salvaged up to its last
                  complete frame. Per session: video lost = kill time - recording start - time of
                  the last recorded frame (an upper bound: the first frame is captured a little
                  after the session's started_at). Target: <= ~1 s. Also: sessions sealed and
                  verified / total, salvaged chunks that decode fully, time from the kill to the
                  recorder answering again and to every session sealed.

Usage: python bench/chaos.py recorder-kill [--kills 5] [--sessions 4] [--size 640x360] [--fps 15]
       [--chunk-seconds 10] [--seed 14]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import httpx

from services.launcher import SERVICES, Platform
from tests.conftest import free_port

KEY = "bench-admin-key-0123456789abcdef"


def wait_all(api: httpx.Client, sids: list[str], timeout: float = 600) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = {sid: api.get(f"/v1/sessions/{sid}").json() for sid in sids}
        if all(s["state"] in ("sealed", "failed") for s in found.values()):
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"not sealed {timeout} s after the kill: {[s['state'] for s in found.values()]}")
        time.sleep(0.5)


def frame_times(data: bytes, path: Path) -> tuple[list[float], int]:
    """(presentation times of the chunk's packets, frames PyAV decodes from it)."""
    path.write_bytes(data)
    with av.open(str(path)) as c:
        times = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.size and p.pts is not None]
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    return times, decoded


def measure_session(api: httpx.Client, sid: str, s: dict, killed_at: float, scratch: Path) -> dict:
    chunks = api.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    out = {"sid": sid, "state": s["state"], "chunks": len(chunks), "salvaged": 0, "whole": True}
    if s["state"] != "sealed" or not chunks:
        return out | {"lost": None, "verified": False}
    first, _ = frame_times(api.get(f"/v1/sessions/{sid}/chunks/0").content, scratch / "first.ts")
    last_chunk = chunks[-1]
    last, decoded = frame_times(api.get(f"/v1/sessions/{sid}/chunks/{last_chunk['seq']}").content, scratch / "last.ts")
    out["salvaged"] = sum(1 for c in chunks if c["salvaged"])
    out["whole"] = decoded == last_chunk["frames"] == len(last)  # every frame of the last chunk decodes
    started = datetime.fromisoformat(s["started_at"]).timestamp()
    out["lost"] = killed_at - started - (max(last) - min(first))
    out["verified"] = bool(api.post(f"/v1/sessions/{sid}/verify").json().get("ok"))
    out["dropped"] = s.get("dropped_frames", 0)
    return out


# long: one round after another, each printed as it ends, then the summary
def recorder_kill(args) -> int:
    rng = random.Random(args.seed)
    w, h = (int(x) for x in args.size.split("x"))
    results, recover = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        p = Platform(
            data_dir=data, ports={n: free_port() for n in SERVICES}, webserver=False, extra_env={"LUCID_API_KEY": KEY}
        )
        p.start(timeout=180)
        try:
            api = httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
            for k in range(args.kills):
                sids = []
                for i in range(args.sessions):
                    body = {
                        "name": f"chaos {k}.{i}",
                        "video": {"width": w, "height": h, "fps": args.fps},
                        "chunk_seconds": args.chunk_seconds,
                    }
                    sid = api.post("/v1/sessions", json=body).json()["id"]
                    api.post(f"/v1/sessions/{sid}/start").raise_for_status()
                    sids.append(sid)
                time.sleep(rng.uniform(0.3, 2.5) * args.chunk_seconds)  # a random moment inside a segment
                killed_at = time.time()
                p.restart("recorder", signal.SIGKILL)
                back = time.time() - killed_at
                states = wait_all(api, sids)
                sealed = time.time() - killed_at
                recover.append((back, sealed))
                round_ = [measure_session(api, sid, states[sid], killed_at, data) for sid in sids]
                results += round_
                lost = [r["lost"] for r in round_ if r["lost"] is not None]
                print(
                    f"kill {k + 1}/{args.kills}: recorder back in {back:.1f} s, all sealed in {sealed:.1f} s; "
                    f"lost per session {', '.join(f'{x:.2f}' for x in lost)} s; "
                    f"salvaged {sum(r['salvaged'] for r in round_)}/{len(round_)}, "
                    f"verified {sum(r['verified'] for r in round_)}/{len(round_)}",
                    flush=True,
                )
        finally:
            p.stop()
    lost = sorted(r["lost"] for r in results if r["lost"] is not None)
    ok = sum(1 for r in results if r["state"] == "sealed" and r["verified"] and r["whole"])
    shape = f"{args.size}@{args.fps}, {args.chunk_seconds} s segments"
    print(f"\nrecorder-kill: {args.kills} kills x {args.sessions} sessions ({shape})")
    print(f"  sealed, verified, last chunk decodes fully: {ok}/{len(results)}")
    print(f"  salvaged chunks: {sum(r['salvaged'] for r in results)} in {len(results)} sessions")
    if lost:
        print(
            f"  video lost per session per kill: mean {statistics.mean(lost):.2f} s, "
            f"median {statistics.median(lost):.2f} s, max {lost[-1]:.2f} s (target <= ~1 s)"
        )
    print(
        f"  recorder back after the kill: max {max(b for b, _ in recover):.1f} s; "
        f"every session sealed: max {max(s for _, s in recover):.1f} s"
    )
    print(f"  dropped frames (CPU): {sum(r.get('dropped', 0) for r in results)}")
    return 0 if ok == len(results) and lost and lost[-1] <= 1.0 else 1


SCENARIOS = {"recorder-kill": recorder_kill}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--chunk-seconds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    return SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    sys.exit(main())
