#!/usr/bin/env python3
"""Capacity of the embedded default under live push ingest, and what orchestration costs.

N push sessions through the gateway, each putting one real MPEG-TS chunk (libx264, ~105 KB) every
--interval seconds, staggered so the offered load is even, for --minutes; then every session is
stopped at once. Printed per N:
  - offered chunk rate; put -> stored p50/p95/max (the registry's registered_at -> stored_at);
  - stop -> sealed p50/p95/max (the stop call -> the session's sealed_at);
  - failures (a put or stop that was not 2xx, a session not sealed in time or failed);
  - busy cores over the ingest window (/proc/stat) and CPU-seconds per chunk split by process:
    the Dagster daemon with everything it starts (run workers, its code server), the webserver,
    and each Lucid service. A process's CPU includes its children (live ones read from /proc,
    exited ones from the parent's cutime/cstime).

Goal (issue 13): 100 sessions, put -> stored p95 <= 60 s, stop -> sealed p95 <= 30 s, 0 failures,
<= 1.2 busy cores, orchestration <= 0.1 CPU-s per chunk; 1 session: stop -> sealed <= 15 s.

Usage: python bench/capacity.py [--sessions 1,10,30,100] [--minutes 3] [--interval 10] [--compose]
                                [--workers 1,2] [--json out.json]
--workers (issue 17): each N is run once per processing-worker count W, each on a fresh platform whose
Dagster instance admits W `lucid/batch` runs at once (max_concurrent_runs raised by W - 1, the other
limits as in dagster_home/dagster.yaml); the figures per (N, W) are followed by W / first-W ratios.
With --compose, the same against the compose stack (build/scripts/build-all-session-images.sh first,
PLATFORM=linux/amd64 on a PC): CPU per container from its cgroup, run containers included.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from services.launcher import REPO, SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import record_segments

KEY = "bench-admin-key-0123456789abcdef"
TICK = os.sysconf("SC_CLK_TCK")
# Dagster's share (the daemon's figure is net of our processing inside the runs); compose adds the
# code server and the run containers. PostgreSQL (compose) serves both and is counted apart.
ORCHESTRATION = ("dagster-daemon", "dagster-webserver", "chunk-processor", "dagster runs (containers)")
SHARED = ("postgres",)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every descendant, alive or exited and reaped."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
            children.setdefault(int(st[1]), []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if (st := stats.get(pid)) is not None:
            total += sum(int(x) for x in st[11:15]) / TICK  # utime stime cutime cstime
        todo += children.get(pid, [])
    return total


def busy_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def sample_chunk(tmp: Path) -> bytes:
    """One real 10 s MPEG-TS segment (libx264, 320x240@5, ~105 KB: the size issue 13 measured with)."""
    segs = record_segments(tmp / "sample", fps=5, seconds=10, chunk_seconds=10, size=(320, 240), pattern="testsrc")
    return segs[0].path.read_bytes()


async def push_all(api: httpx.AsyncClient, sids: list[str], chunk: bytes, interval: float, minutes: float) -> dict:
    """Every session puts a chunk every `interval` s, session i offset by i/N of the interval."""
    digest = hashlib.sha256(chunk).hexdigest()
    headers = {"X-Content-SHA256": digest, "X-Chunk-Duration-Ms": str(int(interval * 1000))}
    rounds = max(1, int(minutes * 60 / interval))
    t0 = time.monotonic() + 1
    failures: list[str] = []

    async def one(i: int, sid: str) -> None:
        for seq in range(rounds):
            await asyncio.sleep(max(0.0, t0 + seq * interval + i * interval / len(sids) - time.monotonic()))
            try:
                r = await api.put(f"/v1/sessions/{sid}/chunks/{seq}", content=chunk, headers=headers)
                if r.status_code not in (200, 201):
                    failures.append(f"put {sid[:8]}/{seq}: {r.status_code} {r.text[:120]}")
            except httpx.HTTPError as exc:
                failures.append(f"put {sid[:8]}/{seq}: {type(exc).__name__}")

    await asyncio.gather(*(one(i, sid) for i, sid in enumerate(sids)))
    return {"rounds": rounds, "failures": failures}


def cpu_by_process(p: Platform) -> dict[str, float]:
    return {name: tree_cpu(proc.pid) for name, proc in p.procs.items()}


def runs_and_processing(p: Platform) -> tuple[int, float]:
    """Runs Dagster launched, and the CPU Lucid's processing took inside them (each batch run
    reports it as `processing_cpu_s`): that part of the daemon's tree is our work, not Dagster's."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(p.dagster_home))
    runs = instance.get_runs()
    work = 0.0
    for run in runs:
        for rec in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_OUTPUT).records:
            meta = rec.event_log_entry.dagster_event.event_specific_data.metadata
            if "processing_cpu_s" in meta:
                work += meta["processing_cpu_s"].value
    return len(runs), work


