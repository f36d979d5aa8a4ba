#!/usr/bin/env python3
"""Smoke test of the scale-out overlay (docker-compose.scale.yml, issue 17), by hand (standard library
only, runs on the host; not part of .ci/run, whose smoke covers the base stack):

  build every image and lucid-seaweedfs for this host's (or --arch) platform, bring the base file plus
  the overlay up with fresh secrets (`scripts/compose --scale`), check that no recorder container shares
  a volume with a processing container (storage, chunk-processor and so its runs), wait until both
  recorders announce themselves, record two sessions at once (the gateway places one on each), stop
  them, wait until Dagster's run containers have sealed them, verify and export both, check from
  inside the storage container that the envelopes are in the bucket and the catalog is the REST one,
  find a word a pushed screen showed with /v1/search (indexed by storage from the bucket), and tear
  it all down (volumes included) unless --keep.

A project of its own on free host ports, like scripts/compose_smoke.py, whose helpers it uses."""

from __future__ import annotations

import argparse
import json
import platform
import secrets as random_names
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_smoke as smoke  # the base smoke's helpers, beside this file

ROOT = smoke.ROOT
RECORDERS = ("session-recorder", "session-recorder-b")
PROCESSING = ("session-storage", "chunk-processor")
CHECK_IN_STORAGE = """
import json, sys
from lucid_assets.settings import get_settings
from lucid_assets.store import ChunkStore
from lucid_assets.lake import Lake
from lucid_assets.core import catalog
s = get_settings()
store, lake = ChunkStore.from_settings(s), Lake.from_settings(s)
out = {"store": store.location, "catalog": type(lake.catalog).__name__}
for sid in sys.argv[1:]:
    out[sid] = {"stored": store.stored_seqs(sid), "staged": [e.key for e in store.objects.list(sid + "/staging")],
                "catalogued": [r["seq"] for r in lake.rows(catalog.CHUNKS, sid)]}
print(json.dumps(out))
"""


