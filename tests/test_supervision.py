"""Supervision (#14): the real `lucid up` runs the platform under supervisord; a component killed
with SIGKILL is restarted and a recording in progress goes on through it; every file the platform
writes is private (umask 077); SIGTERM stops everything, the recorder ending its recordings with a
reason that says so. Also: the CLI with the platform down, and the systemd unit."""

import configparser
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lucid_assets.core.states import State
from lucid_assets.settings import Settings
from services.cli import _operator_settings
from services.launcher import REPO, SERVICES, Platform, Supervised, answers
from services.recorder.recorder import SHUTDOWN_REASON
from tests.conftest import free_port
from tests.helpers import create, wait_state

API_KEY = "test-admin-key-0123456789abcdef"
LUCID = Path(sys.executable).parent / "lucid"  # the installed `lucid` command (scripts/lucid execs it)
UNIT = REPO / "deploy" / "systemd" / "lucid.service"


def lucid_env(ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LUCID_", "DAGSTER_"))}
    env["LUCID_API_KEY"] = API_KEY
    env["LUCID_ENCODERS"] = "libx264"  # an operator setting: `lucid up` must hand it to the recorder
    for name, port in ports.items():
        env[f"LUCID_{name.upper()}_URL"] = f"http://127.0.0.1:{port}"
    return env


@pytest.fixture
def lucid_up(tmp_path):
    """`lucid up` on free ports, its data directory made by it; stopped with SIGTERM at the end."""
    data = tmp_path / "data"
    ports = {n: free_port() for n in SERVICES}
    out = tmp_path / "up.out"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            [str(LUCID), "--data-dir", str(data), "up", "--dagster-port", str(free_port())],
            env=lucid_env(ports),
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = {"proc": proc, "data": data, "out": out, "ports": ports}
    try:
        deadline = time.monotonic() + 300
        while b"lucid: up in" not in out.read_bytes():
            assert proc.poll() is None, f"lucid up exited with {proc.returncode}:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"lucid up not up:\n{out.read_text()}"
            time.sleep(0.5)
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(240)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def supervisor(data: Path) -> Supervised:
    return Supervised(Platform(data_dir=data.resolve()))


def kill_and_wait_back(sup: Supervised, name: str, health: str | None, timeout: float = 120) -> None:
    """SIGKILL one program (its main process, as a crash would), then wait until supervisord has
    started it again and, for a service, it answers its health check."""
    old = sup.states()[name]["pid"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        info = sup.states()[name]
        if info["statename"] == "RUNNING" and info["pid"] not in (0, old) and answers(health):
            return
        assert info["statename"] != "FATAL", f"{name} gave up: {info}"
        assert time.monotonic() < deadline, f"{name} not back: {info}"
        time.sleep(0.3)


def wait_chunks(client: httpx.Client, sid: str, more_than: int, timeout: float = 120) -> int:
    """Wait until the session has more than `more_than` registered chunks: the recording goes on."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(client.get(f"/v1/sessions/{sid}/chunks").json()["items"])
        if n > more_than:
            return n
        assert time.monotonic() < deadline, f"no chunk after {more_than} in {timeout}s"
        time.sleep(0.5)


def wait_until(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.5)


def loose_modes(root: Path) -> list[str]:
    """Every file and directory under root (root included) with a group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # removed while walking (a staging file processed meanwhile)
            continue
        if not path.is_symlink() and mode & 0o077:
            found.append(f"{oct(mode & 0o777)} {path.relative_to(root)}")
    return found


@pytest.mark.e2e
@pytest.mark.slow
def test_lucid_up_restarts_what_dies_and_recordings_go_on(lucid_up):
    data, ports, proc = lucid_up["data"], lucid_up["ports"], lucid_up["proc"]
    sup = supervisor(data)
    assert set(sup.states()) == {*SERVICES, "dagster-daemon", "dagster-webserver"}
    assert API_KEY not in lucid_up["out"].read_text()  # a secret the operator set is never echoed
    assert API_KEY not in (data / "supervisord.conf").read_text()  # the environment is supervisord's own
    url = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    encoders = httpx.get(f"{url['recorder']}/ready").json()["checks"]["encoders"]
    assert "libx264" in str(encoders) and "h264_nvenc" not in str(encoders), encoders
    admin = httpx.Client(base_url=url["api"], timeout=60, headers={"Authorization": f"Bearer {API_KEY}"})
    sid = create(admin, "supervised", fps=10, chunk_seconds=1)
    assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
    n = wait_chunks(admin, sid, 0)
    for name, health in (
        ("storage", f"{url['storage']}/health"),
        ("pipeline", f"{url['pipeline']}/health"),
        ("dagster-daemon", None),
    ):
        kill_and_wait_back(sup, name, health)
        assert admin.get(f"/v1/sessions/{sid}").json()["state"] == State.RECORDING, name
        n = wait_chunks(admin, sid, n)  # segments written during the outage, and new ones
    # an outage longer than the pipeline client's own retries (~26 s): the segments wait on disk
    recorder_log = data / "logs" / "recorder.log"
    sup.rpc().supervisor.stopProcess("pipeline")
    wait_until(lambda: "waits for the pipeline" in recorder_log.read_text(), "the recorder to wait")
    sup.rpc().supervisor.startProcess("pipeline")
    wait_until(lambda: "pipeline back" in recorder_log.read_text(), "the queued segments to be registered")
    assert admin.get(f"/v1/sessions/{sid}").json()["state"] == State.RECORDING
    n = wait_chunks(admin, sid, n)
    assert {i["statename"] for i in sup.states().values()} == {"RUNNING"}
    assert not loose_modes(data), loose_modes(data)  # staging segments of the live recording included

    assert admin.post(f"/v1/sessions/{sid}/stop").status_code == 200
    s = wait_state(admin, sid, {State.SEALED, State.FAILED}, timeout=240)
    assert s["state"] == State.SEALED, s["failure_reason"]
    assert s["end_reason"] == "stopped by operator"
    chunks = admin.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks))) and len(chunks) >= n
    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report["ok"], report["problems"]
    assert not loose_modes(data), loose_modes(data)  # envelopes, catalog, keys, databases, logs

    # SIGTERM: everything stops; a recording still running is ended by the recorder, saying why
    live = create(admin, "at shutdown", fps=10, chunk_seconds=1)
    assert admin.post(f"/v1/sessions/{live}/start").status_code == 200
    wait_chunks(admin, live, 0)
    pids = [i["pid"] for i in sup.states().values()]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(240) == 0, lucid_up["out"].read_text()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with sqlite3.connect(data / "pipeline.db") as db:
        state, reason = db.execute("SELECT state, end_reason FROM sessions WHERE id = ?", (live,)).fetchone()
    assert (state, reason) == (State.PROCESSING, SHUTDOWN_REASON)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