def wait_sealed(api: httpx.Client, sids: list[str], timeout: float) -> dict[str, dict]:
    deadline, done = time.monotonic() + timeout, {}
    while len(done) < len(sids) and time.monotonic() < deadline:
        for sid in sids:
            if sid not in done:
                s = api.get(f"/v1/sessions/{sid}").json()
                if s["state"] in ("sealed", "failed"):
                    done[sid] = s
        time.sleep(1)
    return done


def figures(lat: list[float], sealed: list[float], failures: list[str], busy: float, cpu: dict, chunks: int) -> dict:
    """The figures compared across worker counts (and written with --json)."""
    orch = sum(cpu.get(k, 0.0) for k in ORCHESTRATION)
    ours = sum(v for k, v in cpu.items() if k not in ORCHESTRATION + SHARED)
    return {
        "chunks": chunks,
        "failures": len(failures),
        "put_stored_p50_s": pct(lat, 50),
        "put_stored_p95_s": pct(lat, 95),
        "stop_sealed_p50_s": pct(sealed, 50),
        "stop_sealed_p95_s": pct(sealed, 95),
        "busy_cores": busy,
        "cpu_s_per_chunk": (orch + ours) / max(chunks, 1),
        "orchestration_cpu_s_per_chunk": orch / max(chunks, 1),
        "lucid_cpu_s_per_chunk": ours / max(chunks, 1),
        "cpu_s_per_chunk_by_process": {k: v / max(chunks, 1) for k, v in cpu.items()},
    }


def report(
    n: int,
    args,
    chunk: bytes,
    pushed: dict,
    lat: list[float],
    sealed: list[float],
    failures: list[str],
    window: tuple[float, float],
    busy: float,
    cpu: dict[str, float],
    chunks: int,
) -> None:
    orch = sum(cpu.get(k, 0.0) for k in ORCHESTRATION)
    ours = sum(v for k, v in cpu.items() if k not in ORCHESTRATION + SHARED)
    print(
        f"\n== {n} sessions, a {len(chunk) / 1000:.0f} KB chunk every {args.interval:g} s each, "
        f"{window[0]:.0f} s of ingest, all sealed {window[1] - window[0]:.0f} s later"
    )
    print(f"  offered {n / args.interval:.1f} chunks/s; {chunks} chunks stored")
    print(f"  put -> stored  p50 {pct(lat, 50):.1f} s  p95 {pct(lat, 95):.1f} s  max {max(lat, default=0):.1f} s")
    print(
        f"  stop -> sealed p50 {pct(sealed, 50):.1f} s  p95 {pct(sealed, 95):.1f} s  max {max(sealed, default=0):.1f} s"
    )
    print(f"  failures {len(failures)}" + (f": {failures[:3]}" if failures else ""))
    print(f"  busy cores {busy:.2f} of {os.cpu_count()}")
    per = {k: v / max(chunks, 1) for k, v in cpu.items()}
    print(
        f"  CPU-s per chunk: orchestration (Dagster daemon + runs, webserver) {orch / max(chunks, 1):.3f}, "
        f"Lucid (services + processing in runs) {ours / max(chunks, 1):.3f}  ("
        + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
        + ")"
    )
    goal = n >= 100
    if goal:
        ok = (
            pct(lat, 95) <= 60
            and pct(sealed, 95) <= 30
            and not failures
            and busy <= 1.2
            and orch / max(chunks, 1) <= 0.1
        )
        print(f"  {'MET' if ok else 'MISS'} issue 13's goal at {n} sessions")
    if n == 1:
        print(f"  {'MET' if max(sealed, default=99) <= 15 else 'MISS'} one session: stop -> sealed <= 15 s")


