#!/usr/bin/env python3
"""Issue 15 on the real embedded platform (services, Dagster daemon and webserver, runs as processes):
how long a pushed chunk's screen text takes to become searchable, and what a backfill costs.

--part live: the embedded DEFAULT settings (only an admin key). One push session (1280x720, 10 s
  chunks) gets a real screen-work chunk every 10 s for --minutes; every chunk types a unique nonsense
  word (zq + 6 letters). Per chunk: stored_at (registry) -> the first GET /v1/search?q=<word> that
  returns it. Reported: lag p50/p95/max (target p95 <= 60 s), where it went (stored -> the follower
  run was created (sensor interval), created -> started (queue, process start), started -> found),
  follow_insight runs launched, and the platform's CPU per recorded minute split into the insight run
  processes (follow_insight) vs everything else.
--part backfill: --sessions short sealed push sessions (2 chunks each), derived by the live follower;
  then their text records are made stale (renamed to an older version tag, as tests/test_insight_e2e.py
  does) and the daemon is restarted with LUCID_INSIGHT_BACKFILL_CRON="* * * * *" (so that the schedule
  cannot race the follower while the sessions are first derived). Reported: the backfill's runs, the
  wall time from the schedule's tick to every record current, the CPU of those run processes, per
  session, and what one run per session would have cost (the CPU of a run that derives nothing: the
  schedule's launcher run, times the sessions).

Run processes: the daemon's code server starts each run as a child process (the run's engine event
"Started process for run (pid: N)" names it). A sampler reads every descendant of those every
--sample seconds; what a run used after its last sample is not attributed to a run but counted
("unattributed", from the code server's cutime) so nothing is hidden.

Usage: python bench/insight_live.py [--part live|backfill|both] [--minutes 8] [--sessions 60]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.capacity import _stat, pct
from lucid_assets.core.states import Insight
from lucid_assets.insight import derive, records
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from services.launcher import SERVICES, Platform
from tests import screenwork
from tests.conftest import free_port
from tests.helpers import create, wait_state

KEY = "bench-admin-key-0123456789abcdef"
TICK = os.sysconf("SC_CLK_TCK")
LETTERS = "abcdefghjkmnpqrstuvwxyz"  # no i, l, o: letters OCR confuses with 1, I, 0
PID_RE = re.compile(r"Started process for run \(pid: (\d+)\)")


def ts(iso: str) -> float:
    t = datetime.fromisoformat(iso)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def push(api: httpx.Client, sid: str, seg, duration_ms: int | None = None) -> None:
    data = seg.path.read_bytes()
    headers = {
        "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
        "X-Chunk-Duration-Ms": str(duration_ms or seg.duration_ms),
    }
    r = api.put(f"/v1/sessions/{sid}/chunks/{seg.seq}", content=data, headers=headers)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"put {sid[:8]}/{seg.seq}: {r.status_code} {r.text[:200]}")


class Sampler:
    """Every `every` s: the CPU (tree) of every run process (a grandchild of the daemon, under its code
    server), the reaped-children CPU of the daemon's children, and the whole platform's CPU."""

    def __init__(self, p: Platform, every: float):
        self.p, self.every = p, every
        self.runs: dict[int, list[tuple[float, float]]] = {}  # pid -> [(time, tree cpu)]
        self.platform: list[tuple[float, float]] = []
        self.reaped: list[tuple[float, float]] = []  # (time, sum of cutime+cstime of the daemon's children)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        now = time.time()
        stats: dict[int, list[str]] = {}
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _stat(int(entry))) is not None:
                stats[int(entry)] = st
                children.setdefault(int(st[1]), []).append(int(entry))

        def tree(pid: int) -> float:
            total, todo = 0.0, [pid]
            while todo:
                q = todo.pop()
                if (st := stats.get(q)) is not None:
                    total += sum(int(x) for x in st[11:15]) / TICK
                todo += children.get(q, [])
            return total

        daemon = self.p.procs.get("dagster-daemon")
        reaped = 0.0
        if daemon is not None:
            for server in children.get(daemon.pid, []):
                reaped += sum(int(x) for x in stats[server][13:15]) / TICK
                for run in children.get(server, []):
                    self.runs.setdefault(run, []).append((now, tree(run)))
        self.reaped.append((now, reaped))
        self.platform.append((now, sum(tree(proc.pid) for proc in self.p.procs.values())))

    def run_cpu(self, pid: int) -> float:
        return self.runs[pid][-1][1] if pid in self.runs else 0.0

    def run_cpu_between(self, pid: int, t0: float, t1: float) -> float:
        """CPU the run process used between t0 and t1 (from its samples)."""
        before = after = 0.0
        for t, v in self.runs.get(pid, []):
            if t <= t0:
                before = v
            if t <= t1:
                after = v
        return max(0.0, after - before)

    def platform_between(self, t0: float, t1: float) -> float:
        a = max((v for t, v in self.platform if t <= t0), default=self.platform[0][1])
        b = max((v for t, v in self.platform if t <= t1), default=a)
        return b - a

    def unattributed(self, t0: float, t1: float, pids: set[int]) -> float:
        """Reaped run CPU not seen in a sample (what a run used after its last one), between t0 and t1.
        The daemon's restart resets its children: callers keep one sampler per daemon."""
        a = max((v for t, v in self.reaped if t <= t0), default=0.0)
        b = max((v for t, v in self.reaped if t <= t1), default=a)
        seen = sum(self.run_cpu(pid) for pid in pids if pid in self.runs and self.runs[pid][-1][0] <= t1)
        return max(0.0, (b - a) - seen)


