"""Two hosts that share no filesystem (issue 17): host A runs only the recorder, with a data directory
of its own; host B runs the pipeline (on PostgreSQL), storage, the gateway and Dagster, with another.
They share only PostgreSQL and the S3 endpoint (and talk over HTTP). A records; each finished segment
is uploaded to B's storage service (sealed into the bucket's staging area) before it is registered,
so B's processing runs store it without ever seeing A's disk; the session seals and verifies."""

import hashlib
import shutil
import uuid

import httpx
import pytest
import sqlalchemy as sa

from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import record

pytestmark = pytest.mark.e2e
ADMIN_KEY = "test-admin-key-two-hosts-0123456789"
QUIET = {"LUCID_INSIGHT_INTERVAL_SECONDS": "3600", "LUCID_INSIGHT_BACKFILL_CRON": "0 0 1 1 *"}


@pytest.fixture(scope="module")
def registry_db(postgres_url):
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    db = f"two_hosts_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    yield admin.url.set(database=db).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE {db} WITH (FORCE)"))
    admin.dispose()


def _start(p: Platform) -> Platform:
    try:
        p.start(timeout=180)
    except Exception:
        p.stop()
        for log in sorted(p.logs.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text()[-4000:]}")
        raise
    return p


@pytest.fixture(scope="module")
def hosts(seaweed, registry_db, tmp_path_factory):
    backend = seaweed.backend()
    ports = {n: free_port() for n in SERVICES}
    b = _start(
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
    a = _start(
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


def test_a_session_recorded_on_one_host_seals_on_another(hosts, seaweed):
    a, b, backend = hosts
    with httpx.Client(base_url=b.url("api"), timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        s = record(admin, seconds=6, name="two hosts", width=320, height=240, fps=10, chunk_seconds=2)
        sid = s["id"]
        report = admin.post(f"/v1/sessions/{sid}/verify").json()
        assert report["ok"] and report["status"] == "verified", report["problems"]
        assert s["chunk_count"] >= 3
        chunks = admin.get(f"/v1/sessions/{sid}/chunks").json()["items"]
        assert [c["seq"] for c in chunks] == list(range(s["chunk_count"]))
        assert admin.get(f"/v1/sessions/{sid}/recording.mp4").status_code == 200
    keys = [k.split(f"{sid}/", 1)[1] for k in seaweed.keys(f"{backend.chunk_store}/{sid}/")]
    assert sorted(k for k in keys if k.startswith("chunks/")) == [f"chunks/{i:08d}.luce" for i in range(len(chunks))]
    assert not [k for k in keys if k.startswith("staging/")], "staged segments are dropped once stored"
    # host A keeps nothing of the session once it is uploaded; host B never had a recordings volume
    assert not list((a.data_dir / "recordings" / sid).glob("*.ts"))
    assert not (b.data_dir / "recordings" / sid).exists() and not (b.data_dir / "chunks").exists()
    # the registry (PostgreSQL) names the staged objects, never a path on a host's disk
    url = f"{b.url('pipeline')}/sessions/{sid}/chunks"
    registered = httpx.get(url, headers=b.service_headers("dagster"), timeout=30).json()["items"]
    assert registered and all(c["path"].startswith("chunk-store:") for c in registered), registered


def test_staging_takes_only_the_recorders_checked_uploads(hosts, seaweed):
    a, b, backend = hosts
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