BATCH_TAG = "lucid/batch"


def worker_overrides(workers: int) -> dict:
    """dagster.yaml overrides for `workers` concurrent batch runs (processing workers). The launcher's
    merge replaces lists whole, so the full tag_concurrency_limits list is rebuilt from dagster.yaml
    with only the batch limit changed; max_concurrent_runs grows by the extra batch slots, so the
    room left for insight and other runs is unchanged."""
    import yaml

    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())["run_coordinator"]["config"]
    limits = [dict(lim) for lim in config["tag_concurrency_limits"]]
    batch = [lim for lim in limits if lim["key"] == BATCH_TAG]
    if len(batch) != 1:
        raise SystemExit(f"dagster.yaml has {len(batch)} {BATCH_TAG} limits, expected one")
    extra = workers - batch[0]["limit"]
    batch[0]["limit"] = workers
    return {
        "run_coordinator": {
            "config": {"max_concurrent_runs": config["max_concurrent_runs"] + extra, "tag_concurrency_limits": limits}
        }
    }


class Embedded:
    """`lucid up`'s platform: four services, Dagster's daemon and webserver, SQLite, runs as processes."""

    name = "embedded default"

    def __init__(self, tmp: Path, workers: int = 1):
        self.name = f"embedded default, {workers} processing worker{'s' if workers != 1 else ''}"
        self.p = Platform(
            data_dir=tmp,
            ports={s: free_port() for s in SERVICES},
            dagster_port=free_port(),
            extra_env={"LUCID_API_KEY": KEY},
            instance_overrides=worker_overrides(workers),
        )
        self.key = KEY

    def start(self) -> None:
        self.p.start(timeout=180)
        self.api_url = self.p.url("api")

    def cpu(self) -> dict[str, float]:
        return cpu_by_process(self.p)

    def runs(self) -> tuple[int, float]:
        return runs_and_processing(self.p)

    def stop(self) -> None:
        self.p.stop()


