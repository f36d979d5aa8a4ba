#!/usr/bin/env python3
"""Smoke test of the compose stack, by hand or from .ci/run (standard library only, runs on the host):

  build every image for this host's (or --arch) platform, bring docker-compose.session-images.yml up
  with fresh secrets, wait until every service is healthy, record a session through the gateway
  (8087), wait until Dagster's runs (DockerRunLauncher, one container per run) have sealed it,
  verify it, export it as MP4, check that no secret reached any container's log, then tear it all
  down (volumes included) unless --keep.

It uses the stack's fixed names (lucid-session-network, lucid-* volumes, lucid-chunk-processor),
so it refuses to run where a Lucid stack already exists. With no Docker engine it starts one with
shared/tools/container-env (stand-in base images). Prints the numbers the closing notes quote."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "scripts" / "compose"
VOLUMES = ("lucid-session-data", "lucid-recordings", "lucid-chunks", "lucid-processed", "lucid-storage", "lucid-logs")


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


def runs_finished(env: dict, timeout: float) -> bool:
    """Wait until no Dagster run container is running (True), or `timeout` seconds (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = run(
            ["docker", "ps", "-q", "--filter", "label=lucid/role=run", "--filter", "status=running"],
            env=env,
            check=False,
            capture=True,
        ).stdout.split()
        if not running:
            return True
        time.sleep(2)
    return False


def wait_state(api: Api, sid: str, wanted: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = api.call("GET", f"/v1/sessions/{sid}")
        if s["state"] in wanted:
            return s
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke: session {sid} still {s['state']} after {timeout:.0f} s")
        time.sleep(1)


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
    existing = run(["docker", "volume", "ls", "-q"], env=env, capture=True).stdout.split()
    if set(existing) & set(VOLUMES):
        say(
            f"a Lucid stack's volumes already exist here ({', '.join(sorted(set(existing) & set(VOLUMES)))}): "
            "not touching them; run the smoke test on a host without a deployment"
        )
        return 2
    env.update(
        PLATFORM=f"linux/{args.arch}",
        TAG=f"latest-{args.arch}",
        REGISTRY=env.get("REGISTRY", "pickme"),
        COMPOSE_PROJECT_NAME="lucid-smoke",
        LUCID_UP_TIMEOUT=str(int(timeout)),
        LUCID_API_PORT="8087",
    )
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
        numbers["images"] = [s for s in sizes if f":latest-{args.arch} " in s and "/lucid-" in s]

        t0 = time.monotonic()
        started = True
        up = run([str(COMPOSE), "up"], env=env, check=False, capture=True)
        numbers["up_to_healthy_s"] = round(time.monotonic() - t0, 1)
        print(up.stdout, end="", flush=True)
        up.check_returncode()
        migrated = [line for line in up.stdout.splitlines() if line.startswith("compose: migrate: ")]
        if not any("pipeline database:" in m for m in migrated) or not any("api database:" in m for m in migrated):
            say(f"the migrate step did not report both databases: {migrated}")
            return 1
        numbers["migrations"] = [m.removeprefix("compose: migrate: ") for m in migrated]

        api = Api("http://127.0.0.1:8087", (secrets / "admin-api-key").read_text().strip())
        info = json.loads(urllib.request.urlopen("http://127.0.0.1:3000/server_info", timeout=10).read())
        say(f"Dagster webserver {info['dagster_webserver_version']} answers on 127.0.0.1:3000")
        sess = api.call(
            "POST",
            "/v1/sessions",
            {"name": "compose smoke", "chunk_seconds": 2, "video": {"width": 320, "height": 240, "fps": 10}},
        )
        sid = sess["id"]
        api.call("POST", f"/v1/sessions/{sid}/start")
        time.sleep(args.seconds)
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

        # a master-key rotation: the old KEK retired but readable, every data key rewrapped, the
        # processor and storage recreated; the session still verifies and decrypts
        t0 = time.monotonic()
        out = run([str(COMPOSE), "rotate-key"], env=env, capture=True).stdout
        if "rewrapped 1 of 1 session data keys" not in out:
            say(f"rotation did not rewrap the session's data key:\n{out}")
            return 1
        numbers["rotate_key_s"] = round(time.monotonic() - t0, 1)
        again = api.call("POST", f"/v1/sessions/{sid}/verify")
        chunk0 = api.call("GET", f"/v1/sessions/{sid}/chunks/0", raw=True)
        if not again["ok"] or chunk0[:1] != b"\x47":  # an MPEG-TS packet starts with the sync byte
            say(f"after rotation: verify {again['status']}, chunk 0 starts {chunk0[:4]!r}")
            return 1

        # runs were containers of their own (DockerRunLauncher, auto-removed); none is left behind
        # once the last one has finished (a live batch may still be running after the seal)
        runs_finished(env, timeout=180)
        time.sleep(3)  # auto-removal follows the exit
        left = run(["docker", "ps", "-aq", "--filter", "label=lucid/role=run"], env=env, capture=True).stdout.split()
        if left:
            say(f"{len(left)} run containers left behind")
            return 1
        # no secret in any container's log
        names = run([str(COMPOSE), "ps", "-q"], env=env, capture=True).stdout.split()
        secret_values = [(secrets / f).read_text().strip() for f in ("admin-api-key", "master.key", "db-password")]
        for cid in names:
            log = run(["docker", "logs", cid], env=env, check=False, capture=True).stdout
            if any(v and v in log for v in secret_values):
                say(f"a secret appears in the log of container {cid}")
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
        if started and not args.keep:
            runs_finished(env, timeout=180)  # a run container still on the network would keep it (and its volumes)
            run([str(COMPOSE), "down", "-v", "--remove-orphans"], env=env, check=False)
        if not args.keep:
            shutil.rmtree(secrets, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
