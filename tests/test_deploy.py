"""The deployment's own code and its consistency: secret files, public-key-only verification, the
admin key from a file, the health check the images use, and the compose file against the Dagster
instance it runs (the whole stack itself runs in scripts/compose_smoke.py, from .ci/run)."""

import json
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

from lucid_assets import trust
from lucid_assets.core import keys
from lucid_assets.core.manifest import sign, verify_signature
from lucid_assets.keyring import Keyring
from lucid_assets.settings import PORTS, Settings
from lucid_assets.trust import CALLERS
from services.cli import SECRET_FILES
from services.cli import main as lucid
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (REPO / "docker-compose.session-images.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
INSTANCE = yaml.safe_load((REPO / "build/dagster/dagster.yaml").read_text())
LEGACY_NAMES = {  # the fixed names of releases before names followed the compose project
    "lucid-session-data",
    "lucid-recordings",
    "lucid-chunks",
    "lucid-processed",
    "lucid-storage",
    "lucid-logs",
    "lucid-session-network",
    "lucid-chunk-processor",
}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, ${NAME}, ${NAME:-default}, ${NAME:?error}."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        value = env.get(m.group("name"), "")
        if m.group("op") == ":?" and not value:
            raise KeyError(f"{m.group('name')}: {m.group('arg')}")
        return value or (m.group("arg") if m.group("op") == ":-" else "")

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}", sub, text)


def stack(project: str, **env: str) -> dict:
    """The compose file as docker-compose sees it for this project."""
    env = {"COMPOSE_PROJECT_NAME": project, "LUCID_DB_PASSWORD": "pw", **env}
    return yaml.safe_load(interpolate(COMPOSE_TEXT, env))


def names(config: dict) -> set[str]:
    """Every name the stack gives the engine: volumes, networks, containers."""
    return (
        {v["name"] for v in config["volumes"].values()}
        | {n["name"] for n in config["networks"].values()}
        | {s["container_name"] for s in config["services"].values() if "container_name" in s}
    )


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


