"""Many recorders (issue 17), with two real recorder processes on data directories of their own (they
share no filesystem with the processing host: each uploads its segments) and a third host running the
pipeline, storage, gateway and Dagster. Each recorder has its own service token; the gateway places
each new session on the least-loaded live recorder that can open its source and routes its controls
to the owner; a recorder acting on another's session is refused; a recorder killed mid-recording has
its session finalized from what it uploaded, with an end reason naming it, while the other recorder's
session records on untouched."""

import os
import shutil
import signal
import time

import httpx
import pytest

from lucid_assets import trust
from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import create, start_platform, wait_state

pytestmark = pytest.mark.e2e
ADMIN_KEY = "test-admin-key-recorders-0123456789"
QUIET = {"LUCID_INSIGHT_INTERVAL_SECONDS": "3600", "LUCID_INSIGHT_BACKFILL_CRON": "0 0 1 1 *"}
LAPSE = 8


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    main_dir = tmp_path_factory.mktemp("main-host")
    keys = main_dir / "keys" / "service"
    trust.make_token_files(keys)
    for rid in ("a", "b"):
        trust.add_recorder(keys, rid)  # in the table before the services read it
    ports = {n: free_port() for n in SERVICES}
    main = Platform(
        data_dir=main_dir,
        ports=ports,
        run=("pipeline", "storage", "api"),
        webserver=False,
        extra_env={**QUIET, "LUCID_API_KEY": ADMIN_KEY, "LUCID_RECORDER_LAPSE_SECONDS": str(LAPSE)},
    )
    started = [start_platform(main)]
    recorders = {}
    try:
        for rid in ("a", "b"):
            d = tmp_path_factory.mktemp(f"recorder-{rid}")
            shutil.copytree(keys, d / "keys" / "service")  # what that host is given: the service credentials
            recorders[rid] = start_platform(
                Platform(
                    data_dir=d,
                    ports={**ports, "recorder": free_port()},
                    run=("recorder",),
                    webserver=False,
                    daemon=False,
                    extra_env={
                        **QUIET,
                        "LUCID_RECORDER_ID": rid,
                        "LUCID_UPLOAD_SEGMENTS": "true",
                        "LUCID_RECORDER_HEARTBEAT_SECONDS": "1",
                        "LUCID_RECORDER_CAPACITY": "4",
                    },
                )
            )
            started.append(recorders[rid])
        yield main, recorders
    finally:
        for p in started:
            p.stop()


@pytest.mark.slow  # ~30 s: waits for a killed recorder's heartbeat to lapse and its session to seal
def test_two_recorders_share_the_work_and_one_dying_ends_only_its_own_session(fleet):
    main, recorders = fleet
    with httpx.Client(base_url=main.url("api"), timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        deadline = time.monotonic() + 30
        while {r["name"] for r in api.get("/v1/recorders").json()["items"] if r["alive"]} != {
            "recorder-a",
            "recorder-b",
        }:
            assert time.monotonic() < deadline, api.get("/v1/recorders").json()
            time.sleep(0.5)
        listed = {r["name"]: r for r in api.get("/v1/recorders").json()["items"]}
        assert listed["recorder-a"]["url"] == recorders["a"].url("recorder") and listed["recorder-a"]["capacity"] == 4
        assert {"testsrc", "push", "url"} <= set(listed["recorder-b"]["sources"])

        first = create(api, "on one", width=320, height=240, fps=10, chunk_seconds=2)
        assert api.post(f"/v1/sessions/{first}/start").status_code == 200
        second = create(api, "on the other", width=320, height=240, fps=10, chunk_seconds=2)
        assert api.post(f"/v1/sessions/{second}/start").status_code == 200
        owner = {sid: api.get(f"/v1/sessions/{sid}").json()["recorder"] for sid in (first, second)}
        assert set(owner.values()) == {"recorder-a", "recorder-b"}, owner  # least loaded: one each

        # a recorder acts on its own sessions only, whatever it says
        intruder = "recorder-b" if owner[first] == "recorder-a" else "recorder-a"
        pipeline = httpx.Client(base_url=main.url("pipeline"), timeout=30, headers=main.service_headers(intruder))
        r = pipeline.post(f"/sessions/{first}/transitions", json={"event": "pause"})
        assert r.status_code == 403 and r.json()["error"] == "not_owner", r.text
        body = {"seq": 99, "sha256": "0" * 64, "size": 1, "path": "/etc/passwd"}
        assert pipeline.post(f"/sessions/{first}/chunks", json=body).json()["error"] == "not_owner"
        storage = httpx.Client(base_url=main.url("storage"), timeout=30, headers=main.service_headers(intruder))
        r = storage.put(f"/sessions/{first}/staging/99", content=b"x", headers={"X-Content-SHA256": "0" * 64})
        assert r.status_code == 403 and r.json()["error"] == "not_owner", r.text

        time.sleep(5)  # both record a few chunks, uploaded as they finish
        victim = recorders[owner[second].removeprefix("recorder-")]
        os.killpg(victim.procs["recorder"].pid, signal.SIGKILL)  # the host dies: no last words
        victim.procs["recorder"].wait()
        killed_at = time.monotonic()

        ended = wait_state(api, second, {"sealed", "failed"}, timeout=LAPSE + 120)
        assert ended["state"] == "sealed", ended["failure_reason"]
        assert f"recorder {owner[second]} lapsed" in ended["end_reason"], ended["end_reason"]
        assert "finalized from the chunks it had uploaded" in ended["end_reason"]
        assert ended["chunk_count"] >= 1 and time.monotonic() - killed_at >= LAPSE - 2
        assert api.post(f"/v1/sessions/{second}/verify").json()["ok"]
        actors = [e["entry"]["actor"] for e in api.get(f"/v1/sessions/{second}/events").json()["items"]]
        assert actors[-1] == "dagster" and "pipeline" in actors  # the pipeline stopped and finalized it

        # the other recorder's session records on, untouched
        s1 = api.get(f"/v1/sessions/{first}").json()
        assert s1["state"] == "recording" and s1["end_reason"] is None
        assert "pipeline" not in [e["entry"]["actor"] for e in api.get(f"/v1/sessions/{first}/events").json()["items"]]
        listed = {r["name"]: r for r in api.get("/v1/recorders").json()["items"]}
        assert not listed[owner[second]]["alive"] and listed[owner[second]]["lapsed_at"]
        assert listed[owner[first]]["alive"] and listed[owner[first]]["live"] == 1

        # what was the dead recorder's cannot be driven any more; new sessions go to the live one
        gone = api.post(f"/v1/sessions/{second}/stop")
        assert gone.status_code == 503 and gone.json()["error"] == "recorder_unavailable", gone.text
        third = create(api, "after the loss", width=160, height=120, fps=5, chunk_seconds=2)
        assert api.post(f"/v1/sessions/{third}/start").status_code == 200
        assert api.get(f"/v1/sessions/{third}").json()["recorder"] == owner[first]

        for sid in (first, third):
            assert api.post(f"/v1/sessions/{sid}/stop").status_code == 200
        done = wait_state(api, first, {"sealed", "failed"})  # the survivor's session seals whole
        assert done["state"] == "sealed" and done["end_reason"] == "stopped by operator", done