def run_table(p: Platform) -> list[dict]:
    """Every run: id, job, tags, created/started/ended (epoch s), and its process id."""
    import dagster as dg

    out = []
    with dg.DagsterInstance.from_config(str(p.dagster_home)) as instance:
        for rec in instance.get_run_records():
            run = rec.dagster_run
            pid = None
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                if m := PID_RE.search(entry.message or ""):
                    pid = int(m.group(1))
                    break
            out.append(
                {
                    "run_id": run.run_id,
                    "job": run.job_name,
                    "tags": dict(run.tags),
                    "status": run.status.value,
                    "created": rec.create_timestamp.timestamp(),
                    "started": rec.start_time,
                    "ended": rec.end_time,
                    "pid": pid,
                }
            )
    return sorted(out, key=lambda r: r["created"])


def new_platform(data: Path, extra: dict[str, str] | None = None) -> Platform:
    return Platform(
        data_dir=data,
        ports={n: free_port() for n in SERVICES},
        dagster_port=free_port(),
        extra_env={"LUCID_API_KEY": KEY, **(extra or {})},
    )


def live_script(words: list[str], rng: random.Random, fps: int, chunk_seconds: int) -> list[screenwork.Step]:
    """Per chunk: the word typed as a command, two lines of output, idle to the chunk's end (exact frames)."""
    steps = []
    for w in words:
        cmd = f"ops@web01:~$ grep {w} /var/log/syslog"
        steps.append(screenwork.Step("type", text=cmd))
        steps.append(screenwork.Step("print", lines=[screenwork.words_line(rng, 5) for _ in range(2)]))
        idle = chunk_seconds * fps - len(cmd) * round(fps / 8) - 1  # frames left in the chunk
        steps.append(screenwork.Step("idle", seconds=idle / fps))
    return steps


