#!/usr/bin/env python3
"""Smoke test of the compose stack, by hand or from .ci/run (standard library only, runs on the host):

  build every image for this host's (or --arch) platform, bring docker-compose.session-images.yml up
  with fresh secrets, wait until every service is healthy, record a session through the gateway,
  SIGKILL the storage service's process meanwhile and wait until compose's restart policy has it
  healthy again, wait until Dagster's runs (DockerRunLauncher, one container per run, no health
  check) have sealed the session, verify it, export it as MP4, check that Postgres logged no
  duplicate-key error and the warehouse holds no orphan table metadata, rotate the master key,
  record a remote desktop (a real Xvnc on this host, on the compose network's gateway address, which
  the recorder is allowed to reach through LUCID_URL_ALLOW_HOSTS; its password a stored credential)
  and check that the exported MP4's frames show the desktop's colours, check that no secret reached
  any container's log, then tear it all down (volumes included) unless --keep. Needs TigerVNC on
  the host (Xvnc, vncpasswd: scripts/test installs them) and PyAV in .venv to decode.

It runs as a project of its own (COMPOSE_PROJECT_NAME lucid-smoke-<random>: its own volumes,
network and containers) on free host ports (LUCID_API_PORT / LUCID_DAGSTER_PORT if set), so a Lucid
stack already on the host is left alone. With no Docker engine it starts one with
shared/tools/container-env (stand-in base images). Prints the numbers the closing notes quote."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import secrets as random_names
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "scripts" / "compose"
VOLUMES = ("session-data", "recordings", "chunks", "processed", "storage", "logs", "rdp-trust")  # each <project>-<name>


def say(msg: str) -> None:
    print(f"smoke: {msg}", file=sys.stderr, flush=True)


def run(cmd, *, env=None, check=True, capture=False) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        env=env,
        check=check,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )


def container_env_tool() -> Path | None:
    for cand in (os.environ.get("CONTAINER_ENV"), ROOT.parent / "shared" / "tools" / "container-env"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def docker_env(arch: str) -> dict:
    """An environment whose docker/docker-compose reach a running engine with base images for `arch`."""
    env = dict(os.environ)
    tool = container_env_tool()
    if tool is not None:
        run(["bash", str(tool), "up", "--arch", arch])
        out = run(["bash", str(tool), "env"], capture=True).stdout
        for part in out.replace("export ", "").split():
            if "=" in part:
                k, v = part.split("=", 1)
                env[k] = v.replace("$PATH", env.get("PATH", ""))
    elif run(["docker", "info"], check=False, capture=True).returncode != 0:
        sys.exit("smoke: no Docker engine and no shared/tools/container-env to start one")
    env["DOCKER_BUILDKIT"] = "1"
    return env


class Api:
    def __init__(self, base: str, key: str):
        self.base, self.key = base, key

    def call(self, method: str, path: str, body: dict | None = None, raw: bool = False):
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        return data if raw else json.loads(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def run_containers(env: dict, *filters: str) -> list[str]:
    """This stack's Dagster run containers (label lucid/role=run, on the project's network)."""
    net = f"network={env['COMPOSE_PROJECT_NAME']}-session-network"
    argv = ["docker", "ps", "-aq", "--filter", "label=lucid/role=run", "--filter", net]
    for f in filters:
        argv += ["--filter", f]
    return run(argv, env=env, check=False, capture=True).stdout.split()


def runs_finished(env: dict, timeout: float) -> bool:
    """Wait until no Dagster run container of this stack is running (True), or `timeout` seconds (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run_containers(env, "status=running"):
            return True
        time.sleep(2)
    return False


def inspect(env: dict, cid: str, fmt: str) -> str:
    return run(["docker", "inspect", "-f", fmt, cid], env=env, check=False, capture=True).stdout.strip()


RUN_HEALTH = "{{json .Config.Healthcheck}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"


class RunWatcher(threading.Thread):
    """Inspects every run container of this stack while it exists: its health check's test (the
    launcher must give runs ["NONE"]: the image's own probes the code server's gRPC port) and its
    health state ("none": no probe runs)."""

    def __init__(self, env: dict):
        super().__init__(daemon=True)
        self.env, self.seen, self.stopped = env, {}, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1):
            for cid in run_containers(self.env):
                if cid not in self.seen:
                    got = inspect(self.env, cid, RUN_HEALTH)
                    if got:  # empty when it was removed in between
                        check, status = got.rsplit(" ", 1)
                        self.seen[cid] = ((json.loads(check) or {}).get("Test"), status)


