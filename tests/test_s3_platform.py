"""The platform on real engines beyond one machine (issue 17): two hosts that share no filesystem,
with the chunk store in a bucket of a real S3 endpoint and the catalog on a real Iceberg REST catalog
(SeaweedFS), nothing of either on a local disk.

Host A runs only the recorder, with a data directory of its own; host B runs the pipeline (on
PostgreSQL), storage, the gateway and the Dagster daemon, with another. They share only PostgreSQL
and the S3 endpoint (and talk over HTTP). A records; each finished segment is uploaded to B's storage
service (sealed into the bucket's staging area) before it is registered, so B's processing runs store
it without ever seeing A's disk. Then: seal, verify, play, export, evidence bundle, catalog, staging's
refusals, crypto-shred, and no S3 secret in any log."""

import hashlib
import shutil
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
from tests.helpers import decode, record, start_platform
from tests.pg import fresh_database
from tests.seaweed import SECRET_KEY

pytestmark = pytest.mark.e2e
ADMIN_KEY = "test-admin-key-two-hosts-0123456789"
QUIET = {"LUCID_INSIGHT_INTERVAL_SECONDS": "3600", "LUCID_INSIGHT_BACKFILL_CRON": "0 0 1 1 *"}


@pytest.fixture(scope="module")
def registry_db(postgres_url):
    with fresh_database(postgres_url, "two_hosts") as url:
        yield url