# long: the live measurement's steps in order, each printed as it runs
def measure_live(args, tmp: Path) -> dict:
    rng = random.Random(args.seed)
    n = max(1, int(args.minutes * 60 / args.chunk_seconds))
    words = ["zq" + "".join(rng.choice(LETTERS) for _ in range(6)) for _ in range(n)]
    t = time.monotonic()
    segs, truth = screenwork.record(
        tmp / "live-rec",
        live_script(words, rng, args.fps, args.chunk_seconds),
        size=(1280, 720),
        fps=args.fps,
        chunk_seconds=args.chunk_seconds,
    )
    where = {w: int(tt // args.chunk_seconds) for tt, text in truth.lines for w in words if w in text}
    print(f"[live] {len(segs)} chunks of 1280x720 screen work encoded in {time.monotonic() - t:.0f} s", flush=True)
    p = new_platform(tmp / "live")  # the embedded default: no insight settings changed
    p.start(timeout=300)
    try:
        api = httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        sid = create(
            api,
            "insight live bench",
            source={"kind": "push"},
            width=1280,
            height=720,
            fps=args.fps,
            chunk_seconds=args.chunk_seconds,
        )
        api.post(f"/v1/sessions/{sid}/start").raise_for_status()
        time.sleep(2)
        sampler = Sampler(p, args.sample).start()
        t0 = time.time()
        stored: dict[int, float] = {}
        registered: dict[int, float] = {}
        found: dict[str, float] = {}
        pending = dict(zip(words, range(n), strict=True))
        pushed = 0

        def poll() -> None:
            for c in api.get(f"/v1/sessions/{sid}/chunks").json()["items"]:
                if c["stored_at"] and c["seq"] not in stored:
                    stored[c["seq"]] = ts(c["stored_at"])
                    registered[c["seq"]] = ts(c["registered_at"])
            for w in list(pending):
                if where.get(w, -1) in stored or w not in where:
                    items = api.get("/v1/search", params={"q": w}).json().get("items", [])
                    if any(h["session_id"] == sid for h in items):
                        found[w] = time.time()
                        del pending[w]

        drain_until = None
        while True:
            now = time.time()
            if pushed < len(segs) and now >= t0 + pushed * args.chunk_seconds:
                push(api, sid, segs[pushed])
                pushed += 1
                if pushed == len(segs):
                    t_end = time.time()
                    drain_until = t_end + args.drain
            poll()
            if drain_until is not None and (not pending or time.time() > drain_until):
                break
            time.sleep(args.poll)
        t_done = time.time()
        sampler.stop()
        api.post(f"/v1/sessions/{sid}/stop")
        runs = run_table(p)
    finally:
        p.stop()

    lags, rows = [], []
    follow = [r for r in runs if r["job"] == "follow_insight"]
    for w, seq in sorted(((w, where.get(w)) for w in words), key=lambda x: (x[1] is None, x[1] or 0)):
        st = stored.get(seq) if seq is not None else None
        hit = found.get(w)
        lag = hit - st if (st and hit) else None
        # the run that derived it: the first to start after it was stored (a run takes what is stored when it
        # starts, so it may have been requested before the chunk was stored)
        run = next((r for r in follow if st and r["started"] and r["started"] >= st), None)
        rows.append(
            {
                "seq": seq,
                "word": w,
                "lag_s": None if lag is None else round(lag, 1),
                "put_to_stored_s": round(st - registered[seq], 1) if st else None,
                "to_run_started_s": round(run["started"] - st, 1) if run else None,
                "created_to_started_s": round(run["started"] - run["created"], 1) if run else None,
                "started_to_found_s": round(hit - run["started"], 1) if run and hit else None,
                "run_wall_s": round(run["ended"] - run["started"], 1) if run and run["ended"] else None,
                "t_stored": round(st - t0, 1) if st else None,
                "t_found": round(hit - t0, 1) if hit else None,
            }
        )
        if lag is not None:
            lags.append(lag)
    window = (t0, t_end)
    insight_pids = {r["pid"] for r in follow if r["pid"]}
    other_pids = {r["pid"] for r in runs if r["pid"] and r["job"] != "follow_insight"}
    minutes = []
    m0 = t0
    while m0 < t_done - 1:  # the recorded minutes, then the drain after the last push
        m1 = min(m0 + 60, t_done)
        ins = sum(sampler.run_cpu_between(pid, m0, m1) for pid in insight_pids)
        other_runs = sum(sampler.run_cpu_between(pid, m0, m1) for pid in other_pids)
        total = sampler.platform_between(m0, m1)
        minutes.append(
            {
                "minute": len(minutes) + 1,
                "drain": m0 >= window[1],
                "seconds": round(m1 - m0),
                "platform_cpu_s": round(total, 1),
                "insight_runs_cpu_s": round(ins, 1),
                "other_runs_cpu_s": round(other_runs, 1),
                "everything_else_cpu_s": round(total - ins, 1),
            }
        )
        m0 = m1
    recorded = [r for r in follow if window[0] <= r["created"] <= window[1]]
    durations = [r["ended"] - r["started"] for r in follow if r["started"] and r["ended"]]
    total_cpu = sampler.platform_between(t0, t_done)
    runs_seen = insight_pids | other_pids
    out = {
        "chunks": len(segs),
        "found": len(found),
        "never_found": [w for w in words if w not in found],
        "lag_p50_s": round(pct(lags, 50), 1),
        "lag_p95_s": round(pct(lags, 95), 1),
        "lag_max_s": round(max(lags, default=float("nan")), 1),
        "target_met": bool(lags) and pct(lags, 95) <= 60 and len(found) == len(segs),
        "breakdown_p50_s": {
            k: round(pct([r[k] for r in rows if r[k] is not None], 50), 1)
            for k in ("put_to_stored_s", "to_run_started_s", "created_to_started_s", "started_to_found_s", "run_wall_s")
        },
        "breakdown_p95_s": {
            k: round(pct([r[k] for r in rows if r[k] is not None], 95), 1)
            for k in ("put_to_stored_s", "to_run_started_s", "created_to_started_s", "started_to_found_s", "run_wall_s")
        },
        "follow_insight_runs": len(follow),
        "follow_insight_runs_in_window": len(recorded),
        "follow_run_seconds_p50": round(pct(durations, 50), 1),
        "follow_run_seconds_max": round(max(durations, default=float("nan")), 1),
        "other_runs": {j: sum(1 for r in runs if r["job"] == j) for j in sorted({r["job"] for r in runs})},
        "window_s": round(t_done - t0),
        "platform_cpu_s": round(total_cpu, 1),
        "insight_runs_cpu_s": round(sum(sampler.run_cpu(pid) for pid in insight_pids), 1),
        "recorded_minutes": round((window[1] - window[0] + args.chunk_seconds) / 60, 2),
        "unattributed_run_cpu_s": round(sampler.unattributed(t0 - 5, t_done, runs_seen), 1),
        "per_minute": minutes,
        "chunks_detail": rows,
        "follow_runs_detail": [
            {k: round(r[k] - t0, 1) if r[k] else None for k in ("created", "started", "ended")} | {"pid": r["pid"]}
            for r in follow
        ],
    }
    report_live(out)
    return out


def report_live(o: dict) -> None:
    print(f"\n== live lag: {o['chunks']} chunks pushed at real time, {o['found']} found by search")
    print(f"  chunk stored -> searchable  p50 {o['lag_p50_s']} s  p95 {o['lag_p95_s']} s  max {o['lag_max_s']} s")
    print(f"  {'MET' if o['target_met'] else 'MISS'} p95 <= 60 s (and every word found)")
    b50, b95 = o["breakdown_p50_s"], o["breakdown_p95_s"]
    print("  where it went (p50 / p95):")
    for k, label in (
        ("put_to_stored_s", "(before: chunk put -> stored)"),
        ("to_run_started_s", "stored -> the run that took it started"),
        ("created_to_started_s", "  that run: created -> started"),
        ("started_to_found_s", "that run started -> found by search"),
        ("run_wall_s", "  that run's wall time"),
    ):
        print(f"    {label:34s} {b50[k]:6.1f} / {b95[k]:6.1f} s")
    print(
        f"  follow_insight runs: {o['follow_insight_runs']} ({o['follow_insight_runs_in_window']} created while "
        f"pushing); run wall p50 {o['follow_run_seconds_p50']} s, max {o['follow_run_seconds_max']} s; "
        f"other runs {o['other_runs']}"
    )
    print(f"  {'min':>4} {'platform CPU-s':>15} {'insight runs':>13} {'other runs':>11} {'everything else':>16}")
    for m in o["per_minute"]:
        print(
            f"  {m['minute']:3d}{'d' if m['drain'] else ' '} {m['platform_cpu_s']:15.1f} "
            f"{m['insight_runs_cpu_s']:13.1f} {m['other_runs_cpu_s']:11.1f} {m['everything_else_cpu_s']:16.1f}"
        )
    print(
        f"  whole window {o['window_s']} s: platform {o['platform_cpu_s']} CPU-s, insight runs "
        f"{o['insight_runs_cpu_s']}, run CPU after the last sample (unattributed) {o['unattributed_run_cpu_s']}"
    )
    per = o["recorded_minutes"] or 1
    print(
        f"  per recorded minute: platform {o['platform_cpu_s'] / per:.1f} CPU-s, insight runs "
        f"{o['insight_runs_cpu_s'] / per:.1f} CPU-s (d: the drain after the last push)"
    )
    if o["never_found"]:
        print(f"  never found: {o['never_found']}")


def restart_daemon(p: Platform, extra: dict[str, str]) -> None:
    """Stop the daemon (and its code server and runs), start it with `extra` in its environment."""
    proc = p.procs["dagster-daemon"]
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)
    p.extra_env.update(extra)
    p._spawn(p.program("dagster-daemon"), p.env())


def all_current(store: ChunkStore, sids: dict[str, int], product: Insight, version: str) -> int:
    return sum(records.Records(store, sid).current(product, version) == set(range(n)) for sid, n in sids.items())


def wait_until(fn, timeout: float, what: str, every: float = 2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := fn():
            return got
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


# long: the backfill measurement's steps in order, each printed as it runs
def measure_backfill(args, tmp: Path) -> dict:
    rng = random.Random(args.seed + 1)
    steps = screenwork.typical(rng, minutes=1)
    segs, _ = screenwork.record(tmp / "bf-rec", steps, size=(640, 360), fps=5, chunk_seconds=5)
    segs = segs[: args.chunks]
    p = new_platform(tmp / "backfill")  # default cron first: the schedule must not race the follower
    p.start(timeout=300)
    try:
        api = httpx.Client(base_url=p.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        t = time.monotonic()
        sids: dict[str, int] = {}
        for i in range(args.sessions):
            sid = create(api, f"backfill {i}", source={"kind": "push"}, width=640, height=360, fps=5, chunk_seconds=5)
            api.post(f"/v1/sessions/{sid}/start").raise_for_status()
            for s in segs:
                push(api, sid, s)
            api.post(f"/v1/sessions/{sid}/stop").raise_for_status()
            sids[sid] = len(segs)
        for sid in sids:
            if wait_state(api, sid, {"sealed", "failed"}, timeout=600)["state"] != "sealed":
                raise RuntimeError(f"session {sid} failed")
        print(
            f"[backfill] {len(sids)} sessions of {len(segs)} chunks sealed in {time.monotonic() - t:.0f} s", flush=True
        )
        store = ChunkStore.from_settings(Settings(data_dir=p.data_dir))
        t = time.monotonic()
        wait_until(
            lambda: all_current(store, sids, Insight.TEXT, derive.TEXT_VERSION) == len(sids),
            args.derive_timeout,
            "the live follower to derive every session",
            every=5,
        )
        print(f"[backfill] the live follower derived them {time.monotonic() - t:.0f} s later", flush=True)
        before = {r["run_id"] for r in run_table(p)}
        for sid in sids:  # as if an older OCR model had made them
            recs = records.Records(store, sid)
            for path in recs.dir(Insight.TEXT).glob("*.bin"):
                path.rename(recs.path(Insight.TEXT, int(path.name.split(".")[0]), "text/0/an-older-model"))
        t_stale = time.time()
        restart_daemon(p, {"LUCID_INSIGHT_BACKFILL_CRON": "* * * * *"})
        sampler = Sampler(p, args.sample).start()
        wait_until(
            lambda: all_current(store, sids, Insight.TEXT, derive.TEXT_VERSION) == len(sids),
            args.backfill_timeout,
            "the backfill",
        )
        t_done = time.time()
        time.sleep(args.sample * 3)  # the last run process exits and is sampled
        sampler.stop()
        runs = [r for r in run_table(p) if r["run_id"] not in before]
        import dagster as dg

        with dg.DagsterInstance.from_config(str(p.dagster_home)) as instance:
            mine = [b for b in instance.get_backfills() if b.tags.get("lucid/insight") == "backfill"]
            backfill = {"id": mine[0].backfill_id, "title": mine[0].title, "created": mine[0].backfill_timestamp}
    finally:
        p.stop()
    bf_runs = [r for r in runs if r["tags"].get("dagster/backfill") == backfill["id"]]
    launcher = [r for r in runs if r["job"] == "launch_insight_backfill"]
    tick = launcher[0]["created"] if launcher else backfill["created"]
    bf_cpu = [sampler.run_cpu(r["pid"]) for r in bf_runs if r["pid"]]
    noop = [sampler.run_cpu(r["pid"]) for r in launcher if r["pid"]]
    noop_cpu = pct(noop, 50) if noop else float("nan")
    total = sum(bf_cpu)
    out = {
        "sessions": len(sids),
        "chunks_per_session": len(segs),
        "backfill": backfill["title"],
        "backfill_runs": len(bf_runs),
        "other_runs_meanwhile": {
            j: sum(1 for r in runs if r["job"] == j and r not in bf_runs) for j in {r["job"] for r in runs}
        },
        "stale_to_tick_s": round(tick - t_stale, 1),
        "tick_to_backfill_added_s": round(backfill["created"] - tick, 1),
        "tick_to_all_current_s": round(t_done - tick, 1),
        "added_to_first_run_created_s": round(min(r["created"] for r in bf_runs) - backfill["created"], 1)
        if bf_runs
        else None,
        "last_run_end_to_all_current_s": round(t_done - max(r["ended"] or t_done for r in bf_runs), 1)
        if bf_runs
        else None,
        "backfill_runs_wall_s": [round(r["ended"] - r["started"], 1) for r in bf_runs if r["started"] and r["ended"]],
        "backfill_runs_queue_s": [round(r["started"] - r["created"], 1) for r in bf_runs if r["started"]],
        "backfill_runs_cpu_s": [round(c, 1) for c in bf_cpu],
        "backfill_cpu_s": round(total, 1),
        "cpu_per_session_s": round(total / max(len(sids), 1), 2),
        "noop_run_cpu_s": round(noop_cpu, 2),
        "one_run_per_session_overhead_cpu_s": round(noop_cpu * len(sids), 1),
        "unattributed_run_cpu_s": round(
            sampler.unattributed(t_stale, time.time(), {r["pid"] for r in runs if r["pid"]}), 1
        ),
    }
    report_backfill(out)
    return out


def report_backfill(o: dict) -> None:
    print(f"\n== backfill: {o['sessions']} sealed sessions x {o['chunks_per_session']} chunks, text made stale")
    print(f"  {o['backfill']}: {o['backfill_runs']} runs (other runs meanwhile: {o['other_runs_meanwhile']})")
    print(
        f"  stale -> schedule tick {o['stale_to_tick_s']} s (daemon restart included); tick -> backfill added "
        f"{o['tick_to_backfill_added_s']} s; tick -> every record current {o['tick_to_all_current_s']} s"
    )
    print(
        f"  backfill added -> its first run created {o['added_to_first_run_created_s']} s; "
        f"last run ended -> seen current {o['last_run_end_to_all_current_s']} s"
    )
    print(
        f"  runs: wall {o['backfill_runs_wall_s']} s, queued {o['backfill_runs_queue_s']} s, "
        f"CPU {o['backfill_runs_cpu_s']} s"
    )
    print(f"  backfill CPU {o['backfill_cpu_s']} s = {o['cpu_per_session_s']} CPU-s per session")
    print(
        f"  a run that derives nothing (the launcher run) costs {o['noop_run_cpu_s']} CPU-s: one run per session "
        f"would have added ~{o['one_run_per_session_overhead_cpu_s']} CPU-s of Dagster overhead"
    )
    print(f"  run CPU after the last sample (unattributed): {o['unattributed_run_cpu_s']} s")


def from_snapshot(argv: list[str]) -> None:
    """Run again from a copy of the last commit (this script beside it): several people edit the
    working tree while the benchmark runs, and its processes import the code when each one starts
    (a run process minutes after the services), so an edit mid-run would mix code versions."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    snap = Path(tempfile.mkdtemp(prefix="insight-live-snapshot-"))
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, check=True)
    shutil.copyfile(__file__, snap / "bench" / "insight_live.py")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"[snapshot] {head.stdout.strip()} in {snap}", flush=True)
    script = str(snap / "bench" / "insight_live.py")
    os.chdir(snap)
    os.execv(sys.executable, [sys.executable, script, *argv])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", action="store_true", help="run from a copy of HEAD (the tree is being edited)")
    ap.add_argument("--part", choices=("live", "backfill", "both"), default="both")
    ap.add_argument("--minutes", type=float, default=8)
    ap.add_argument("--chunk-seconds", type=int, default=10)
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--drain", type=float, default=180, help="after the last push, wait this long for the rest")
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--sample", type=float, default=0.5)
    ap.add_argument("--sessions", type=int, default=60)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--derive-timeout", type=float, default=900)
    ap.add_argument("--backfill-timeout", type=float, default=900)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", type=Path, help="also write the JSON summary here")
    args = ap.parse_args()
    if args.snapshot:
        from_snapshot([a for a in sys.argv[1:] if a != "--snapshot"])
    summary = {}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        if args.part in ("live", "both"):
            summary["live"] = measure_live(args, Path(tmp))
        if args.part in ("backfill", "both"):
            summary["backfill"] = measure_backfill(args, Path(tmp))
    text = json.dumps(summary, indent=1)
    print(
        "\nJSON "
        + json.dumps({k: {kk: vv for kk, vv in v.items() if not kk.endswith("_detail")} for k, v in summary.items()})
    )
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
