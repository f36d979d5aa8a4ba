#!/usr/bin/env python3
"""Scale: 20,000 sessions' worth of registry rows and Dagster partitions. Measures the work-queue
sensor's tick, the reconcile sensor's pass, session lookups and listing through the real pipeline
service, against the same measurements with 200 sessions (the ratio is what matters).

Usage: python bench/scale.py [--sessions 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg
import httpx

from lucid_assets.defs.housekeeping.reconcile import reconcile_requests
from lucid_assets.defs.resources import PipelineResource
from lucid_assets.defs.sessions.partitions import sessions as sessions_def
from lucid_assets.defs.sessions.sensors import work_queue_sensor as make_work_queue_sensor
from services.common import migrate
from services.common.db import Database
from services.launcher import SERVICES, Platform
from services.pipeline.models import SessionRow, WorkItem
from tests.conftest import free_port


def median_ms(fn, n=5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# long: a benchmark's steps in order, each printed as it runs
def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        db = Database(f"sqlite:///{data / 'pipeline.db'}")
        migrate.upgrade(db.url, "pipeline")
        old = datetime.now(UTC) - timedelta(days=90)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        with db.write() as s:
            s.add_all(
                SessionRow(
                    id=sid,
                    name=f"s{i}",
                    state="sealed",
                    labels={"team": f"t{i % 50}"},
                    source={"kind": "testsrc"},
                    video={"width": 1280, "height": 720, "fps": 30},
                    created_at=old,
                    sealed_at=old,
                    updated_at=old,
                    expected_chunks=6,
                    merkle_root="0" * 64,
                    manifest_version=1,
                    manifest_sha256="1" * 64,
                )
                for i, sid in enumerate(ids)
            )
            live = [str(uuid.uuid4()) for _ in range(10)]
            s.add_all(
                SessionRow(id=sid, name="live", state="recording", source={"kind": "testsrc"}, video={}) for sid in live
            )
            s.flush()
            s.add_all(WorkItem(session_id=sid, up_to_seq=0, reason="chunks") for sid in live)
        p = Platform(
            data_dir=data, ports={k: free_port() for k in SERVICES}, run=("pipeline",), webserver=False, daemon=False
        )
        p.start(timeout=60)
        try:
            res = PipelineResource(
                url=p.url("pipeline"), token_file=str(p.data_dir / "keys" / "service" / "dagster.token")
            )
            with dg.instance_for_test() as instance:
                t = time.perf_counter()
                for i in range(0, n, 2000):
                    instance.add_dynamic_partitions(sessions_def.name, ids[i : i + 2000])
                add_s = time.perf_counter() - t
                tick = median_ms(
                    lambda: make_work_queue_sensor(5)(
                        dg.build_sensor_context(instance=instance, cursor="0", resources={"pipeline": res})
                    )
                )
                recon = median_ms(lambda: reconcile_requests(instance, res))
            api = httpx.Client(base_url=p.url("pipeline"), timeout=60, headers=p.service_headers("api"))
            sample = random.Random(1).sample(ids, 200)
            lookups = []
            for sid in sample:
                t = time.perf_counter()
                assert api.get(f"/sessions/{sid}").status_code == 200
                lookups.append((time.perf_counter() - t) * 1000)
            page = median_ms(lambda: api.get("/sessions", params={"limit": 50}).raise_for_status())
            label = median_ms(
                lambda: api.get("/sessions", params={"label": "team=t7", "limit": 50}).raise_for_status(), 3
            )
        finally:
            p.stop()
    lookups.sort()
    return {
        "n": n,
        "add_partitions_s": add_s,
        "sensor_tick_ms": tick,
        "reconcile_ms": recon,
        "lookup_p50_ms": lookups[len(lookups) // 2],
        "lookup_p95_ms": lookups[int(len(lookups) * 0.95)],
        "page_ms": page,
        "label_filter_ms": label,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=20000)
    args = ap.parse_args()
    small, big = measure(200), measure(args.sessions)
    print(f"scale bench: {big['n']} vs {small['n']} sessions (registry rows + Dagster partitions), SQLite")
    for key, label in (
        ("sensor_tick_ms", "work-queue sensor tick (10 new items)"),
        ("reconcile_ms", "reconcile pass"),
        ("lookup_p50_ms", "session lookup p50"),
        ("lookup_p95_ms", "session lookup p95"),
        ("page_ms", "list page of 50"),
        ("label_filter_ms", "list filtered by label"),
    ):
        print(f"- {label}: {big[key]:.1f} ms vs {small[key]:.1f} ms = {big[key] / small[key]:.2f}x")
    print(f"- adding {big['n']} partitions took {big['add_partitions_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