def compose(env: dict, *args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    return smoke.run([str(smoke.COMPOSE), "--scale", *args], env=env, capture=capture, check=check)


def volumes_of(env: dict, service: str) -> set[str]:
    cid = compose(env, "ps", "-q", service, capture=True).stdout.strip()
    mounts = json.loads(smoke.inspect(env, cid, "{{json .Mounts}}") or "[]")
    return {m["Name"] for m in mounts if m.get("Type") == "volume"}


# long: one scenario told in order, like the base smoke's main
def main() -> int:
    host_arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["amd64", "arm64"], default=host_arch)
    p.add_argument("--keep", action="store_true", help="leave the stack running")
    p.add_argument("--no-build", action="store_true", help="use the images already built")
    p.add_argument("--seconds", type=float, default=8, help="length of the recorded sessions")
    p.add_argument("--timeout", type=float, default=None, help="seconds to healthy and to sealed (each)")
    args = p.parse_args()
    timeout = args.timeout or (600 if args.arch == host_arch else 1800)
    numbers: dict[str, object] = {"arch": args.arch}

    env = smoke.docker_env(args.arch)
    project = f"lucid-scale-{random_names.token_hex(3)}"
    env.update(
        PLATFORM=f"linux/{args.arch}",
        TAG=f"latest-{args.arch}",
        REGISTRY=env.get("REGISTRY", "pickme"),
        COMPOSE_PROJECT_NAME=project,
        LUCID_UP_TIMEOUT=str(int(timeout)),
        LUCID_API_PORT=str(smoke.free_port()),
        LUCID_DAGSTER_PORT=str(smoke.free_port()),
    )
    api_url = f"http://127.0.0.1:{env['LUCID_API_PORT']}"
    smoke.say(f"project {project}: API {api_url}")
    secrets = Path(tempfile.mkdtemp(prefix="lucid-scale-secrets-"))
    env["LUCID_SECRETS_DIR"] = str(secrets)
    started = False
    try:
        if not args.no_build:
            t0 = time.monotonic()
            smoke.run(["bash", str(ROOT / "build/scripts/build-all-session-images.sh")], env=env)
            smoke.run(["bash", str(ROOT / "build/scripts/build-seaweedfs.sh")], env=env)
            numbers["build_s"] = round(time.monotonic() - t0, 1)
        compose(env, "secrets")
        t0 = time.monotonic()
        started = True
        up = compose(env, "up", capture=True, check=False)
        numbers["up_to_healthy_s"] = round(time.monotonic() - t0, 1)
        print(up.stdout, end="", flush=True)
        up.check_returncode()

        # no volume of a recorder is a volume of storage or of the chunk-processor (whose volumes every
        # run container takes): segments reach processing through the storage service only
        shared = {(r, q, v) for r in RECORDERS for q in PROCESSING for v in volumes_of(env, r) & volumes_of(env, q)}
        if shared:
            smoke.say(f"recorder and processing containers share volumes: {sorted(shared)}")
            return 1
        numbers["recorder_volumes"] = {r: sorted(volumes_of(env, r)) for r in RECORDERS}

        api = smoke.Api(api_url, (secrets / "admin-api-key").read_text().strip())
        deadline = time.monotonic() + timeout
        both = {"recorder", "recorder-b"}
        while {r["name"] for r in api.call("GET", "/v1/recorders")["items"] if r["alive"]} != both:
            if time.monotonic() > deadline:
                smoke.say(f"the two recorders never both announced themselves: {api.call('GET', '/v1/recorders')}")
                return 1
            time.sleep(1)
        video = {"width": 320, "height": 240, "fps": 10}
        sids = [
            api.call("POST", "/v1/sessions", {"name": f"scale {i}", "chunk_seconds": 2, "video": video})["id"]
            for i in range(2)
        ]
        for sid in sids:
            api.call("POST", f"/v1/sessions/{sid}/start")
        placed = {sid: api.call("GET", f"/v1/sessions/{sid}")["recorder"] for sid in sids}
        numbers["placed"] = sorted(placed.values())
        if sorted(placed.values()) != ["recorder", "recorder-b"]:
            smoke.say(f"the two sessions were not placed one on each recorder: {placed}")
            return 1
        time.sleep(args.seconds)
        for sid in sids:
            api.call("POST", f"/v1/sessions/{sid}/stop")
        t0 = time.monotonic()
        for sid in sids:
            final = smoke.wait_state(api, sid, {"sealed", "failed"}, timeout)
            if final["state"] != "sealed":
                smoke.say(f"session {sid} failed: {final.get('failure_reason')}")
                return 1
        numbers["stop_to_both_sealed_s"] = round(time.monotonic() - t0, 1)
        for sid in sids:
            report = api.call("POST", f"/v1/sessions/{sid}/verify")
            mp4 = api.call("GET", f"/v1/sessions/{sid}/recording.mp4", raw=True)
            if not report["ok"] or mp4[4:8] != b"ftyp":
                smoke.say(f"session {sid}: verify {report['status']}, MP4 starts {mp4[:8]!r}")
                return 1
            numbers.setdefault("mp4_bytes", []).append(len(mp4))
        storage = compose(env, "ps", "-q", "session-storage", capture=True).stdout.strip()
        check = smoke.run(
            ["docker", "exec", storage, "/opt/venv/bin/python", "-c", CHECK_IN_STORAGE, *sids],
            env=env,
            capture=True,
        ).stdout
        seen = json.loads(check.strip().splitlines()[-1])
        numbers["store"], numbers["catalog"] = seen["store"], seen["catalog"]
        for sid in sids:
            got = seen[sid]
            if not got["stored"] or got["stored"] != got["catalogued"] or got["staged"]:
                smoke.say(f"session {sid} in the bucket and catalog: {got}")
                return 1
            numbers.setdefault("chunks", []).append(len(got["stored"]))
        if not seen["store"].startswith("s3://") or seen["catalog"] != "RestCatalog":
            smoke.say(f"not on S3 and the REST catalog: {seen}")
            return 1
        # the search index is the storage service's: the runs (containers) only say which chunks' text
        # records they wrote to the bucket
        if wrong := smoke.search_what_a_screen_showed(env, api, numbers, timeout):
            smoke.say(wrong)
            return 1
        smoke.say(f"a pushed screen's word was found by /v1/search {numbers['search_after_sealed_s']} s after the seal")
        smoke.say("two recorders, no shared volume, sealed from the bucket through the REST catalog: OK")
        print(json.dumps(numbers, indent=2))
        return 0
    except (subprocess.CalledProcessError, urllib.error.URLError, KeyError, ValueError) as exc:
        smoke.say(f"failed: {exc}")
        if started:
            compose(env, "ps", check=False)
            compose(env, "logs", "--tail", "40", check=False)
        return 1
    finally:
        if started and not args.keep:
            smoke.runs_finished(env, timeout=180)
            compose(env, "down", "-v", "--remove-orphans", check=False)
            late = smoke.run_containers(env)  # a run launched after the wait kept the network
            if late:
                smoke.run(["docker", "rm", "-f", *late], env=env, check=False)
                compose(env, "down", "-v", "--remove-orphans", check=False)
        if not args.keep:
            shutil.rmtree(secrets, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