def test_scale_secrets_add_the_s3_key_and_a_second_recorder(tmp_path):
    out = tmp_path / "secrets"
    assert lucid(["--data-dir", str(tmp_path / "d"), "secrets", str(out), "--scale"]) == 0
    secret = (out / "s3-secret-key").read_text().strip()
    ident = json.loads((out / "s3.json").read_text())["identities"][0]
    assert ident["credentials"] == [{"accessKey": "lucid", "secretKey": secret}] and len(secret) >= 24
    for name in ("s3-secret-key", "s3.json", "service/recorder-b.token"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    table = json.loads((out / "service" / "tokens.json").read_text())
    assert set(table) == set(CALLERS) | {"recorder-b"}
    assert table["recorder-b"] == trust.digest(trust.read_token(out / "service" / "recorder-b.token"))
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert lucid(["--data-dir", str(tmp_path / "d"), "secrets", str(out), "--scale"]) == 0
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # made once


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
    # both host ports are settings; the Dagster UI stays on loopback unless the operator says otherwise
    assert stack("p")["services"]["dagster-webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    moved = stack("p", LUCID_DAGSTER_PORT="3999", LUCID_API_PORT="9087")["services"]
    assert moved["dagster-webserver"]["ports"] == ["127.0.0.1:3999:3000"]
    assert moved["session-api"]["ports"] == ["0.0.0.0:9087:8087"]


def test_names_follow_the_compose_project():
    a, b = stack("alpha"), stack("beta")
    # two projects share nothing: `down -v` of one cannot delete the other's volumes
    assert not names(a) & names(b)
    assert all(n.startswith("alpha-") for n in names(a)), names(a)
    assert len(names(a)) == len(a["volumes"]) + len(a["networks"]) + 1  # + the chunk-processor
    # project `lucid` (scripts/compose's default) keeps the earlier releases' names: their data stays
    assert names(stack("lucid")) == LEGACY_NAMES | {"lucid-rdp-trust"}  # + volumes added since
    # no project given: compose stops instead of falling back to names another stack may use
    with pytest.raises(KeyError, match="COMPOSE_PROJECT_NAME"):
        interpolate(COMPOSE_TEXT, {"LUCID_DB_PASSWORD": "pw"})
    # the scripts that name volumes themselves follow the project too
    assert not re.search(r"-v lucid-", (REPO / "scripts/compose").read_text())
    smoke = (REPO / "scripts/compose_smoke.py").read_text()
    assert "8087" not in smoke and "3000" not in smoke  # free ports (or LUCID_API_PORT / LUCID_DAGSTER_PORT)


def test_compose_secrets_go_only_where_needed():
    services = COMPOSE["services"]
    holders = {
        n: {x if isinstance(x, str) else f"{x['source']}>{x['target']}" for x in s.get("secrets", [])}
        for n, s in services.items()
    }
    own = "{}>lucid_service_token".format  # a component's own service token, mounted under one name
    assert holders["chunk-processor"] == {"lucid_master_key", "lucid_signing_key", own("lucid_token_dagster")}
    assert holders["session-storage"] == {
        "lucid_master_key",
        "lucid_signing_public_key",
        "lucid_service_tokens",
        own("lucid_token_storage"),
    }
    assert holders["session-api"] == {"lucid_link_key", "lucid_admin_api_key", own("lucid_token_api")}
    # the pipeline calls no one: it only checks its callers; the recorder calls the pipeline
    assert holders["session-pipeline"] == {"lucid_service_tokens"}
    assert holders["session-recorder"] == {"lucid_service_tokens", own("lucid_token_recorder")}
    assert not holders["dagster-webserver"] and not holders["dagster-daemon"]
    # the setting each secret feeds points at where compose mounts it
    env = COMPOSE["x-lucid-env"]
    for var, secret in (
        ("LUCID_MASTER_KEY_FILE", "lucid_master_key"),
        ("LUCID_SIGNING_KEY_FILE", "lucid_signing_key"),
        ("LUCID_SIGNING_PUBLIC_KEY_FILE", "lucid_signing_public_key"),
        ("LUCID_LINK_SECRET_FILE", "lucid_link_key"),
        ("LUCID_API_KEY_FILE", "lucid_admin_api_key"),
        ("LUCID_SERVICE_TOKEN_FILE", "lucid_service_token"),
        ("LUCID_SERVICE_TOKENS_FILE", "lucid_service_tokens"),
    ):
        assert env[var] == f"/run/secrets/{secret}"
        assert secret in COMPOSE["secrets"] or secret == "lucid_service_token"
    # every secret file is one `lucid secrets` makes
    made = {s["file"].split("}/", 1)[1] for s in COMPOSE["secrets"].values()}
    assert made == set(SECRET_FILES) | {f"service/{c}.token" for c in CALLERS} | {"service/tokens.json"}
    # runs present the code location's (dagster) token: the launcher passes its file's setting on
    assert "LUCID_SERVICE_TOKEN_FILE" in INSTANCE["run_launcher"]["config"]["env_vars"]


def test_run_launcher_matches_the_stack():
    from dagster._config import process_config
    from dagster_docker.container_context import DockerContainerContext
    from dagster_docker.utils import DOCKER_CONFIG_SCHEMA
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig

    launcher = INSTANCE["run_launcher"]
    assert launcher["class"] == "DockerRunLauncher"
    cfg = launcher["config"]
    assert process_config(DOCKER_CONFIG_SCHEMA, cfg).success
    assert cfg["container_kwargs"]["read_only"] is True and cfg["container_kwargs"]["cap_drop"] == ["ALL"]
    # what a run container gets, as dagster_docker 0.29.27 merges it: the instance's config, then the
    # container context the code location (the chunk-processor) serves, for this project's names
    config = stack("alpha")
    processor = config["services"]["chunk-processor"]
    served = DockerContainerContext.create_from_config(
        json.loads(processor["environment"]["DAGSTER_CONTAINER_CONTEXT"])
    )
    run = DockerContainerContext(env_vars=cfg["env_vars"], networks=[], container_kwargs=cfg["container_kwargs"]).merge(
        served
    )
    assert run.networks == [config["networks"]["lucid-session-network"]["name"]] == ["alpha-session-network"]
    assert run.container_kwargs["volumes_from"] == [processor["container_name"]] == ["alpha-chunk-processor"]
    assert run.container_kwargs["labels"] == {"lucid/role": "run"} and run.container_kwargs["auto_remove"] is True
    # the image's HEALTHCHECK probes the code server's gRPC port: a run container must have none,
    # in the body docker-py sends to the engine
    kwargs = {k: v for k, v in run.container_kwargs.items() if k != "stop_timeout"}
    args = _create_container_args(dict(image="i", command=["c"], network=run.networks[0], version="1.41", **kwargs))
    assert ContainerConfig("1.41", **args)["Healthcheck"]["Test"] == ["NONE"]
    assert "HEALTHCHECK" in (REPO / "build/chunk-processor/Dockerfile").read_text()
    # every variable a run needs is in the daemon's environment, which is where the launcher reads it
    daemon_env = COMPOSE["services"]["dagster-daemon"]["environment"]
    missing = [v for v in cfg["env_vars"] if v not in daemon_env]
    assert not missing
    assert "DAGSTER_CURRENT_IMAGE" in processor["environment"]
    assert processor["image"].split("/")[-1].startswith("lucid-chunk-processor:")
    # runs share the embedded default's queue limits
    embedded = yaml.safe_load((REPO / "dagster_home/dagster.yaml").read_text())
    assert INSTANCE["run_coordinator"] == embedded["run_coordinator"]
    # and the same run monitoring: a hung run is ended past its max runtime, a slow start is not
    assert INSTANCE["run_monitoring"] == embedded["run_monitoring"] and embedded["run_monitoring"]["enabled"]
    assert embedded["run_monitoring"]["start_timeout_seconds"] >= 600
    # the workspace loads the code server by its compose service name (its DNS name in any project)
    ws = yaml.safe_load((REPO / "build/dagster/workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert ws["host"] == "chunk-processor" and ws["host"] in config["services"] and ws["port"] == 8085


def test_compose_script_times_healthy_from_before_up():
    """`healthy after N s` counts from before `up -d` (the containers start while it runs)."""
    script = (REPO / "scripts/compose").read_text()
    for branch in ("up)", "rotate-key)"):
        body = script.split(f"\n  {branch}\n", 1)[1].split(";;", 1)[0]
        steps = [line.strip() for line in body.splitlines() if re.search(r"t0=|up -d|wait_healthy", line)]
        assert steps[0] == "t0=$SECONDS" and "up -d" in steps[1] and steps[2] == 'wait_healthy "$t0"', (branch, steps)


def test_every_image_names_a_real_command():
    # the images repeat the one port table (lucid_assets.settings.PORTS)
    images = {f"session-{n}": PORTS[n] for n in ("pipeline", "recorder", "storage", "api")}
    images["chunk-processor"] = PORTS["chunk-processor"]
    for name, port in images.items():
        text = (REPO / "build" / name / "Dockerfile").read_text()
        assert f"PORT={port}" in text and f"EXPOSE {port}" in text, name
        assert "HEALTHCHECK" in text and re.search(r"^FROM \$\{BASE\}( AS lucid)?$", text, re.M), name
        serve = re.search(r'"services\.serve", "(\w+)"', text)
        if serve:
            assert PORTS[serve.group(1)] == port, name
    base = (REPO / "build/base/Dockerfile").read_text()
    assert "FROM gcr.io/distroless/python3-debian12:nonroot" in base and "USER 65532:65532" in base
    assert "ENTRYPOINT []" in base
    # the recorder runs X programs for remote desktops (and Xvfb needs /bin/sh): its own runtime on
    # debian:12-slim with the base's venv and code, as the same user, with the same environment
    recorder = (REPO / "build/session-recorder/Dockerfile").read_text()
    runtime = recorder.split("\nFROM debian:12-slim\n", 1)[1]
    for package in ("xvfb", "xauth", "tigervnc-viewer", "freerdp2-x11", "--no-install-recommends"):
        assert package in runtime, package
    for line in ("COPY --from=lucid /opt/venv /opt/venv", "COPY --from=lucid /app /app", "USER 65532:65532"):
        assert line in runtime, line
    assert "ENTRYPOINT []" in runtime and base.split("ENV PATH=", 1)[1].split("\nWORKDIR", 1)[0] in runtime
    # private desktop addresses stay refused unless the operator names them
    env = stack("p")["services"]["session-recorder"]["environment"]
    assert env["LUCID_URL_ALLOW_HOSTS"] == ""
    assert (
        stack("p", LUCID_URL_ALLOW_HOSTS="10.0.0.5")["services"]["session-recorder"]["environment"][
            "LUCID_URL_ALLOW_HOSTS"
        ]
        == "10.0.0.5"
    )
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
