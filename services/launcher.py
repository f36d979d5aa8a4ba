"""Runs the embedded platform: the four services, Dagster's daemon and webserver, all state under
one data directory. Used by `lucid up` and by the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lucid_assets.settings import PORTS, SERVICES, child_environ

REPO = Path(__file__).resolve().parent.parent


def _merge(base: dict, over: dict) -> dict:
    """`over` merged into `base`, key by key; a None value removes the key."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass
class Platform:
    data_dir: Path
    ports: dict[str, int] = field(default_factory=lambda: {n: PORTS[n] for n in SERVICES})
    dagster_port: int = PORTS["dagster-webserver"]
    host: str = "127.0.0.1"
    webserver: bool = True
    daemon: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    instance_overrides: dict = field(default_factory=dict)  # merged into dagster.yaml (benchmarks)
    run: tuple[str, ...] = tuple(SERVICES)  # which of the services to start
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def env(self) -> dict[str, str]:
        env = child_environ()
        env.update(
            {
                "LUCID_DATA_DIR": str(self.data_dir),
                "LUCID_GENERATE_KEYS": "true",
                "LUCID_PIPELINE_URL": self.url("pipeline"),
                "LUCID_RECORDER_URL": self.url("recorder"),
                "LUCID_STORAGE_URL": self.url("storage"),
                "LUCID_API_URL": self.url("api"),
                "DAGSTER_HOME": str(self.dagster_home),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def prepare(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "dagster_home" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        if self.instance_overrides:
            import yaml

            path = self.dagster_home / "dagster.yaml"
            path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), self.instance_overrides)))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )

    def _spawn_service(self, name: str, env: dict[str, str]) -> None:
        port = self.ports[name]
        self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                f"services.{name}.app:create_app",
                "--host",
                self.host,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            {**env, "SERVICE_NAME": f"lucid-session-{name}", "PORT": str(port)},
        )

    def restart(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Kill one service (SIGKILL by default, as a crash) and start it again."""
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait()
        self._spawn_service(name, self.env())
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url(name)}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} did not come back; see {self.logs / (name + '.log')}")
            time.sleep(0.3)

    def start(self, timeout: float = 120) -> None:
        self.prepare()
        env = self.env()
        bindir = Path(sys.executable).parent
        for name in self.run:
            self._spawn_service(name, env)
        workspace = str(REPO / "workspace.yaml")
        if self.daemon:
            self._spawn("dagster-daemon", [str(bindir / "dagster-daemon"), "run", "-w", workspace], env)
        if self.webserver:
            self._spawn(
                "dagster-webserver",
                [str(bindir / "dagster-webserver"), "-w", workspace, "-h", self.host, "-p", str(self.dagster_port)],
                env,
            )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        targets = {n: f"{self.url(n)}/health" for n in self.run}
        if self.webserver:
            targets["dagster-webserver"] = f"http://{self.host}:{self.dagster_port}/server_info"
        deadline = time.monotonic() + timeout
        pending = dict(targets)
        while pending:
            for name, url in list(pending.items()):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout:.0f}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.5)
        for name in ("dagster-daemon",):
            if name in self.procs and self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.logs / (name + '.log')}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