class Compose:
    """The compose stack (images built beforehand for this host's arch): Postgres, the services, and
    a container per Dagster run. CPU per container from its cgroup (runs: the docker total minus the
    long-lived containers)."""

    name = "compose stack"
    CGROUP = Path("/sys/fs/cgroup/cpuacct/docker")

    def __init__(self, tmp: Path):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
        from compose_smoke import COMPOSE, docker_env

        arch = "arm64" if os.uname().machine in ("aarch64", "arm64") else "amd64"
        self.compose, self.secrets = COMPOSE, tmp / "secrets"
        self.env = {
            **docker_env(arch),
            "TAG": f"latest-{arch}",
            "COMPOSE_PROJECT_NAME": "lucid-capacity",
            "LUCID_SECRETS_DIR": str(self.secrets),
            "LUCID_API_PORT": "8087",
            "LUCID_UP_TIMEOUT": "600",
        }
        self.api_url = "http://127.0.0.1:8087"

    def _run(self, *args: str, capture: bool = False) -> str:
        return (
            subprocess.run(
                [str(self.compose), *args], env=self.env, check=True, text=True, capture_output=capture
            ).stdout
            or ""
        )

    def start(self) -> None:
        self._run("up")
        self.key = (self.secrets / "admin-api-key").read_text().strip()

    def cpu(self) -> dict[str, float]:
        fmt = '{{.ID}} {{.Label "com.docker.compose.service"}}'
        ids = subprocess.run(
            ["docker", "ps", "--no-trunc", "--format", fmt], env=self.env, check=True, text=True, capture_output=True
        ).stdout.split("\n")
        out, named = {}, 0.0
        for line in filter(None, ids):
            cid, _, service = line.partition(" ")
            usage = self.CGROUP / cid / "cpuacct.usage"
            if service and usage.exists():  # run containers have no compose service: in the remainder
                seconds = int(usage.read_text()) / 1e9
                key = service.removeprefix("session-")
                out[key] = out.get(key, 0.0) + seconds
                named += seconds
        total = self.CGROUP / "cpuacct.usage"
        if total.exists():
            out["dagster runs (containers)"] = int(total.read_text()) / 1e9 - named
        return out

    def runs(self) -> tuple[int, float]:
        """`runs_and_processing`, run inside the daemon's container (Dagster's Postgres is not published)."""
        code = (
            "from dagster import DagsterEventType as T, DagsterInstance as I\n"
            "i = I.get(); runs = i.get_runs(); w = 0.0\n"
            "for r in runs:\n"
            "    for rec in i.get_records_for_run(r.run_id, of_type=T.STEP_OUTPUT).records:\n"
            "        m = rec.event_log_entry.dagster_event.event_specific_data.metadata\n"
            "        w += m['processing_cpu_s'].value if 'processing_cpu_s' in m else 0.0\n"
            "print(len(runs), w)\n"
        )
        out = self._run("exec", "-T", "dagster-daemon", "/opt/venv/bin/python", "-c", code, capture=True)
        runs, work = out.split()[-2:]
        return int(runs), float(work)

    def stop(self) -> None:
        """Down with the volumes, once the last run container (auto-removed) has left the network."""
        for _ in range(60):
            left = subprocess.run(
                ["docker", "ps", "-q", "--filter", "label=lucid/role=run"], env=self.env, text=True, capture_output=True
            ).stdout.split()
            if not left:
                break
            time.sleep(2)
        for _ in range(3):
            try:
                self._run("down", "-v", "--remove-orphans")
                return
            except subprocess.CalledProcessError:
                time.sleep(5)
        raise RuntimeError("compose down failed three times: remove the lucid-* volumes and network by hand")


# long: a benchmark's steps in order, each printed as it runs
def measure(n: int, args, chunk: bytes, target) -> dict:
    target.start()
    try:
        auth = {"Authorization": f"Bearer {target.key}"}
        api = httpx.Client(base_url=target.api_url, headers=auth, timeout=120)
        sids = []
        for i in range(n):
            r = api.post("/v1/sessions", json={"name": f"capacity {i}", "source": {"kind": "push"}})
            sids.append(r.json()["id"])
            api.post(f"/v1/sessions/{sids[-1]}/start").raise_for_status()
        time.sleep(2)
        cpu0, (busy0, all0), t0 = target.cpu(), busy_jiffies(), time.monotonic()

        async def run_push() -> dict:
            limits = httpx.Limits(max_connections=min(n, 64))
            async with httpx.AsyncClient(base_url=target.api_url, headers=auth, timeout=120, limits=limits) as a:
                return await push_all(a, sids, chunk, args.interval, args.minutes)

        pushed = asyncio.run(run_push())
        ingest = time.monotonic() - t0
        busy1, all1 = busy_jiffies()
        busy = (busy1 - busy0) / max(all1 - all0, 1) * os.cpu_count()  # while ingesting
        failures = list(pushed["failures"])
        stop_at = {}
        for sid in sids:
            r = api.post(f"/v1/sessions/{sid}/stop")
            stop_at[sid] = datetime.now(UTC)
            if r.status_code != 200:
                failures.append(f"stop {sid[:8]}: {r.status_code} {r.text[:120]}")
        done = wait_sealed(api, sids, args.seal_timeout)
        window = time.monotonic() - t0
        cpu1 = target.cpu()  # ingest and sealing: everything these chunks cost
        lat, sealed, chunks = latencies(api, sids, done, stop_at, failures)
        cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        runs, work = target.runs()
        daemon = "dagster-daemon" if target.name.startswith("embedded") else "dagster runs (containers)"
        cpu[daemon] = cpu.get(daemon, 0.0) - work  # the runs hold our processing: that part is ours
        cpu["processing (in runs)"] = work
        print(f"\n[{target.name}] {runs} Dagster runs")
        report(n, args, chunk, pushed, lat, sealed, failures, (ingest, window), busy, cpu, chunks)
        return {"runs": runs, **figures(lat, sealed, failures, busy, cpu, chunks)}
    finally:
        target.stop()