@pytest.fixture(scope="module")
def hosts(seaweed, registry_db, tmp_path_factory):
    backend = seaweed.backend()
    ports = {n: free_port() for n in SERVICES}
    b = start_platform(
        Platform(
            data_dir=tmp_path_factory.mktemp("host-b"),
            ports=ports,
            run=("pipeline", "storage", "api"),
            webserver=False,
            extra_env={**backend.env(), **QUIET, "LUCID_API_KEY": ADMIN_KEY, "LUCID_DATABASE_URL": registry_db},
        )
    )
    a_dir = tmp_path_factory.mktemp("host-a")
    # what a deployment hands the recorder's host: the service credentials (its own token and the
    # table it checks its callers against), nothing else of host B
    shutil.copytree(b.data_dir / "keys" / "service", a_dir / "keys" / "service")
    a = start_platform(
        Platform(
            data_dir=a_dir,
            ports=ports,
            run=("recorder",),
            webserver=False,
            daemon=False,
            extra_env={**QUIET, "LUCID_UPLOAD_SEGMENTS": "true"},
        )
    )
    yield a, b, backend
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def admin(hosts):
    _, b, _ = hosts
    with httpx.Client(base_url=b.url("api"), timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def sealed(admin):
    """Recorded on host A (the only recorder), sealed on host B."""
    return record(admin, seconds=6, name="two hosts", width=320, height=240, fps=10, chunk_seconds=2)


def test_ready_reports_the_bucket(hosts):
    _, b, backend = hosts
    ready = httpx.get(f"{b.url('storage')}/ready", timeout=30).json()
    assert ready["status"] == "ready", ready
    assert ready["checks"]["chunk_store"]["detail"].startswith(f"{backend.chunk_store}/ writable"), ready


def test_a_session_recorded_on_one_host_seals_on_another(hosts, seaweed, admin, sealed):
    a, b, backend = hosts
    sid, n = sealed["id"], sealed["chunk_count"]
    assert n >= 3
    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report["ok"] and report["status"] == "verified", report["problems"]
    chunks = admin.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    assert [c["seq"] for c in chunks] == list(range(n))
    keys = [k.split(f"{sid}/", 1)[1] for k in seaweed.keys(f"{backend.chunk_store}/{sid}/")]
    assert "dek.json" in keys and "manifest.v1.json" in keys and any(k.startswith("checkpoints/") for k in keys)
    assert sorted(k for k in keys if k.startswith("chunks/")) == [f"chunks/{i:08d}.luce" for i in range(n)]
    assert not [k for k in keys if k.startswith("staging/")], "staged segments are dropped once stored"
    # host A keeps nothing of the session once it is uploaded; host B never had a recordings volume
    # nor a chunk store on its disk
    assert not list((a.data_dir / "recordings" / sid).glob("*.ts"))
    assert not (b.data_dir / "recordings" / sid).exists() and not (b.data_dir / "chunks").exists()
    # the registry (PostgreSQL) names the staged objects, never a path on a host's disk
    url = f"{b.url('pipeline')}/sessions/{sid}/chunks"
    registered = httpx.get(url, headers=b.service_headers("dagster"), timeout=30).json()["items"]
    assert registered and all(c["path"].startswith("chunk-store:") for c in registered), registered
    # catalogued in the REST catalog, pointing into the bucket
    lake = Lake.from_settings(Settings(data_dir=b.data_dir, **backend.settings_with_keys()))
    assert lake.catalog.properties["uri"] == backend.catalog_url  # the REST catalog, not a SqlCatalog
    assert [r["seq"] for r in lake.rows(catalog.CHUNKS, sid)] == list(range(n))
    uris = [r["envelope_uri"] for r in lake.rows(catalog.CHUNKS, sid)]
    assert all(u.startswith(f"{backend.chunk_store}/{sid}/chunks/") for u in uris), uris
    assert lake.rows(catalog.SESSIONS, sid)[0]["manifest_uri"] == f"{backend.chunk_store}/{sid}/manifest.v1.json"


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


def test_staging_takes_only_the_recorders_checked_uploads(hosts, seaweed):
    _, b, backend = hosts
    with httpx.Client(base_url=b.url("api"), timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        sid = admin.post("/v1/sessions", json={"name": "staging", "source": {"kind": "push"}}).json()["id"]
        body = b"\x47" + bytes(187) * 1  # any bytes: staging checks the hash, not the format
        sha = hashlib.sha256(body).hexdigest()
        url = f"{b.url('storage')}/sessions/{sid}/staging/0"
        rec = b.service_headers("recorder")

        def put(headers, content=body):
            return httpx.put(url, content=content, headers={**headers, "X-Content-SHA256": sha}, timeout=30)

        assert put(rec).json()["error"] == "illegal_state"  # created, not recording: nothing staged
        assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
        for caller in ("api", "dagster", "storage"):
            assert put(b.service_headers(caller)).status_code == 403, caller
        assert put({}).status_code == 401
        bad = httpx.put(url, content=body, headers={**rec, "X-Content-SHA256": "0" * 64}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"] == "sha256_mismatch"
        assert httpx.put(url, content=body, headers=rec, timeout=30).json()["error"] == "invalid_request"
        assert not seaweed.keys(f"{backend.chunk_store}/{sid}/staging/"), "a refused upload writes nothing"
        first = put(rec)
        assert first.status_code == 200 and first.json()["created"], first.text
        assert first.json()["path"] == f"chunk-store:{sid}/staging/00000000.seg"
        assert not put(rec).json()["created"]  # the same bytes again: idempotent
        other = b"\x47" + bytes(range(187))
        clash = httpx.put(
            url, content=other, headers={**rec, "X-Content-SHA256": hashlib.sha256(other).hexdigest()}, timeout=30
        )
        assert clash.status_code == 409 and clash.json()["error"] == "chunk_conflict"
        staged = seaweed.client().get_object(
            Bucket="lucid", Key=seaweed.keys(f"{backend.chunk_store}/{sid}/staging/")[0]
        )
        assert body not in staged["Body"].read(), "sealed at rest, never the plaintext"
        assert admin.delete(f"/v1/sessions/{sid}").status_code in (200, 409)


def test_shred_deletes_every_object_of_the_session_but_its_proofs(hosts, seaweed, admin, sealed):
    _, _, backend = hosts
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


def test_the_s3_secret_is_in_no_log(hosts, admin, sealed):
    for host in hosts[:2]:
        logs = sorted(Path(host.data_dir).rglob("*.log"))
        assert logs
        for log in logs:
            assert SECRET_KEY not in log.read_text(errors="replace"), log
        # nor in what Dagster keeps of the runs (their config and event logs)
        for db in Path(host.data_dir).rglob("*.db"):
            assert SECRET_KEY.encode() not in db.read_bytes(), db
