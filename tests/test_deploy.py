"""The deployment's own code and its consistency: secret files, public-key-only verification, the
admin key from a file, the health check the images use, and the compose file against the Dagster
instance it runs (the whole stack itself runs in scripts/compose_smoke.py, from .ci/run)."""

import os
import re
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from lucid_assets.core import keys
from lucid_assets.core.manifest import sign, verify_signature
from lucid_assets.keyring import Keyring
from lucid_assets.settings import PORTS, Settings
from services.cli import SECRET_FILES
from services.cli import main as lucid
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.session-images.yml").read_text())
INSTANCE = yaml.safe_load((REPO / "build/dagster/dagster.yaml").read_text())


def test_secrets_made_once_private_and_matching(tmp_path, capsys):
    out = tmp_path / "secrets"
    assert lucid(["--data-dir", str(tmp_path / "d"), "secrets", str(out)]) == 0
    first = {n: (out / n).read_bytes() for n in SECRET_FILES}
    for name in SECRET_FILES:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    # a second run keeps every file: rotating a key is a deliberate act, never a side effect
    assert lucid(["--data-dir", str(tmp_path / "d"), "secrets", str(out)]) == 0
    assert {n: (out / n).read_bytes() for n in SECRET_FILES} == first
    assert "kept" in capsys.readouterr().out
    # the public file is the signing key's own public half; the master key loads as a KEK
    signing = keys.load_signing_key(out / "signing.key")
    assert keys.public_pem(signing) == first["signing.pub"]
    keys.load_kek(out / "master.key")
    assert len(first["link.key"]) == 32 and len(first["admin-api-key"].strip()) >= 24


def test_public_key_only_verification(tmp_path):
    out = tmp_path / "secrets"
    lucid(["--data-dir", str(tmp_path / "d"), "secrets", str(out)])
    doc = sign({"format": "x", "session_id": str(uuid.uuid4())}, keys.load_signing_key(out / "signing.key"))
    # a service with only the public half (no private key on its disk at all) verifies
    s = Settings(
        data_dir=tmp_path / "d", signing_key_file=tmp_path / "absent.key", signing_public_key_file=out / "signing.pub"
    )
    assert verify_signature(doc, Keyring.public_key(s))[0]
    other = tmp_path / "other"
    lucid(["--data-dir", str(tmp_path / "d"), "secrets", str(other)])
    s2 = Settings(data_dir=tmp_path / "d", signing_public_key_file=other / "signing.pub")
    assert not verify_signature(doc, Keyring.public_key(s2))[0]
    with pytest.raises(keys.KeyMaterialError, match="not a PEM public key"):
        Keyring.public_key(Settings(data_dir=tmp_path, signing_public_key_file=out / "master.key"))


def test_admin_key_from_file(tmp_path):
    f = tmp_path / "admin-api-key"
    f.write_text("lucid_from-a-secret-file-0123456789\n")
    assert Settings(api_key_file=f).preset_admin_key == "lucid_from-a-secret-file-0123456789"
    assert Settings(api_key="env-key-0123456789012345678").preset_admin_key == "env-key-0123456789012345678"
    assert Settings().preset_admin_key is None


def _healthcheck(url: str) -> int:
    return subprocess.run([sys.executable, "-m", "services.healthcheck", url], cwd=REPO, capture_output=True).returncode


def test_healthcheck_command(platform):
    assert _healthcheck(f"{platform.url('pipeline')}/ready") == 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _healthcheck(f"http://127.0.0.1:{closed}/ready") == 1
    assert _healthcheck(f"{platform.url('pipeline')}/no-such-route") == 1


# --- the compose file and the Dagster instance it runs -------------------------------------

LUCID = (
    "session-pipeline",
    "session-recorder",
    "chunk-processor",
    "session-storage",
    "session-api",
    "dagster-webserver",
    "dagster-daemon",
)


def test_compose_hardening_and_ports():
    services = COMPOSE["services"]
    assert set(LUCID) <= set(services)
    for name in LUCID:
        svc = services[name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["networks"] == ["lucid-session-network"], name
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"session-api", "dagster-webserver"}
    assert services["dagster-webserver"]["ports"] == ["${LUCID_DAGSTER_BIND:-127.0.0.1}:3000:3000"]
    assert COMPOSE["networks"]["lucid-session-network"]["name"] == "lucid-session-network"


def test_compose_secrets_go_only_where_needed():
    services = COMPOSE["services"]
    holders = {n: set(s.get("secrets", [])) for n, s in services.items()}
    assert holders["chunk-processor"] == {"lucid_master_key", "lucid_signing_key"}
    assert holders["session-storage"] == {"lucid_master_key", "lucid_signing_public_key"}
    assert holders["session-api"] == {"lucid_link_key", "lucid_admin_api_key"}
    assert not holders["session-pipeline"] and not holders["session-recorder"]
    assert not holders["dagster-webserver"] and not holders["dagster-daemon"]
    # the setting each secret feeds points at where compose mounts it
    env = COMPOSE["x-lucid-env"]
    for var, secret in (
        ("LUCID_MASTER_KEY_FILE", "lucid_master_key"),
        ("LUCID_SIGNING_KEY_FILE", "lucid_signing_key"),
        ("LUCID_SIGNING_PUBLIC_KEY_FILE", "lucid_signing_public_key"),
        ("LUCID_LINK_SECRET_FILE", "lucid_link_key"),
        ("LUCID_API_KEY_FILE", "lucid_admin_api_key"),
    ):
        assert env[var] == f"/run/secrets/{secret}"
        assert secret in COMPOSE["secrets"]
    # every secret file is one `lucid secrets` makes
    made = {Path(s["file"].split("}/", 1)[1]).name for s in COMPOSE["secrets"].values()}
    assert made == set(SECRET_FILES)


