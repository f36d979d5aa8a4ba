"""End to end through the real services and the real Dagster daemon: record over REST, then the
sensor launches the run, the assets seal the session and the run-status sensor reports it."""

import time
from pathlib import Path

import pytest

from lucid_assets.core import catalog
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from tests.helpers import decode, download, wait_state

pytestmark = pytest.mark.e2e


def test_recorded_session_is_sealed_verified_catalogued_and_plays(platform, admin, tmp_path):
    fps, seconds = 15, 12
    r = admin.post(
        "/v1/sessions",
        json={
            "name": "e2e",
            "labels": {"case": "e2e"},
            "video": {"width": 320, "height": 240, "fps": fps},
            "chunk_seconds": 4,
        },
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    started = admin.post(f"/v1/sessions/{sid}/start")
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "recording" and started.json()["encoder"] == "libx264"
    t0 = time.monotonic()
    time.sleep(seconds)
    deadline = time.monotonic() + 60
    while not admin.get(f"/v1/sessions/{sid}/checkpoints").json()["items"]:  # processed while recording
        assert time.monotonic() < deadline, "no checkpoint was published while the session recorded"
        time.sleep(0.5)
    assert admin.get(f"/v1/sessions/{sid}").json()["state"] == "recording"
    stopped = admin.post(f"/v1/sessions/{sid}/stop")
    recorded = time.monotonic() - t0
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] in ("processing", "sealed")

    s = wait_state(admin, sid, {"sealed", "failed"})
    assert s["state"] == "sealed", s["failure_reason"]
    assert s["chunk_count"] == s["expected_chunks"] >= 3
    assert len(s["merkle_root"]) == 64

    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report["ok"], report["problems"]
    assert len(report["chunks"]) == s["chunk_count"]
    assert {c["name"] for c in report["checks"]} >= {"signature", "merkle_root", "sequence", "audit_chain"}

    chunks = admin.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    assert [c["seq"] for c in chunks] == list(range(s["chunk_count"]))
    assert all(c["state"] == "stored" for c in chunks)
    assert all("path" not in c for c in chunks)

    lake = Lake.sql(Settings(data_dir=platform.data_dir).catalog, Settings(data_dir=platform.data_dir).warehouse_uri)
    rows = lake.rows(catalog.CHUNKS, sid)
    assert [r["seq"] for r in rows] == list(range(s["chunk_count"]))  # exactly one row per chunk
    assert [r["envelope_sha256"] for r in rows] == [c["envelope_sha256"] for c in chunks]
    sessions_rows = lake.rows(catalog.SESSIONS, sid)
    assert len(sessions_rows) == 1 and sessions_rows[0]["merkle_root"] == s["merkle_root"]

    # the recording: decrypted chunks, concatenated, decode to the registered frames (~12 s)
    stream = tmp_path / "recording.ts"
    download(admin, sid, stream)
    assert stream.stat().st_size == sum(c["size"] for c in chunks)
    frames = decode(stream)
    assert len(frames) == sum(c["frames"] for c in chunks)
    assert abs(len(frames) / fps - recorded) < 1.5
    assert abs(s["duration_ms"] / 1000 - len(frames) / fps) < 0.2
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert frames[0].width == 320 and frames[0].height == 240

    # Range requests on chunk bytes
    r = admin.get(f"/v1/sessions/{sid}/chunks/0", headers={"Range": "bytes=0-187"})
    assert r.status_code == 206 and len(r.content) == 188 and r.content[0] == 0x47  # MPEG-TS sync byte

    cps = admin.get(f"/v1/sessions/{sid}/checkpoints").json()["items"]
    sizes = [c["body"]["tree_size"] for c in cps]
    assert sizes == sorted(set(sizes)) and sizes[-1] <= s["chunk_count"]
    assert manifest_link(admin, sid)["tree_size"] == sizes[-1]

    events = [e["entry"]["event"] for e in admin.get(f"/v1/sessions/{sid}/events").json()["items"]]
    assert events == ["create", "start", "stop", "finalize", "manifest", "seal"]

    manifest = admin.get(f"/v1/sessions/{sid}/manifest").json()
    assert manifest["body"]["merkle"]["root"] == s["merkle_root"]
    assert manifest["signature"]["key_id"] == admin.get("/v1/keys/signing").json()["key_id"]

    staging = Path(platform.data_dir) / "recordings" / sid
    assert not list(staging.glob("*.ts")), "staging files are removed once stored and catalogued"


def manifest_link(client, sid):
    return client.get(f"/v1/sessions/{sid}/manifest").json()["body"]["checkpoint"]
