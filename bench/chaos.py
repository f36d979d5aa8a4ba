#!/usr/bin/env python3
"""Chaos on the embedded default (#14), with the real platform (the four services and Dagster's
daemon, SQLite): kill a component with SIGKILL at random moments and measure what is lost.

Scenarios:

  recorder-kill   --sessions N sessions record (the test pattern); at a random moment the recorder
                  process is killed with SIGKILL and restarted; its crash recovery finalizes every
                  session from the completed segments plus the partial one, salvaged up to its last
                  complete frame. Per session: video lost = kill time - recording start - time of
                  the last recorded frame (an upper bound: the first frame is captured a little
                  after the session's started_at). Target: <= ~1 s. Also: sessions sealed and
                  verified / total, salvaged chunks that decode fully, time from the kill to the
                  recorder answering again and to every session sealed.
  components      the platform as `lucid up` runs it (supervisord, webserver included), --sessions
                  (20) recording; every component in COMPONENTS killed --kills (3) times, in random
                  order at random moments (--gap-min/--gap-max s apart): the main process of the
                  recorder, pipeline, storage, gateway, Dagster daemon or webserver (supervisord
                  restarts it), or a run worker (see run_workers). A recorder kill ends the sessions
                  it had (measured as in recorder-kill) and as many new ones start. After each kill:
                  back (restarted and healthy) and caught up (every chunk registered before the kill
                  stored). At the end every session is stopped and sealed; the JSON report has
                  sealed+verified/total, video lost per recorder kill, chunks lost (registered seqs
                  with gaps, finalized-but-unregistered, or registered but not in the Iceberg
                  catalog), duplicate (session_id, seq) catalog rows, CPU-seconds. Target: all
                  sealed and verified, <= 1 s per recorder kill, 0 chunks lost, 0 duplicates.
  disk-full       the recordings directory on its own small tmpfs (--volume-mb, never the machine's
                  disk): sessions record, the volume is filled to the last byte and held full
                  (--full-seconds), then freed and new sessions record; reports what each did.
  load            --sessions (8) at 1280x720@30 for --minutes (10): dropped frames, chunks
                  registered vs catalogued, sealed+verified, busy cores (machine and platform).

Usage: python bench/chaos.py recorder-kill [--kills 5] [--sessions 4] [--size 640x360] [--fps 15]
       [--chunk-seconds 10] [--seed 14]
       python bench/chaos.py components [--sessions 20] [--kills 3] [--components recorder,api,...]
       [--gap-min 5] [--gap-max 30] [--catch-up-timeout 300]
       python bench/chaos.py disk-full [--sessions 4] [--volume-mb 8] [--full-seconds 20]
       python bench/chaos.py load [--sessions 8] [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import httpx

from lucid_assets.core import catalog as catalog_schema
from lucid_assets.core.states import ChunkState, State
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from services.launcher import SERVICES, Platform, Supervised, answers
from tests.conftest import free_port

KEY = "bench-admin-key-0123456789abcdef"


def wait_all(api: httpx.Client, sids: list[str], timeout: float = 600) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = {sid: api.get(f"/v1/sessions/{sid}").json() for sid in sids}
        if all(s["state"] in (State.SEALED, State.FAILED) for s in found.values()):
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


# ---- components: every component of the supervised platform, killed in turn ----------------------

COMPONENTS = ("recorder", "pipeline", "storage", "api", "dagster-daemon", "dagster-webserver", "run-worker")
ENDED = (State.SEALED, State.FAILED)


def call(api: httpx.Client, method: str, url: str, timeout: float = 180, **kw) -> httpx.Response:
    """One gateway call that outlives a component being down: connection errors and 5xx are
    retried (the gateway itself, or the service behind it, may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = api.request(method, url, **kw)
            if r.status_code < 500:
                return r
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{method} {url}: no answer in {timeout:.0f} s")
        time.sleep(0.5)


def children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(stat.parent.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_workers(daemon_pid: int) -> list[int]:
    """The processes running Dagster runs. In the embedded default the daemon's QueuedRunCoordinator
    hands a run to the DefaultRunLauncher, which asks the code server the daemon spawned (`dagster
    api grpc`, the daemon's child) to start it: the code server starts one process per run
    (multiprocessing, spawn), which executes the whole run (in-process executor). So a run worker is
    a grandchild of the daemon that is not multiprocessing's resource tracker."""
    tree = children()
    out = []
    for server in tree.get(daemon_pid, []):
        for pid in tree.get(server, []):
            if "resource_tracker" not in cmdline(pid):
                out.append(pid)
    return out


class CpuMeter(threading.Thread):
    """CPU-seconds of a process tree (supervisord and everything under it), sampled every second
    from /proc: each process counts with its own user+system time as last seen. Processes that
    lived less than a second, or the CPU a process spent after it left the tree (a killed daemon's
    orphaned code server), are missed: a lower bound."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.seen, self.stop_event = root, {}, threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            tree = children()
            todo = [(pid, label(pid)) for pid in tree.get(self.root, [])]  # supervisord's programs
            while todo:
                pid, name = todo.pop()
                todo += [(child, name) for child in tree.get(pid, [])]
                try:
                    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    start = f[19]  # with the pid, tells a process from a later one given the same pid
                    self.seen[(pid, start)] = (name, (int(f[11]) + int(f[12])) / self.tick)  # utime + stime
                except (OSError, IndexError, ValueError):
                    pass

    def total(self) -> float:
        self.stop_event.set()
        self.join()
        return sum(cpu for _, cpu in self.seen.values())

    def by_program(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, cpu in self.seen.values():
            out[name] = round(out.get(name, 0) + cpu, 1)
        return out


def label(pid: int) -> str:
    """Which program of the platform a child of supervisord is (its command line)."""
    argv = cmdline(pid)
    for name in (*SERVICES, "dagster-daemon", "dagster-webserver"):
        if f"services.{name}.app" in argv or f"bin/{name} " in argv:
            return name
    return "other"


@dataclass
class Kill:
    component: str
    at: float  # seconds since the platform was up
    pid: int
    back_s: float | None = None  # running again (supervisord) and answering its health check
    caught_up_s: float | None = None  # every chunk registered before the kill stored
    ended: list[str] = field(default_factory=list)  # sessions the kill ended (a recorder kill)


@dataclass
class Chaos:
    """The supervised platform with N sessions recording, and the bookkeeping of every kill."""

    sup: Supervised
    api: httpx.Client
    body: dict
    rng: random.Random
    t0: float = field(default_factory=time.time)
    live: list[str] = field(default_factory=list)
    all: list[str] = field(default_factory=list)
    killed_at: dict[str, float] = field(default_factory=dict)  # session -> the recorder kill that ended it
    kills: list[Kill] = field(default_factory=list)

    def start_sessions(self, n: int) -> None:
        for _ in range(n):
            r = call(self.api, "POST", "/v1/sessions", json={**self.body, "name": f"chaos {len(self.all)}"})
            r.raise_for_status()
            sid = r.json()["id"]
            call(self.api, "POST", f"/v1/sessions/{sid}/start").raise_for_status()
            self.live.append(sid)
            self.all.append(sid)

    def pid_of(self, component: str, timeout: float = 120) -> int:
        if component != "run-worker":
            return self.sup.states()[component]["pid"]
        deadline = time.monotonic() + timeout  # wait for a run in flight (live batches come every ~10 s)
        while True:
            workers = run_workers(self.sup.states()["dagster-daemon"]["pid"])
            if workers:
                return self.rng.choice(workers)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Dagster run in flight for {timeout:.0f} s")
            time.sleep(0.2)

    def wait_back(self, component: str, old: int, timeout: float = 180) -> float:
        start = time.time()
        if component == "run-worker":  # nothing to restart: the run's failure is the code server's to report
            while Path(f"/proc/{old}").exists() and time.time() - start < timeout:
                time.sleep(0.1)
            return time.time() - start
        health = {p.name: p.health for p in self.sup.platform.programs()}[component]
        while time.time() - start < timeout:
            info = self.sup.states()[component]
            # a service is back when its new process answers its health check; the daemon (no
            # health URL) when supervisord counts it as started (up for startsecs)
            wanted = ("STARTING", "RUNNING") if health else ("RUNNING",)
            if info["statename"] in wanted and info["pid"] not in (0, old) and answers(health):
                return time.time() - start
            if info["statename"] == "FATAL":
                raise RuntimeError(f"{component} gave up after the kill: {info}")
            time.sleep(0.2)
        raise RuntimeError(f"{component} not back {timeout:.0f} s after the kill")

    def caught_up(self, since: float, timeout: float) -> float | None:
        """Seconds from `since` until every chunk of every session registered before it is stored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = 0
            for sid in self.all:
                for c in call(self.api, "GET", f"/v1/sessions/{sid}/chunks").json()["items"]:
                    registered = datetime.fromisoformat(c["registered_at"]).timestamp()
                    behind += registered <= since and c["state"] != ChunkState.STORED
            if not behind:
                return time.time() - since
            time.sleep(1)
        return None

    def kill(self, component: str, catch_up_timeout: float | None) -> Kill:
        pid = self.pid_of(component)
        live = list(self.live)
        at = time.time()
        os.kill(pid, signal.SIGKILL)  # the component's main process, as a crash (OOM, a segfault) would
        k = Kill(component, round(at - self.t0, 1), pid)
        k.back_s = round(self.wait_back(component, pid), 2)
        if component == "recorder":  # its crash recovery ends every recording it had
            k.ended = live
            self.killed_at.update(dict.fromkeys(live, at))
            self.live = []
            self.start_sessions(len(live))
        if catch_up_timeout:
            got = self.caught_up(at, catch_up_timeout)
            k.caught_up_s = None if got is None else round(got, 1)
        self.kills.append(k)
        print(
            f"kill {len(self.kills)}: {component} pid {pid} at {k.at} s; back in {k.back_s} s, "
            f"caught up in {k.caught_up_s} s",
            flush=True,
        )
        return k


def catalog_duplicates(data: Path) -> tuple[dict[str, set[int]], int]:
    """(catalogued seqs per session, duplicate (session_id, seq) rows) in the Iceberg chunks table."""
    s = Settings(data_dir=data)
    lake = Lake.sql(s.catalog, s.warehouse_uri)
    rows = lake.table(catalog_schema.CHUNKS).scan(selected_fields=("session_id", "seq")).to_arrow().to_pylist()
    counts = Counter((r["session_id"], r["seq"]) for r in rows)
    seqs: dict[str, set[int]] = {}
    for sid, seq in counts:
        seqs.setdefault(sid, set()).add(seq)
    return seqs, sum(n - 1 for n in counts.values() if n > 1)


def session_outcome(api: httpx.Client, sid: str, s: dict, killed_at: float | None, scratch: Path) -> dict:
    """One session after the run: sealed and verified; the chunks registered; for a session a
    recorder kill ended, the video lost at the kill (see measure_session)."""
    if killed_at is not None and s["state"] == State.SEALED:
        out = measure_session(api, sid, s, killed_at, scratch)
    else:
        verified = s["state"] == State.SEALED and bool(call(api, "POST", f"/v1/sessions/{sid}/verify").json().get("ok"))
        out = {"sid": sid, "state": s["state"], "verified": verified, "lost": None, "whole": True}
    chunks = call(api, "GET", f"/v1/sessions/{sid}/chunks").json()["items"]
    out["registered"] = sorted(c["seq"] for c in chunks)
    out["expected"] = s.get("expected_chunks")
    out["dropped"] = s.get("dropped_frames", 0)
    out["reason"] = s.get("failure_reason")
    return out


def chunks_lost(r: dict, catalogued: set[int]) -> int:
    """Chunks the recorder made that were not sealed: gaps in the registered seqs, chunks the
    recorder finalized with but never registered, registered chunks that are not in the catalog."""
    reg = r["registered"]
    gaps = (reg[-1] + 1 - len(reg)) if reg else 0
    unregistered = max(0, (r["expected"] or 0) - len(reg))
    return gaps + unregistered + len(set(reg) - catalogued)


# long: the whole episode (platform up, sessions, every kill, stop, measure, report) in one place
def run_components(
    sessions: int = 20,
    kills_each: int = 3,
    size: str = "320x240",
    fps: int = 10,
    chunk_seconds: int = 10,
    gap: tuple[float, float] = (5, 30),
    seed: int = 14,
    catch_up_timeout: float | None = 300,
    components: tuple[str, ...] = COMPONENTS,
    data_dir: Path | None = None,
) -> dict:
    """The `components` scenario; returns the report (a dict, JSON-ready)."""
    rng = random.Random(seed)
    w, h = (int(x) for x in size.split("x"))
    body = {"video": {"width": w, "height": h, "fps": fps}, "chunk_seconds": chunk_seconds}
    schedule = [c for c in components for _ in range(kills_each)]
    rng.shuffle(schedule)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(data_dir or tmp) / "data"
        ports = {n: free_port() for n in SERVICES}
        platform = Platform(data_dir=data, ports=ports, dagster_port=free_port(), extra_env={"LUCID_API_KEY": KEY})
        sup = Supervised(platform)
        sup.start(timeout=300)
        meter = CpuMeter(sup.proc.pid)
        meter.start()
        wall0 = time.time()
        try:
            api = httpx.Client(base_url=platform.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
            chaos = Chaos(sup, api, body, rng)
            chaos.start_sessions(sessions)
            for component in schedule:
                time.sleep(rng.uniform(*gap))  # a random moment
                chaos.kill(component, catch_up_timeout)
            time.sleep(rng.uniform(*gap))
            stopped_at = time.time()
            for sid in chaos.live:
                call(api, "POST", f"/v1/sessions/{sid}/stop")
            states = wait_all(api, chaos.all, timeout=900)
            sealed_s = time.time() - stopped_at
            outcomes = [session_outcome(api, sid, states[sid], chaos.killed_at.get(sid), data) for sid in chaos.all]
            restarts = {n: i["description"] for n, i in sup.states().items()}
        finally:
            cpu = meter.total()
            sup.stop()
        wall = time.time() - wall0
        catalogued, duplicates = catalog_duplicates(data)
    for r in outcomes:
        r["lost_chunks"] = chunks_lost(r, catalogued.get(r["sid"], set()))
    by_kill = [r for r in outcomes if r["sid"] in chaos.killed_at]
    lost_s = sorted(r["lost"] for r in by_kill if r["lost"] is not None)
    other_lost = sum(r["lost_chunks"] for r in outcomes)
    ok_sessions = [r for r in outcomes if r["state"] == State.SEALED and r["verified"] and r["whole"]]
    report = {
        "scenario": "components",
        "shape": {"sessions_live": sessions, "size": size, "fps": fps, "chunk_seconds": chunk_seconds},
        "kills": [k.__dict__ | {"ended": len(k.ended)} for k in chaos.kills],
        "sessions_total": len(outcomes),
        "sessions_sealed_verified": len(ok_sessions),
        "not_sealed": [
            {"sid": r["sid"], "state": r["state"], "reason": r["reason"]} for r in outcomes if r not in ok_sessions
        ],
        "video_lost_per_recorder_kill_s": {
            "sessions": len(lost_s),
            "mean": round(statistics.mean(lost_s), 3) if lost_s else None,
            "max": round(lost_s[-1], 3) if lost_s else None,
        },
        "chunks_registered": sum(len(r["registered"]) for r in outcomes),
        "chunks_lost": other_lost,
        "duplicate_catalog_rows": duplicates,
        "dropped_frames": sum(r["dropped"] for r in outcomes),
        "all_sealed_after_stop_s": round(sealed_s, 1),
        "recover": {
            c: {
                "back_s_max": max((k.back_s for k in chaos.kills if k.component == c), default=None),
                "caught_up_s_max": max(
                    (k.caught_up_s for k in chaos.kills if k.component == c and k.caught_up_s is not None),
                    default=None,
                ),
            }
            for c in components
        },
        "supervisord_at_end": restarts,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "busy_cores": round(cpu / wall, 2),
        "cpu_s_by_program": meter.by_program(),  # a run worker counts under the daemon
    }
    report["ok"] = (
        len(ok_sessions) == len(outcomes) and other_lost == 0 and duplicates == 0 and (not lost_s or lost_s[-1] <= 1.0)
    )
    return report


def components(args) -> int:
    report = run_components(
        sessions=args.sessions,
        kills_each=args.kills,
        size=args.size,
        fps=args.fps,
        chunk_seconds=args.chunk_seconds,
        gap=(args.gap_min, args.gap_max),
        seed=args.seed,
        catch_up_timeout=args.catch_up_timeout or None,
        components=tuple(args.components.split(",")),
    )
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


# ---- disk-full: the recordings volume fills while recording, then is freed ----------------------


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (others' work included)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def fill(directory: Path) -> int:
    """Write one file into `directory` until its filesystem is full; the bytes written."""
    block, written = b"\0" * 65536, 0
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(block)
        except OSError:
            pass
    return written


def states_of(api: httpx.Client, sids: list[str]) -> dict[str, dict]:
    return {sid: call(api, "GET", f"/v1/sessions/{sid}").json() for sid in sids}


def ended_report(api: httpx.Client, data: Path, sids: list[str], states: dict[str, dict]) -> list[dict]:
    catalogued, _ = catalog_duplicates(data)
    out = []
    for sid in sids:
        s = states[sid]
        r = session_outcome(api, sid, s, None, data)
        out.append(
            {
                "state": s["state"],
                "reason": s["failure_reason"] or s["end_reason"],
                "registered": len(r["registered"]),
                "catalogued": len(catalogued.get(sid, set())),
                "verified": r["verified"],
                "dropped_frames": r["dropped"],
            }
        )
    return out


# long: mount, record, fill, hold, free, record again, measure, unmount: one episode in order
def run_disk_full(
    sessions: int = 4,
    size: str = "320x240",
    fps: int = 10,
    chunk_seconds: int = 2,
    volume_mb: int = 8,
    full_seconds: float = 20,
) -> dict:
    """The recordings directory on its own small tmpfs (never the machine's disk): sessions record,
    the volume is filled to the last byte, held full, freed; then new sessions record on it."""
    w, h = (int(x) for x in size.split("x"))
    body = {"video": {"width": w, "height": h, "fps": fps}, "chunk_seconds": chunk_seconds}
    with tempfile.TemporaryDirectory() as tmp:
        mnt, data = Path(tmp) / "recordings", Path(tmp) / "data"
        mnt.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={volume_mb}m,mode=0700", "tmpfs", str(mnt)]
        if subprocess.run(mount, capture_output=True).returncode:
            raise RuntimeError("cannot mount a small tmpfs (needs root)")
        try:
            ports = {n: free_port() for n in SERVICES}
            env = {"LUCID_API_KEY": KEY, "LUCID_RECORDINGS_DIR": str(mnt)}
            platform = Platform(data_dir=data, ports=ports, dagster_port=free_port(), extra_env=env)
            sup = Supervised(platform)
            sup.start(timeout=300)
            try:
                api = httpx.Client(
                    base_url=platform.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=120
                )
                chaos = Chaos(sup, api, body, random.Random(0))
                chaos.start_sessions(sessions)
                time.sleep(3 * chunk_seconds)  # a few segments written and registered before
                full_at = time.time()
                filled = fill(mnt)
                time.sleep(full_seconds)
                during = states_of(api, chaos.all)
                failed = [sid for sid, s in during.items() if s["state"] == State.FAILED]
                (mnt / "filler").unlink()
                freed_at = time.time()
                first = list(chaos.all)
                chaos.live = [sid for sid in chaos.live if sid not in failed]
                chaos.start_sessions(sessions)  # a new recording on the freed volume
                time.sleep(3 * chunk_seconds)
                for sid in chaos.live:
                    call(api, "POST", f"/v1/sessions/{sid}/stop")
                states = wait_all(api, chaos.all, timeout=600)
                settled_s = time.time() - freed_at
                before = ended_report(api, data, first, states)
                after = ended_report(api, data, chaos.all[len(first) :], states)
                left = sorted(p.name for p in mnt.rglob("*") if p.is_file())
            finally:
                sup.stop()
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return {
        "scenario": "disk-full",
        "volume_mb": volume_mb,
        "filled_bytes": filled,
        "held_full_s": round(freed_at - full_at, 1),
        "failed_while_full": len(failed),
        "sessions_recording_when_filled": before,
        "sessions_after_freeing": after,
        # segments the failed sessions had registered and that were never stored (plaintext staging)
        "chunks_registered_not_stored": sum(s["registered"] - s["catalogued"] for s in before + after),
        "all_ended_after_freeing_s": round(settled_s, 1),
        "files_left_on_the_volume": left,
    }


def disk_full(args) -> int:
    report = run_disk_full(
        sessions=args.sessions,
        size=args.size,
        fps=args.fps,
        chunk_seconds=args.chunk_seconds,
        volume_mb=args.volume_mb,
        full_seconds=args.full_seconds,
    )
    print(json.dumps(report, indent=2))
    ok = all(s["state"] == State.SEALED and s["verified"] for s in report["sessions_after_freeing"])
    ok &= all(
        s["state"] == State.SEALED or "disk full" in (s["reason"] or "")
        for s in report["sessions_recording_when_filled"]
    )
    return 0 if ok else 1


# ---- load: sessions at 720p30 for minutes, nothing killed --------------------------------------


# long: record, sample the machine, stop, measure, in order
def run_load(
    sessions: int = 8, size: str = "1280x720", fps: int = 30, chunk_seconds: int = 10, minutes: float = 10
) -> dict:
    """N sessions recording at once on the supervised platform for `minutes`: dropped frames,
    chunks registered vs catalogued, how busy the machine was."""
    w, h = (int(x) for x in size.split("x"))
    body = {"video": {"width": w, "height": h, "fps": fps}, "chunk_seconds": chunk_seconds}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ports = {n: free_port() for n in SERVICES}
        platform = Platform(data_dir=data, ports=ports, dagster_port=free_port(), extra_env={"LUCID_API_KEY": KEY})
        sup = Supervised(platform)
        sup.start(timeout=300)
        meter = CpuMeter(sup.proc.pid)
        meter.start()
        try:
            api = httpx.Client(base_url=platform.url("api"), headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
            chaos = Chaos(sup, api, body, random.Random(0))
            chaos.start_sessions(sessions)
            busy0, total0 = cpu_busy()
            started = time.time()
            time.sleep(minutes * 60)
            busy1, total1 = cpu_busy()
            recorded_s = time.time() - started
            for sid in chaos.live:
                call(api, "POST", f"/v1/sessions/{sid}/stop")
            stopped_at = time.time()
            states = wait_all(api, chaos.all, timeout=1800)
            sealed_s = time.time() - stopped_at
            per = ended_report(api, data, chaos.all, states)
            frames = {
                sid: sum(c["frames"] for c in call(api, "GET", f"/v1/sessions/{sid}/chunks").json()["items"])
                for sid in chaos.all
            }
        finally:
            cpu = meter.total()
            sup.stop()
    dropped = sum(s["dropped_frames"] for s in per)
    return {
        "scenario": "load",
        "shape": {"sessions": sessions, "size": size, "fps": fps, "chunk_seconds": chunk_seconds},
        "recorded_s": round(recorded_s, 1),
        "sessions_sealed_verified": sum(1 for s in per if s["state"] == State.SEALED and s["verified"]),
        "sessions_total": len(per),
        "chunks_registered": sum(s["registered"] for s in per),
        "chunks_catalogued": sum(s["catalogued"] for s in per),
        "frames_recorded": sum(frames.values()),
        "dropped_frames": dropped,
        "dropped_per_session": [s["dropped_frames"] for s in per],
        "all_sealed_after_stop_s": round(sealed_s, 1),
        "busy_cores_machine": round(os.cpu_count() * (busy1 - busy0) / max(1, total1 - total0), 2),
        "platform_cpu_s": round(cpu, 1),
        "platform_busy_cores": round(cpu / (recorded_s + sealed_s), 2),
        "cpu_s_by_program": meter.by_program(),  # a run worker counts under the daemon
        "failures": [s["reason"] for s in per if s["state"] != State.SEALED],
    }


def load(args) -> int:
    report = run_load(args.sessions, args.size, args.fps, args.chunk_seconds, args.minutes)
    print(json.dumps(report, indent=2))
    ok = report["chunks_registered"] == report["chunks_catalogued"] and report["dropped_frames"] == 0
    return 0 if ok and report["sessions_sealed_verified"] == report["sessions_total"] else 1


SCENARIOS = {"recorder-kill": recorder_kill, "components": components, "disk-full": disk_full, "load": load}

DEFAULTS = {
    "recorder-kill": {"kills": 5, "sessions": 4, "size": "640x360", "fps": 15, "chunk_seconds": 10},
    "components": {"kills": 3, "sessions": 20, "size": "320x240", "fps": 10, "chunk_seconds": 10},
    "disk-full": {"kills": 0, "sessions": 4, "size": "320x240", "fps": 10, "chunk_seconds": 2},
    "load": {"kills": 0, "sessions": 8, "size": "1280x720", "fps": 30, "chunk_seconds": 10},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--kills", type=int, help="recorder-kill: kills (5); components: kills of each component (3)")
    ap.add_argument("--sessions", type=int, help="sessions recording at once (recorder-kill 4, components 20, load 8)")
    ap.add_argument("--size", help="WxH (recorder-kill 640x360, components 320x240, load 1280x720)")
    ap.add_argument("--fps", type=int, help="frames per second (recorder-kill 15, components 10, load 30)")
    ap.add_argument("--chunk-seconds", type=int, help="segment length (10; disk-full 2)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--components", default=",".join(COMPONENTS), help="components: which to kill")
    ap.add_argument("--gap-min", type=float, default=5, help="components: seconds between kills, random")
    ap.add_argument("--gap-max", type=float, default=30)
    ap.add_argument(
        "--catch-up-timeout",
        type=float,
        default=300,
        help="components: 0 = no wait after a kill",
    )
    ap.add_argument("--volume-mb", type=int, default=8, help="disk-full: size of the recordings tmpfs")
    ap.add_argument("--full-seconds", type=float, default=20, help="disk-full: how long the volume stays full")
    ap.add_argument("--minutes", type=float, default=10, help="load: how long the sessions record")
    args = ap.parse_args()
    for name, value in DEFAULTS[args.scenario].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    sys.exit(main())