def latencies(api: httpx.Client, sids: list[str], done: dict, stop_at: dict, failures: list[str]):
    """put -> stored of every chunk and stop -> sealed of every session, from the registry's times."""
    lat, sealed, chunks = [], [], 0

    def ts(iso: str) -> datetime:
        t = datetime.fromisoformat(iso)
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    for sid in sids:
        s = done.get(sid)
        if s is None or s["state"] != "sealed":
            failures.append(f"{sid[:8]} {'not sealed in time' if s is None else s['failure_reason']}")
            continue
        sealed.append((ts(s["sealed_at"]) - stop_at[sid]).total_seconds())
        for c in api.get(f"/v1/sessions/{sid}/chunks").json()["items"]:
            if c["stored_at"]:
                chunks += 1
                lat.append((ts(c["stored_at"]) - ts(c["registered_at"])).total_seconds())
    return lat, sealed, chunks


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", default="1,10,30,100")
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--seal-timeout", type=float, default=600)
    ap.add_argument("--compose", action="store_true", help="the compose stack (images built beforehand)")
    ap.add_argument("--workers", default="1", help="processing workers (concurrent batch runs) to compare, e.g. 1,2")
    ap.add_argument("--json", type=Path, help="also write the figures per (sessions, workers) here")
    args = ap.parse_args()
    try:
        sessions = [int(x) for x in args.sessions.split(",")]
        workers = [int(x) for x in args.workers.split(",")]
    except ValueError:
        ap.error("--sessions and --workers take comma-separated counts, e.g. 1,2")
    if any(w < 1 for w in workers) or len(set(workers)) != len(workers):
        ap.error("--workers: distinct counts, each at least 1")
    if args.compose and workers != [1]:
        ap.error("--workers applies to the embedded platform only (its dagster.yaml is written per run)")
    with tempfile.TemporaryDirectory() as tmp:
        chunk = sample_chunk(Path(tmp))
    results: dict[tuple[int, int], dict] = {}
    for n in sessions:
        for w in workers:
            # a process killed at the end may still be closing files under it: cleanup is best effort
            with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
                target = Compose(Path(tmp)) if args.compose else Embedded(Path(tmp), w)
                results[n, w] = measure(n, args, chunk, target)
    ratios = compare(results, sessions, workers)
    if args.json:
        out = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": [{"sessions": n, "workers": w, **r} for (n, w), r in results.items()],
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(no_nan(out), indent=2, allow_nan=False) + "\n")
    return 0


def no_nan(value):
    """NaN (a percentile of nothing) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


RATIOS = {
    "put_stored_p95_s": "put -> stored p95",
    "stop_sealed_p95_s": "stop -> sealed p95",
    "busy_cores": "busy cores",
    "cpu_s_per_chunk": "CPU-s per chunk",
}


def compare(results: dict[tuple[int, int], dict], sessions: list[int], workers: list[int]) -> list[dict]:
    """Each worker count against the first (W / W0) per N, printed and returned (None: no figure)."""
    if len(workers) < 2:
        return []
    base, out = workers[0], []
    print(f"\n== processing workers: each count against {base} (ratio < 1: less than with {base})")
    for n in sessions:
        for w in workers[1:]:
            row: dict = {"sessions": n, "workers": w, "against": base}
            for key in RATIOS:
                a, b = results[n, w][key], results[n, base][key]
                row[key] = a / b if b and math.isfinite(a) and math.isfinite(b) else None
            print(
                f"  {n} sessions, {w} / {base} workers: "
                + ", ".join(f"{label} {'n/a' if row[k] is None else f'{row[k]:.2f}'}" for k, label in RATIOS.items())
            )
            out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