def test_run_launcher_matches_the_stack():
    launcher = INSTANCE["run_launcher"]
    assert launcher["class"] == "DockerRunLauncher"
    cfg = launcher["config"]
    processor = COMPOSE["services"]["chunk-processor"]
    assert cfg["container_kwargs"]["volumes_from"] == [processor["container_name"]]
    assert cfg["network"] in COMPOSE["networks"]
    assert cfg["container_kwargs"]["read_only"] is True and cfg["container_kwargs"]["cap_drop"] == ["ALL"]
    # every variable a run needs is in the daemon's environment, which is where the launcher reads it
    daemon_env = COMPOSE["services"]["dagster-daemon"]["environment"]
    missing = [v for v in cfg["env_vars"] if v not in daemon_env]
    assert not missing
    assert "DAGSTER_CURRENT_IMAGE" in processor["environment"]
    assert processor["image"].split("/")[-1].startswith("lucid-chunk-processor:")
    # runs share the embedded default's queue limits
    embedded = yaml.safe_load((REPO / "dagster_home/dagster.yaml").read_text())
    assert INSTANCE["run_coordinator"] == embedded["run_coordinator"]
    # the workspace loads the code server by its compose name and port
    ws = yaml.safe_load((REPO / "build/dagster/workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert ws["host"] == processor["container_name"] and ws["port"] == 8085


def test_every_image_names_a_real_command():
    # the images repeat the one port table (lucid_assets.settings.PORTS)
    images = {f"session-{n}": PORTS[n] for n in ("pipeline", "recorder", "storage", "api")}
    images["chunk-processor"] = PORTS["chunk-processor"]
    for name, port in images.items():
        text = (REPO / "build" / name / "Dockerfile").read_text()
        assert f"PORT={port}" in text and f"EXPOSE {port}" in text, name
        assert "HEALTHCHECK" in text and re.search(r"^FROM \$\{BASE\}$", text, re.M), name
        serve = re.search(r'"services\.serve", "(\w+)"', text)
        if serve:
            assert PORTS[serve.group(1)] == port, name
    base = (REPO / "build/base/Dockerfile").read_text()
    assert "FROM gcr.io/distroless/python3-debian12:nonroot" in base and "USER 65532:65532" in base
    assert "ENTRYPOINT []" in base
    for script in (
        "build-session-pipeline.sh",
        "build-session-recorder.sh",
        "build-chunk-processor.sh",
        "build-session-storage.sh",
        "build-session-api.sh",
        "build-all-session-images.sh",
    ):
        assert os.access(REPO / "build/scripts" / script, os.X_OK), script


def test_health_checks_of_the_dagster_containers(postgres_url, tmp_path):
    """The light checks the images use, against a real code server and a real daemon on Postgres."""
    import time

    from sqlalchemy.engine import make_url

    from services.healthcheck import daemon_alive, grpc_serving

    url = make_url(postgres_url)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_HOST": url.host,
        "DAGSTER_PG_PORT": str(url.port),
        "DAGSTER_PG_USER": url.username,
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database,
    }
    (tmp_path / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "telemetry": {"enabled": False},
                "storage": {
                    "postgres": {
                        "postgres_db": {
                            k: {"env": f"DAGSTER_PG_{v}"}
                            for k, v in (
                                ("hostname", "HOST"),
                                ("username", "USER"),
                                ("password", "PASSWORD"),
                                ("db_name", "DB"),
                            )
                        }
                        | {"port": {"env": "DAGSTER_PG_PORT"}}
                    }
                },
                "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
            }
        )
    )
    (tmp_path / "defs.py").write_text("import dagster as dg\ndefs = dg.Definitions()\n")
    port = free_port()
    bindir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bindir / "dagster"),
            "code-server",
            "start",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-f",
            str(tmp_path / "defs.py"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemon = subprocess.Popen(
        [str(bindir / "dagster-daemon"), "run", "-f", str(tmp_path / "defs.py")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        assert not daemon_alive(Settings())  # nothing has beaten yet (or the tables are not even there)
        deadline = time.monotonic() + 90
        while not (grpc_serving(f"127.0.0.1:{port}") and daemon_alive(Settings())):
            assert time.monotonic() < deadline, "code server or daemon not healthy after 90 s"
            time.sleep(1)
        server.terminate()
        server.wait(30)
        assert not grpc_serving(f"127.0.0.1:{port}")
        daemon.terminate()
        daemon.wait(30)
        time.sleep(1.5)
        assert not daemon_alive(Settings(daemon_max_age=1))  # a daemon that stopped beating is not alive
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for p in (server, daemon):
            if p.poll() is None:
                p.kill()
