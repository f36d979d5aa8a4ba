"""The whole embedded platform (four services and the Dagster daemon) with its chunk store in a bucket
of a real S3 endpoint and its catalog on a real Iceberg REST catalog (SeaweedFS), nothing of either
on the local disk: record, seal, verify, play, export, evidence bundle, catalog, crypto-shred."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lucid_assets.core import catalog
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import decode, record
from tests.seaweed import SECRET_KEY

pytestmark = pytest.mark.e2e
ADMIN_KEY = "test-admin-key-s3-0123456789abcdef"


@pytest.fixture(scope="module")
def on_s3(seaweed, tmp_path_factory):
    data = tmp_path_factory.mktemp("lucid-s3")
    backend = seaweed.backend()
    p = Platform(
        data_dir=data,
        ports={n: free_port() for n in SERVICES},
        webserver=False,
        extra_env={
            **backend.env(),
            "LUCID_API_KEY": ADMIN_KEY,
            "LUCID_INSIGHT_INTERVAL_SECONDS": "3600",  # OCR has its own tests
            "LUCID_INSIGHT_BACKFILL_CRON": "0 0 1 1 *",
        },
    )
    try:
        p.start(timeout=180)
    except Exception:
        p.stop()
        for log in sorted((data / "logs").glob("*.log")):
            print(f"==== {log.name}\n{log.read_text()[-4000:]}")
        raise
    yield p, backend
    p.stop()


@pytest.fixture(scope="module")
def admin(on_s3):
    p, _ = on_s3
    with httpx.Client(base_url=p.url("api"), timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def sealed(admin):
    return record(admin, seconds=6, name="on s3", width=320, height=240, fps=10, chunk_seconds=2)


def test_ready_reports_the_bucket(on_s3, admin):
    p, backend = on_s3
    ready = httpx.get(f"{p.url('storage')}/ready", timeout=30).json()
    assert ready["status"] == "ready", ready
    assert ready["checks"]["chunk_store"]["detail"].startswith(f"{backend.chunk_store}/ writable"), ready


def test_sealed_session_lives_in_the_bucket_and_verifies(on_s3, seaweed, admin, sealed):
    p, backend = on_s3
    sid = sealed["id"]
    keys = [k.split(f"{sid}/", 1)[1] for k in seaweed.keys(f"{backend.chunk_store}/{sid}/")]
    n = sealed["chunk_count"]
    assert n >= 3
    assert "dek.json" in keys and "manifest.v1.json" in keys
    assert sorted(k for k in keys if k.startswith("chunks/")) == [f"chunks/{s:08d}.luce" for s in range(n)]
    assert any(k.startswith("checkpoints/") for k in keys)
    assert not (Path(p.data_dir) / "chunks").exists(), "nothing of the chunk store on the local disk"
    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report["ok"] and report["status"] == "verified", report["problems"]
    settings = Settings(data_dir=p.data_dir, **backend.settings_with_keys())
    lake = Lake.from_settings(settings)
    assert [r["seq"] for r in lake.rows(catalog.CHUNKS, sid)] == list(range(n))
    uris = [r["envelope_uri"] for r in lake.rows(catalog.CHUNKS, sid)]
    assert all(u.startswith(f"{backend.chunk_store}/{sid}/chunks/") for u in uris), uris
    row = lake.rows(catalog.SESSIONS, sid)[0]
    assert row["manifest_uri"] == f"{backend.chunk_store}/{sid}/manifest.v1.json"
    assert lake.catalog.properties["uri"] == backend.catalog_url  # the REST catalog, not a SqlCatalog


def test_exports_and_ranges_play_from_the_bucket(admin, sealed, tmp_path):
    sid = sealed["id"]
    ts = admin.get(f"/v1/sessions/{sid}/recording.ts")
    assert ts.status_code == 200
    (tmp_path / "r.ts").write_bytes(ts.content)
    mp4 = admin.get(f"/v1/sessions/{sid}/recording.mp4")
    assert mp4.status_code == 200 and mp4.content[4:8] == b"ftyp"
    (tmp_path / "r.mp4").write_bytes(mp4.content)
    assert len(decode(tmp_path / "r.mp4")) == len(decode(tmp_path / "r.ts")) >= 50  # 6 s at 10 fps
    part = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == mp4.content[100:1100]
    one = admin.get(f"/v1/sessions/{sid}/media/1.ts", headers={"Range": "bytes=0-187"})
    assert one.status_code == 206 and one.content[0] == 0x47


def test_evidence_bundle_from_the_bucket_verifies_offline(admin, sealed, tmp_path):
    r = admin.get(f"/v1/sessions/{sealed['id']}/evidence")
    assert r.status_code == 200
    bundle = tmp_path / "bundle.tar"
    bundle.write_bytes(r.content)
    verify = Path(__file__).resolve().parent.parent / "lucid_assets" / "evidence" / "verify.py"
    done = subprocess.run([sys.executable, str(verify), str(bundle)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED" in done.stdout


def test_shred_deletes_every_object_of_the_session_but_its_proofs(on_s3, seaweed, admin, sealed):
    p, backend = on_s3
    sid = sealed["id"]
    r = admin.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    shredded = r.json()["shredded"]
    assert shredded["data_key_destroyed"] and shredded["envelopes_removed"] == sealed["chunk_count"]
    left = [k.split(f"{sid}/", 1)[1] for k in seaweed.keys(f"{backend.chunk_store}/{sid}/")]
    assert left and all(k.startswith(("manifest.v", "checkpoints/")) for k in left), left
    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report["status"] == "shredded" and report["problems"] == [], report
    assert admin.get(f"/v1/sessions/{sid}/media/0.ts").status_code in (404, 410)


def test_the_s3_secret_is_in_no_log(on_s3, admin, sealed):
    p, _ = on_s3
    logs = sorted(Path(p.data_dir).rglob("*.log"))
    assert logs
    for log in logs:
        assert SECRET_KEY not in log.read_text(errors="replace"), log
    # nor in what Dagster keeps of the runs (their config and event logs)
    for db in Path(p.data_dir).rglob("*.db"):
        assert SECRET_KEY.encode() not in db.read_bytes(), db
