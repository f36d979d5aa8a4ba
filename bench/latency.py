#!/usr/bin/env python3
"""Processing latency on the embedded default, measured end to end with the real platform (the four
services and Dagster's daemon, SQLite everywhere): from a chunk's registration to its row in
lucid.chunks (p50, p95), from stop to sealed, and how much of it is Dagster's own overhead (sensor
tick wait, queueing, run launch) rather than the steps' work.

Targets (issue 5): p50 <= 15 s, p95 <= 30 s; stop-to-sealed <= 20 s for a 60 s session.
Usage: python bench/latency.py [--seconds 60] [--size 1280x720] [--fps 30] [--variants all|NAME,...]

With --variants, the same session is measured once per Dagster tuning (VARIANTS below: the queue's
dequeue interval, no queue at all, the executor, the sensor interval), one platform each, in turn,
and a table compares them with the default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from lucid_assets.core import catalog
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from services.launcher import SERVICES, Platform
from tests.conftest import free_port

KEY = "bench-admin-key-0123456789abcdef"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


QUEUE = "run_coordinator"
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    # name: (what it changes, dagster.yaml overrides, environment)
    "default": ("as shipped: queue dequeue 2 s, in-process executor, sensors every 5 s", {}, {}),
    "dequeue-5s": (
        "Dagster's default dequeue interval (5 s)",
        {QUEUE: {"config": {"dequeue_interval_seconds": 5}}},
        {},
    ),
    "dequeue-1s": ("dequeue every 1 s", {QUEUE: {"config": {"dequeue_interval_seconds": 1}}}, {}),
    "no-queue": (
        "DefaultRunCoordinator: the sensor launches directly (no global or per-session limit)",
        {QUEUE: {"class": "DefaultRunCoordinator", "config": None}},
        {},
    ),
    "multiprocess": ("multiprocess executor (a process per step)", {}, {"LUCID_EXECUTOR": "multiprocess"}),
    "sensor-15s": ("sensors every 15 s", {}, {"LUCID_SENSOR_INTERVAL_SECONDS": "15"}),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--chunk-seconds", type=int, default=10)
    ap.add_argument("--variants", default="default", help="all, or a comma-separated list of " + ", ".join(VARIANTS))
    args = ap.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    results = {}
    for name in names:
        print(f"== variant {name}: {VARIANTS[name][0]}", flush=True)
        try:
            results[name] = measure(args, *VARIANTS[name][1:])
        except RuntimeError as exc:
            print(f"  FAILED: {exc}")
            results[name] = None
    if len(results) > 1:
        base = results.get("default")
        print("\n| variant | what | p50 | p95 | stop->sealed | queued/launching | Dagster share |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            if r is None:
                print(f"| {name} | {VARIANTS[name][0]} | - | - | not sealed within 300 s | - | - |")
                continue
            rel = f" ({r['stop_to_sealed'] - base['stop_to_sealed']:+.1f})" if base and name != "default" else ""
            print(
                f"| {name} | {VARIANTS[name][0]} | {r['p50']:.1f} s | {r['p95']:.1f} s "
                f"| {r['stop_to_sealed']:.1f} s{rel} "
                f"| {r['launch']:.1f} s over {r['runs']} runs | {r['share']:.0%} |"
            )
    return 0


# long: a benchmark's steps in order, each printed as it runs
def measure(args, overrides: dict, env: dict) -> dict:
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        p = Platform(
            data_dir=data,
            ports={n: free_port() for n in SERVICES},
            webserver=False,
            extra_env={"LUCID_API_KEY": KEY, **env},
            instance_overrides=overrides,
        )
        p.start(timeout=180)
        try:
            api = httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            s = Settings(data_dir=data)
            lake = Lake.sql(s.catalog, s.warehouse_uri)
            sid = api.post(
                "/v1/sessions",
                json={
                    "name": "latency",
                    "video": {"width": w, "height": h, "fps": args.fps},
                    "chunk_seconds": args.chunk_seconds,
                },
            ).json()["id"]
            api.post(f"/v1/sessions/{sid}/start")
            seen: dict[int, float] = {}
            t_end = time.time() + args.seconds
            stop_at = None
            while True:
                now = time.time()
                if stop_at is None and now >= t_end:
                    api.post(f"/v1/sessions/{sid}/stop").raise_for_status()
                    stop_at = time.time()
                if stop_at is not None and now - stop_at > 300:
                    raise RuntimeError(f"not sealed 300 s after stop: {api.get(f'/v1/sessions/{sid}').json()}")
                for r in lake.rows(catalog.CHUNKS, sid):
                    seen.setdefault(r["seq"], time.time())
                state = api.get(f"/v1/sessions/{sid}").json()
                if state["state"] in ("sealed", "failed"):
                    sealed_at = time.time()
                    break
                time.sleep(0.25)
            chunks = api.get(f"/v1/sessions/{sid}/chunks").json()["items"]
            lat = [
                seen[c["seq"]] - datetime.fromisoformat(c["registered_at"]).timestamp()
                for c in chunks
                if c["seq"] in seen
            ]
            live = [
                seen[c["seq"]] - datetime.fromisoformat(c["registered_at"]).timestamp()
                for c in chunks
                if c["seq"] in seen and datetime.fromisoformat(c["registered_at"]).timestamp() < stop_at
            ]
            from dagster import DagsterEventType, DagsterInstance, RunsFilter

            instance = DagsterInstance.from_config(str(p.dagster_home))
            # the session's own runs (reruns, retries) and the live batches (the only session here)
            records = instance.get_run_records(RunsFilter(tags={"lucid/session": sid})) + instance.get_run_records(
                RunsFilter(tags={"lucid/batch": "live"})
            )
            wall = work = launch = 0.0
            for rec in records:
                run = rec.dagster_run
                steps = {}
                for e in instance.all_logs(
                    run.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
                ):
                    steps.setdefault(e.step_key, []).append(e.timestamp)
                work += sum(max(t) - min(t) for t in steps.values() if len(t) == 2)
                if rec.start_time and rec.end_time:
                    wall += rec.end_time - rec.create_timestamp.timestamp()
                    launch += rec.start_time - rec.create_timestamp.timestamp()
            print(
                f"latency bench: {args.seconds:.0f} s session at {w}x{h}@{args.fps}, {args.chunk_seconds} s chunks, "
                f"embedded default (SQLite), {len(records)} runs"
            )
            print(
                f"- registration -> lucid.chunks row: p50 {pct(lat, 50):.1f} s, p95 {pct(lat, 95):.1f} s, "
                f"max {max(lat):.1f} s over {len(lat)} chunks ({len(live)} registered while recording: "
                f"p50 {pct(live, 50) if live else float('nan'):.1f} s)"
            )
            print(f"- stop -> sealed: {sealed_at - stop_at:.1f} s ({state['state']})")
            print(
                f"- Dagster runs: {wall:.1f} s from run creation to end, of which {launch:.1f} s queued/launching and "
                f"{work:.1f} s in steps; Dagster's own share of the run time {1 - work / wall if wall else 0:.0%} "
                "(the sensor's tick wait comes on top)"
            )
            for label, ok, value in (
                ("p50 <= 15 s", pct(lat, 50) <= 15, f"{pct(lat, 50):.1f} s"),
                ("p95 <= 30 s", pct(lat, 95) <= 30, f"{pct(lat, 95):.1f} s"),
                ("stop-to-sealed <= 20 s", sealed_at - stop_at <= 20, f"{sealed_at - stop_at:.1f} s"),
            ):
                print(f"  {'MET ' if ok else 'MISS'} {label}: {value}")
            return {
                "p50": pct(lat, 50),
                "p95": pct(lat, 95),
                "stop_to_sealed": sealed_at - stop_at,
                "launch": launch,
                "runs": len(records),
                "share": 1 - work / wall if wall else 0,
            }
        finally:
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