SUPERVISE_ONE = """
import sys, time
from pathlib import Path
from services.launcher import Platform, Supervised
ports = dict(zip(("pipeline", "recorder", "storage", "api"), map(int, sys.argv[2:])))
p = Platform(data_dir=Path(sys.argv[1]), ports=ports, run=("pipeline",), daemon=False, webserver=False)
sup = Supervised(p)
sup.start(timeout=120)
print(sup.proc.pid, sup.states()["pipeline"]["pid"], flush=True)
time.sleep(600)
"""


def test_a_killed_launcher_takes_supervisord_and_the_platform_with_it(tmp_path):
    """`lucid up` killed with SIGKILL (it cannot stop anything itself): supervisord is told by the
    kernel (PR_SET_PDEATHSIG) and stops the programs, instead of running on unseen."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE_ONE, str(tmp_path / "data"), *(str(free_port()) for _ in SERVICES)],
        cwd=REPO,
        env=lucid_env({}),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        pids = [int(x) for x in launcher.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        launcher.kill()
        launcher.wait()
        wait_until(lambda: not any(alive(p) for p in pids), "supervisord and the pipeline to stop")
    finally:
        launcher.kill()
        launcher.wait()


def test_lucid_up_hands_the_operators_settings_to_the_components(tmp_path):
    s = Settings(encoders="libx264", api_key="k", url_file_roots="/media", data_dir=tmp_path, chunk_store="c")
    env = _operator_settings(s)
    assert env == {
        "LUCID_ENCODERS": "libx264",
        "LUCID_API_KEY": "k",
        "LUCID_URL_FILE_ROOTS": "/media",
        "LUCID_CHUNK_STORE": str(Path("c").resolve()),
    }  # the data directory and the service URLs are the launcher's own
    bucket = Settings(data_dir=tmp_path, chunk_store="s3://lucid/chunks", s3_secret_access_key="sek")
    assert _operator_settings(bucket) == {
        "LUCID_CHUNK_STORE": "s3://lucid/chunks",
        "LUCID_S3_SECRET_ACCESS_KEY": "sek",
    }  # a bucket is no path


@pytest.mark.parametrize("argv", [["demo", "--seconds", "1"], ["verify", "00000000-0000-4000-8000-000000000000"]])
def test_cli_with_the_platform_down_says_so_in_one_line(argv):
    api = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = subprocess.run(
        [str(LUCID), *argv[:1], "--api", api, "--key", "k", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=lucid_env({}),
        cwd=REPO,
    )
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and api in lines[0] and "lucid up" in lines[0], r.stderr


def test_systemd_unit_restarts_on_failure_hardened():
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    assert units == [UNIT]
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    assert svc["ExecStart"].split()[0].endswith("/.venv/bin/lucid") and " up" in svc["ExecStart"]
    assert svc["Restart"] == "on-failure" and int(svc["RestartSec"]) > 0
    assert svc["KillMode"] == "mixed"  # SIGTERM to `lucid up` alone: it stops the components in order
    stop_waits = sum(p.stopwaitsecs for p in Platform(data_dir=Path("/var/lib/lucid")).programs())
    assert int(svc["TimeoutStopSec"]) > stop_waits
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict" and svc["PrivateTmp"] == "yes"
    assert svc["UMask"] == "0077"
    data_dir = svc["ExecStart"].split("--data-dir ")[1].split()[0]
    assert svc["ReadWritePaths"] == data_dir and svc["User"] != "root"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    """systemd's own parser: unknown keys, bad values, a command that is not there. The install path
    is pointed at this checkout so the command exists; only keys newer than this systemd may warn."""
    text = UNIT.read_text().replace("/opt/lucid/.venv/bin/lucid", str(LUCID))
    (tmp_path / UNIT.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True)
    newer = ("Unknown key 'RestartSteps'", "Unknown key 'RestartMaxDelaySec'")
    lines = (r.stdout + r.stderr).splitlines()
    problems = [line for line in lines if line.strip() and not any(k in line for k in newer)]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