def crash_and_recover(env: dict, service: str, timeout: float) -> float:
    """SIGKILL the service's main process from the host, as a crash (or the OOM killer) would, and
    wait until Docker's restart policy has it running and healthy again; returns the seconds that
    took. (`docker kill` would not do: Docker counts it as a manual stop and does not restart.)"""
    cid = run([str(COMPOSE), "ps", "-q", service], env=env, capture=True).stdout.strip()
    restarts, pid = (int(v) for v in inspect(env, cid, "{{.RestartCount}} {{.State.Pid}}").split())
    t0 = time.monotonic()
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError) as exc:
        why = f"cannot SIGKILL {service}'s process {pid} ({exc}): run the smoke as root on the engine's host"
        raise SystemExit(f"smoke: {why}") from exc
    while True:
        count, status = inspect(
            env, cid, "{{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        ).split()
        if int(count) > restarts and status == "healthy":
            return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > timeout:
            raise SystemExit(
                f"smoke: {service} not restarted and healthy {timeout:.0f} s after SIGKILL (restarts {count}, {status})"
            )
        time.sleep(1)


LAKE_CHECK = """
import glob, json
from lucid_assets.core.catalog import TABLES
tables = sorted(glob.glob('/data/warehouse/**/metadata', recursive=True))
files = {t: sorted(p.rsplit('/', 1)[1] for p in glob.glob(t + '/00000-*.metadata.json')) for t in tables}
print(json.dumps({"tables": len(TABLES), "initial": files}))
"""


def lake_is_clean(env: dict) -> str | None:
    """None, or what is wrong: a duplicate-key error on the Iceberg catalog's tables in Postgres's
    log (a run re-creating a table) or more than one initial metadata file in a table's folder (the
    orphans such runs leave)."""
    pg = run([str(COMPOSE), "logs", "--no-color", "postgres"], env=env, check=False, capture=True).stdout
    dup = [line for line in pg.splitlines() if "duplicate key value" in line and "iceberg_" in line]
    if dup:
        return f"Postgres logged {len(dup)} duplicate-key errors on the catalog's tables, first: {dup[0]}"
    out = run(
        [str(COMPOSE), "exec", "-T", "chunk-processor", "/opt/venv/bin/python", "-c", LAKE_CHECK],
        env=env,
        check=False,
        capture=True,
    ).stdout
    try:
        found = json.loads(out.strip().splitlines()[-1])
        expected, initial = found["tables"], found["initial"]
    except (ValueError, IndexError, KeyError, TypeError):
        return f"could not list the warehouse's metadata: {out[-500:]}"
    if len(initial) != expected or any(len(files) != 1 for files in initial.values()):
        return f"expected {expected} tables (core/catalog.py) with one 00000 metadata file each: {initial}"
    return None


INSIDER = """
import json, urllib.error, urllib.request
out = {}
for name, url in (("pipeline", "http://session-pipeline:8083/sessions"),
                  ("storage", "http://session-storage:8086/keys/signing"),
                  ("recorder", "http://session-recorder:8084/recordings")):
    try:
        out[name] = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        out[name] = exc.code
print(json.dumps(out))
"""


def insiders_refused(env: dict) -> str | None:
    """None, or what is wrong: a process on the compose network without a service token (here:
    one started in the Dagster webserver's container, which holds no token) must get 401 from every
    internal service."""
    out = run(
        [str(COMPOSE), "exec", "-T", "dagster-webserver", "/opt/venv/bin/python", "-c", INSIDER],
        env=env,
        check=False,
        capture=True,
    ).stdout
    try:
        got = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"could not call the internal services from inside the network: {out[-500:]}"
    wrong = {k: v for k, v in got.items() if v != 401}
    return f"internal services answered a caller without a token: {wrong}" if wrong else None


def evidence_through_a_share(api: Api, sid: str, numbers: dict) -> str | None:
    """A share link (no API key) downloads the session's evidence bundle, and the verifier the
    bundle carries passes it with the key's fingerprint pinned from the API."""
    share = api.call("POST", f"/v1/sessions/{sid}/shares", {"expires_in": 600, "may_download": True})
    holder = Api(api.base, share["token"])
    links = holder.call("POST", "/v1/share/links")
    if not links.get("evidence"):
        return f"a share that may download got no evidence link: {links}"
    bundle = holder.call("GET", links["evidence"], raw=True)
    key = api.call("GET", "/v1/keys/signing")
    fingerprint = hashlib.sha256(base64.b64decode(key["public_key"])).hexdigest()
    python = ROOT / ".venv" / "bin" / "python"  # the verifier needs `cryptography` (the tests' venv has it)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.tar"
        path.write_bytes(bundle)
        with tarfile.open(path) as tar:
            (Path(tmp) / "verify.py").write_bytes(tar.extractfile(f"lucid-evidence-{sid}/verify.py").read())
        out = subprocess.run(
            [str(python if python.exists() else sys.executable), str(Path(tmp) / "verify.py"), str(path)]
            + ["--key-fingerprint", fingerprint],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0 or "VERIFIED" not in out.stdout:
        return f"the evidence bundle did not verify (exit {out.returncode}):\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
    events = api.call("GET", f"/v1/sessions/{sid}/events")["items"]
    uses = [(e["entry"].get("detail") or {}).get("what") for e in events]
    if "evidence" not in uses:
        return f"the share's evidence download is not in the audit log: {uses}"
    numbers["evidence_bytes"] = len(bundle)
    return None


def wait_state(api: Api, sid: str, wanted: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = api.call("GET", f"/v1/sessions/{sid}")
        if s["state"] in wanted:
            return s
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke: session {sid} still {s['state']} after {timeout:.0f} s")
        time.sleep(1)


VNC_SIZE = (320, 240)
VNC_COLOURS = ((0x30, 0x70, 0xD0), (0xE0, 0x90, 0x20))  # the desktop before, then after the repaint

FRAME_COLOURS = """
import json, sys, av
out = []
with av.open(sys.argv[1]) as c:
    for f in c.decode(video=0):
        a = f.to_ndarray(format="rgb24")
        h, w = a.shape[:2]
        mid = a[11 * h // 20 : 19 * h // 20, w // 4 : 3 * w // 4]  # the lower middle (see frame_colours)
        out.append([round(float(mid[..., i].mean())) for i in range(3)] + [f.width, f.height])
print(json.dumps(out))
"""


def frame_colours(video: bytes) -> list[list[int]]:
    """Mean colour (and size) of each decoded frame's lower middle, with PyAV from the tests' venv.
    (TigerVNC's full-screen viewer overlays "Press F8 to open the context menu" on the upper third
    of the first ~3.5 s of a recording.)"""
    python = ROOT / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recording.mp4"
        path.write_bytes(video)
        out = run([str(python if python.exists() else sys.executable), "-c", FRAME_COLOURS, str(path)], capture=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def near(rgb, want, tol: int = 24) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, want))


class VncDesktop:
    """A real TigerVNC server (Xvnc) on this host with VNC authentication, listening only on
    `address` (the compose network's gateway: the recorder's container reaches it there)."""

    def __init__(self, address: str, password: str):
        missing = [b for b in ("Xvnc", "vncpasswd", "xsetroot") if not shutil.which(b)]
        if missing:
            raise SystemExit(
                f"smoke: {missing} missing (Debian tigervnc-standalone-server, tigervnc-tools, x11-xserver-utils)"
            )
        self.tmp = Path(tempfile.mkdtemp(prefix="lucid-smoke-vnc-"))
        self.address, self.port = address, free_port()
        pwfile = self.tmp / "passwd"
        done = subprocess.run(["vncpasswd", "-f"], input=f"{password}\n".encode(), capture_output=True, check=True)
        pwfile.write_bytes(done.stdout)
        pwfile.chmod(0o600)
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvnc", "-displayfd", str(write_fd), "-geometry", "{}x{}".format(*VNC_SIZE), "-depth", "24"]
            + ["-interface", address, "-rfbport", str(self.port), "-localhost=0", "-nolisten", "tcp"]
            + ["-SecurityTypes", "VncAuth", "-PasswordFile", str(pwfile)],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            self.stop()
            raise SystemExit(f"smoke: Xvnc did not start on {address}:{self.port}")
        self.display = f":{number}"

    def paint(self, rgb) -> None:
        colour = "#{:02x}{:02x}{:02x}".format(*rgb)
        subprocess.run(["xsetroot", "-solid", colour], env={**os.environ, "DISPLAY": self.display}, check=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def network_gateway(env: dict) -> str:
    net = f"{env['COMPOSE_PROJECT_NAME']}-session-network"
    out = run(
        ["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}} {{end}}", net], env=env, capture=True
    )
    v4 = [a for a in out.stdout.split() if "." in a]
    if not v4:
        raise SystemExit(f"smoke: network {net} has no IPv4 gateway: {out.stdout!r}")
    return v4[0]


def secret_in_logs(env: dict, secrets: Path, extra: list[str], services: tuple[str, ...] = ()) -> str | None:
    """The id of a container (of these services, or every one of the stack) whose log holds a
    secret (the generated ones, and `extra`), or None."""
    values = [
        (secrets / f).read_text().strip()
        for f in (
            "admin-api-key",
            "master.key",
            "db-password",
            *(f"service/{p.name}" for p in (secrets / "service").glob("*.token")),
        )
    ] + extra
    for cid in run([str(COMPOSE), "ps", "-q", *services], env=env, capture=True).stdout.split():
        log = run(["docker", "logs", cid], env=env, check=False, capture=True).stdout
        if any(v and v in log for v in values):
            return cid
    return None


def record_a_vnc_desktop(
    env: dict, api: Api, numbers: dict, password: str, seconds: float, timeout: float
) -> str | None:
    """A VNC desktop on the host, recorded by the recorder's image through the gateway: None, or what
    is wrong. The recorder is recreated with the desktop's address in LUCID_URL_ALLOW_HOSTS (empty by
    default: private addresses are refused), the password is a stored credential, the desktop is
    repainted mid-recording, and the exported MP4's frames must show both colours in order."""
    gateway = network_gateway(env)
    desktop = VncDesktop(gateway, password)
    try:
        desktop.paint(VNC_COLOURS[0])
        env["LUCID_URL_ALLOW_HOSTS"] = gateway  # every later compose call sees the same recorder
        t0 = time.monotonic()
        run([str(COMPOSE), "up", "--no-deps", "session-recorder"], env=env, capture=True)
        numbers["vnc_recorder_recreated_s"] = round(time.monotonic() - t0, 1)
        api.call("POST", "/v1/credentials", {"name": "smoke-vnc", "kind": "vnc", "password": password})
        source = {"kind": "vnc", "host": gateway, "port": desktop.port, "credential": "smoke-vnc"}
        video = {"width": VNC_SIZE[0], "height": VNC_SIZE[1], "fps": 10}
        sess = api.call(
            "POST", "/v1/sessions", {"name": "compose smoke vnc", "source": source, "video": video, "chunk_seconds": 2}
        )
        sid = sess["id"]
        try:
            api.call("POST", f"/v1/sessions/{sid}/start")
        except urllib.error.HTTPError as exc:
            return f"the vnc session did not start: {exc.code} {exc.read()[:500]!r}"
        time.sleep(seconds / 2)
        desktop.paint(VNC_COLOURS[1])
        time.sleep(seconds / 2)
        api.call("POST", f"/v1/sessions/{sid}/stop")
        t0 = time.monotonic()
        final = wait_state(api, sid, {"sealed", "failed"}, timeout)
        if final["state"] != "sealed":
            return f"the vnc session failed: {final.get('failure_reason')}"
        numbers["vnc_stop_to_sealed_s"] = round(time.monotonic() - t0, 1)
        mp4 = api.call("GET", f"/v1/sessions/{sid}/recording.mp4", raw=True)
        frames = frame_colours(mp4)
    finally:
        desktop.stop()
    if not frames or any(tuple(f[3:]) != VNC_SIZE for f in frames):
        return f"the vnc recording has {len(frames)} frames of sizes {sorted({tuple(f[3:]) for f in frames})}"
    marks = [next((i for i, c in enumerate(VNC_COLOURS) if near(f[:3], c)), None) for f in frames]
    first_b = marks.index(1) if 1 in marks else None
    # (the first frames may still show the viewer's first paint)
    if not first_b or first_b < 3 or marks[2] != 0 or None in marks[2:] or 0 in marks[first_b:]:
        return f"the vnc frames do not show the desktop's colours {VNC_COLOURS} in order: {[f[:3] for f in frames]}"
    numbers.update(
        vnc_frames=len(frames), vnc_mp4_bytes=len(mp4), vnc_repaint_at_frame=first_b, vnc_ends=final.get("end_reason")
    )
    return None


RENDER_SCREEN = """
import json, sys
from pathlib import Path
from tests import screenwork
word, out = sys.argv[1], Path(sys.argv[2])
steps = [screenwork.Step("type", text=f"ops@smoke:~$ grep {word} /var/log/audit.log"),
         screenwork.Step("print", lines=[f"audit: {word} matched 3 entries"]), screenwork.Step("idle", seconds=3)]
segs, _ = screenwork.record(out, steps, size=(640, 360), fps=5, chunk_seconds=2)
print(json.dumps([[s.seq, str(s.path), s.duration_ms] for s in segs]))
"""


UNAMBIGUOUS = "abcdefghjkmnpqrstuvwxyz23456789"


def search_what_a_screen_showed(env: dict, api: Api, numbers: dict, timeout: float) -> str | None:
    """Issue 15: a pushed session shows a terminal with a word typed into it (rendered with the
    tests' screen-work generator, encoded like the recorder does); once sealed, Dagster's insight
    runs (run containers) read its screen and GET /v1/search finds the word at its time."""
    # no 0/o, 1/l/i: a hex word like smokec1277099 was read as smokecl277099 and never found (a
    # stalled smoke in two rehearsals was this, not the search)
    word = "smoke" + "".join(random_names.choice(UNAMBIGUOUS) for _ in range(8))
    python = ROOT / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        out = run([str(python), "-c", RENDER_SCREEN, word, tmp], capture=True).stdout
        segs = json.loads(out.strip().splitlines()[-1])
        video = {"width": 640, "height": 360, "fps": 5}
        body = {"name": "compose smoke screen", "source": {"kind": "push"}, "video": video, "chunk_seconds": 2}
        sid = api.call("POST", "/v1/sessions", body)["id"]
        api.call("POST", f"/v1/sessions/{sid}/start")
        for seq, path, duration_ms in segs:
            data = Path(path).read_bytes()
            req = urllib.request.Request(
                f"{api.base}/v1/sessions/{sid}/chunks/{seq}",
                method="PUT",
                data=data,
                headers={
                    "Authorization": f"Bearer {api.key}",
                    "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
                    "X-Chunk-Duration-Ms": str(duration_ms),
                },
            )
            urllib.request.urlopen(req, timeout=60).read()
    api.call("POST", f"/v1/sessions/{sid}/stop")
    if wait_state(api, sid, {"sealed", "failed"}, timeout)["state"] != "sealed":
        return "the pushed screen session did not seal"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hits = api.call("GET", f"/v1/search?q={word}")["items"]
        if hits:
            break
        time.sleep(2)
    else:
        return f"the word {word} the pushed screen showed was not searchable {timeout:.0f} s after the seal"
    numbers["search_after_sealed_s"] = round(time.monotonic() - t0, 1)
    if hits[0]["session_id"] != sid or word not in hits[0]["text"]:
        return f"the search hit is not the pushed screen's line: {hits[0]}"
    numbers["search_hit"] = {"t_ms": hits[0]["t_ms"], "text": hits[0]["text"]}
    thumb = api.call("GET", hits[0]["thumbnail"], raw=True)
    if thumb[:3] != b"\xff\xd8\xff":
        return "the hit's thumbnail is not a JPEG"
    numbers["screen_session"], numbers["search_word"] = sid, word
    return None


# long: the smoke test's steps in the order an operator runs them, each printed as it goes
def main() -> int:
    host_arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["amd64", "arm64"], default=host_arch)
    p.add_argument("--keep", action="store_true", help="leave the stack running")
    p.add_argument("--no-build", action="store_true", help="use the images already built")
    p.add_argument("--seconds", type=float, default=8, help="length of the recorded session")
    p.add_argument("--timeout", type=float, default=None, help="seconds to healthy and to sealed (each)")
    args = p.parse_args()
    timeout = args.timeout or (600 if args.arch == host_arch else 1800)  # emulation is several times slower
    numbers: dict[str, object] = {"arch": args.arch}

    env = docker_env(args.arch)
    # a project of its own (volumes, network, containers <project>-...): never an operator's stack
    project = f"lucid-smoke-{random_names.token_hex(3)}"
    existing = run(["docker", "volume", "ls", "-q"], env=env, capture=True).stdout.split()
    if {f"{project}-{v}" for v in VOLUMES} & set(existing):
        say(f"volumes of project {project} already exist: not touching them")
        return 2
    env.update(
        PLATFORM=f"linux/{args.arch}",
        TAG=f"latest-{args.arch}",
        REGISTRY=env.get("REGISTRY", "pickme"),
        COMPOSE_PROJECT_NAME=project,
        LUCID_UP_TIMEOUT=str(int(timeout)),
        LUCID_API_PORT=os.environ.get("LUCID_API_PORT") or str(free_port()),
        LUCID_DAGSTER_PORT=os.environ.get("LUCID_DAGSTER_PORT") or str(free_port()),
    )
    api_url = f"http://127.0.0.1:{env['LUCID_API_PORT']}"
    dagster_url = f"http://127.0.0.1:{env['LUCID_DAGSTER_PORT']}"
    say(f"project {project}: API {api_url}, Dagster UI {dagster_url}")
    numbers["project"] = project
    watcher = RunWatcher(env)
    secrets = Path(tempfile.mkdtemp(prefix="lucid-smoke-secrets-"))
    env["LUCID_SECRETS_DIR"] = str(secrets)
    started = False
    try:
        if not args.no_build:
            t0 = time.monotonic()
            run(["bash", str(ROOT / "build/scripts/build-all-session-images.sh")], env=env)
            numbers["build_s"] = round(time.monotonic() - t0, 1)
        sizes = run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"], env=env, capture=True
        ).stdout.split("\n")
        ours = f"{env['REGISTRY']}/lucid-"
        numbers["images"] = [s for s in sizes if f":latest-{args.arch} " in s and s.startswith(ours)]

        run([str(COMPOSE), "secrets"], env=env)  # made before the clock starts: up_to_healthy is up -d to healthy
        t0 = time.monotonic()
        started = True
        up = run([str(COMPOSE), "up"], env=env, check=False, capture=True)
        numbers["up_to_healthy_s"] = round(time.monotonic() - t0, 1)
        print(up.stdout, end="", flush=True)
        up.check_returncode()
        reported = re.search(r"every service healthy after (\d+) s", up.stdout)
        numbers["compose_reported_healthy_s"] = int(reported.group(1)) if reported else None
        migrated = [line for line in up.stdout.splitlines() if line.startswith("compose: migrate: ")]
        if not any("pipeline database:" in m for m in migrated) or not any("api database:" in m for m in migrated):
            say(f"the migrate step did not report both databases: {migrated}")
            return 1
        numbers["migrations"] = [m.removeprefix("compose: migrate: ") for m in migrated]

        api = Api(api_url, (secrets / "admin-api-key").read_text().strip())
        info = json.loads(urllib.request.urlopen(f"{dagster_url}/server_info", timeout=10).read())
        say(f"Dagster webserver {info['dagster_webserver_version']} answers on {dagster_url}")
        watcher.start()
        sess = api.call(
            "POST",
            "/v1/sessions",
            {"name": "compose smoke", "chunk_seconds": 2, "video": {"width": 320, "height": 240, "fps": 10}},
        )
        sid = sess["id"]
        api.call("POST", f"/v1/sessions/{sid}/start")
        recording = time.monotonic()
        # a crash while recording: compose restarts the storage service and nothing else notices
        numbers["storage_sigkill_to_healthy_s"] = crash_and_recover(env, "session-storage", timeout)
        say(f"session-storage killed (SIGKILL) and healthy again after {numbers['storage_sigkill_to_healthy_s']} s")
        # the database crashes too (SIGKILL: its crash recovery runs on restart); the recorder waits
        # for the pipeline and registers what it recorded meanwhile
        numbers["postgres_sigkill_to_healthy_s"] = crash_and_recover(env, "postgres", timeout)
        say(f"postgres killed (SIGKILL) and healthy again after {numbers['postgres_sigkill_to_healthy_s']} s")
        time.sleep(max(0.0, args.seconds - (time.monotonic() - recording)))
        now = api.call("GET", f"/v1/sessions/{sid}")
        if now["state"] != "recording":
            say("the session stopped recording when storage or the database was killed: " + json.dumps(now))
            for svc in ("session-recorder", "session-pipeline"):
                tail = [str(COMPOSE), "logs", "--no-color", "--tail", "30", svc]
                logs = run(tail, env=env, check=False, capture=True)
                say(f"{svc} log (last 30 lines):\n{logs.stdout}")
            return 1
        refused = insiders_refused(env)
        if refused:
            say(refused)
            return 1
        api.call("POST", f"/v1/sessions/{sid}/stop")
        t0 = time.monotonic()
        final = wait_state(api, sid, {"sealed", "failed"}, timeout)
        if final["state"] != "sealed":
            say(f"session failed: {final.get('failure_reason')}")
            return 1
        numbers["stop_to_sealed_s"] = round(time.monotonic() - t0, 1)
        report = api.call("POST", f"/v1/sessions/{sid}/verify")
        bad = [c for c in report["checks"] if not c["ok"]]
        if not report["ok"] or bad:
            say(f"verification failed: {bad or report}")
            return 1
        chunks = api.call("GET", f"/v1/sessions/{sid}/chunks")["items"]
        mp4 = api.call("GET", f"/v1/sessions/{sid}/recording.mp4", raw=True)
        if len(chunks) < 2 or mp4[4:8] != b"ftyp":
            say(f"expected at least 2 chunks and an MP4, got {len(chunks)} chunks, {mp4[:8]!r}")
            return 1
        numbers.update(chunks=len(chunks), mp4_bytes=len(mp4), verify=report["status"])
        problem = evidence_through_a_share(api, sid, numbers)
        if problem:
            say(problem)
            return 1
        wrong = lake_is_clean(env)
        if wrong:
            say(f"the Iceberg catalog: {wrong}")
            return 1
        wrong = search_what_a_screen_showed(env, api, numbers, timeout)
        if wrong:
            say(wrong)
            return 1
        say(f"a word on a pushed screen was found by /v1/search {numbers['search_after_sealed_s']} s after the seal")

        # a master-key rotation: the old KEK retired but readable, every data key rewrapped, the
        # processor and storage recreated; the session still verifies and decrypts
        t0 = time.monotonic()
        out = run([str(COMPOSE), "rotate-key"], env=env, capture=True).stdout
        if "rewrapped 2 of 2 session data keys" not in out:
            say(f"rotation did not rewrap the session's data key:\n{out}")
            return 1
        numbers["rotate_key_s"] = round(time.monotonic() - t0, 1)
        again = api.call("POST", f"/v1/sessions/{sid}/verify")
        # still found after the rotation (its data key rewrapped, the storage recreated)
        if not api.call("GET", f"/v1/search?q={numbers['search_word']}")["items"]:
            say("after rotation the search finds nothing")
            return 1
        chunk0 = api.call("GET", f"/v1/sessions/{sid}/chunks/0", raw=True)
        if not again["ok"] or chunk0[:1] != b"\x47":  # an MPEG-TS packet starts with the sync byte
            say(f"after rotation: verify {again['status']}, chunk 0 starts {chunk0[:4]!r}")
            return 1

        # a remote desktop: a VNC server on this host, recorded by the recorder's image (its
        # Xvfb, xauth and TigerVNC viewer), exported and decoded
        leaked = secret_in_logs(env, secrets, [], ("session-recorder",))  # the container is replaced
        if leaked:
            say(f"a secret appears in the log of container {leaked}")
            return 1
        vnc_password = random_names.token_urlsafe(6)  # VNC passwords use their first 8 characters
        wrong = record_a_vnc_desktop(env, api, numbers, vnc_password, max(args.seconds, 6.0), timeout)
        if wrong:
            say(wrong)
            logs = run(
                [str(COMPOSE), "logs", "--no-color", "--tail", "40", "session-recorder"],
                env=env,
                check=False,
                capture=True,
            )
            say(f"session-recorder log (last 40 lines):\n{logs.stdout}")
            return 1
        say(f"vnc desktop recorded through the recorder image: {numbers['vnc_frames']} frames, both colours in order")

        # runs were containers of their own (DockerRunLauncher, auto-removed); none is left behind
        # once the last one has finished (a live batch may still be running after the seal)
        runs_finished(env, timeout=180)
        deadline = time.monotonic() + 60  # auto-removal follows the exit
        while (left := run_containers(env)) and time.monotonic() < deadline:
            time.sleep(1)
        if left:
            say(f"{len(left)} run containers left behind")
            return 1
        # every run container had no health check (the image's probes a gRPC port runs do not serve)
        watcher.stopped.set()
        watcher.join()
        # (Docker keeps the image's interval and retries beside the NONE test: no probe runs)
        checked = [v for v in watcher.seen.values() if v != (["NONE"], "none")]
        if not watcher.seen or checked:
            say(f"run containers' health checks: expected none on {len(watcher.seen)} runs, got {checked}")
            return 1
        numbers["run_containers_seen"] = len(watcher.seen)
        # no secret in any container's log (the recorder's earlier container was checked before
        # the vnc step replaced it)
        leaked = secret_in_logs(env, secrets, [vnc_password])
        if leaked:
            say(f"a secret appears in the log of container {leaked}")
            return 1
        say("session recorded, sealed by Dagster's run containers, verified, exported: OK")
        print(json.dumps(numbers, indent=2))
        return 0
    except (subprocess.CalledProcessError, urllib.error.URLError, KeyError) as exc:
        say(f"failed: {exc}")
        if started:
            run([str(COMPOSE), "ps"], env=env, check=False)
            run([str(COMPOSE), "logs", "--tail", "40"], env=env, check=False)
        return 1
    finally:
        watcher.stopped.set()
        if started and not args.keep:
            runs_finished(env, timeout=180)  # a run container still on the network would keep it (and its volumes)
            run([str(COMPOSE), "down", "-v", "--remove-orphans"], env=env, check=False)
            late = run_containers(env)  # a run launched after the wait kept the network: it and its volumes
            if late:
                say(f"{len(late)} run containers started after the last wait: removed, then down again")
                run(["docker", "rm", "-f", *late], env=env, check=False)
                run([str(COMPOSE), "down", "-v", "--remove-orphans"], env=env, check=False)
        if not args.keep:
            shutil.rmtree(secrets, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
