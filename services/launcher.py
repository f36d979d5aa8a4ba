"""Runs the embedded platform: the four services, Dagster's daemon and webserver, all state under
one data directory.

Two ways to run the same programs: `Supervised` (what `lucid up` does) writes a supervisord config
into the data directory and runs supervisord, which restarts a program that dies (with backoff)
while the others keep running; `Platform` alone spawns the programs directly (the tests and
benchmarks, which kill and restart one themselves). Both run every child with umask 077."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lucid_assets import trust
from lucid_assets.settings import PORTS, SERVICES, child_environ
from services import serve

REPO = Path(__file__).resolve().parent.parent
UMASK = 0o077  # every child and the supervisor: staging, keys, databases, envelopes 0600/0700


@dataclass
class Program:
    """One child of the platform: how to run it, and how supervisord treats it."""

    name: str
    argv: list[str]
    env: dict[str, str]  # on top of the platform's environment
    health: str | None  # a URL that answers 200 once it is up (None: the process staying up is all)
    priority: int  # supervisord starts lower numbers first and stops them last
    startsecs: int = 5  # up this long counts as started; a quicker exit is retried with backoff
    stopwaitsecs: int = 15  # after SIGTERM, this long before SIGKILL (of its whole process group)


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


def answers(url: str | None) -> bool:
    """A component's health check passes: its URL answers 200 (None: it has no URL to ask)."""
    if url is None:
        return True
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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

    def service_headers(self, caller: str) -> dict[str, str]:
        """What `caller` presents to an internal service (tests and benchmarks call them directly)."""
        return {"Authorization": f"Bearer {trust.read_token(self.data_dir / 'keys' / 'service' / f'{caller}.token')}"}

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
        # every component's service token, made once before any child could race to make them
        trust.make_token_files(self.data_dir / "keys" / "service")
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "dagster_home" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        if self.instance_overrides:
            import yaml

            path = self.dagster_home / "dagster.yaml"
            path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), self.instance_overrides)))
        self._init_dagster_storage()

    def _init_dagster_storage(self) -> None:
        """Dagster's SQLite storage, made once before its processes start. The daemon and the
        webserver creating it at the same moment can stamp its Alembic version twice; they run on,
        but every later start (a restarted daemon) then fails with "more than one head present"."""
        if not (self.daemon and self.webserver) or (self.dagster_home / "schedules" / "schedules.db").exists():
            return
        dagster = Path(sys.executable).parent / "dagster"
        r = subprocess.run(
            [str(dagster), "instance", "migrate"], env=self.env(), cwd=REPO, capture_output=True, umask=UMASK
        )
        if r.returncode:
            raise RuntimeError(f"dagster instance migrate failed: {r.stderr.decode()[-2000:]}")

    def programs(self) -> list[Program]:
        """The children, in start order: the services of `run`, then Dagster's daemon and webserver."""
        bindir = Path(sys.executable).parent
        workspace = str(REPO / "workspace.yaml")
        out = []
        for i, name in enumerate(self.run):
            port = self.ports[name]
            argv = [sys.executable, "-m", "uvicorn", "--factory", f"services.{name}.app:create_app"]
            argv += ["--host", self.host, "--port", str(port), "--log-level", "warning", "--loop", serve.loop(name)]
            out.append(
                Program(
                    name,
                    argv,
                    {"SERVICE_NAME": f"lucid-session-{name}", "PORT": str(port)},
                    f"{self.url(name)}/health",
                    priority=10 * (SERVICES.index(name) + 1 if name in SERVICES else i + 1),
                    # the recorder ends its captures cleanly on SIGTERM (last segment flushed, registered)
                    stopwaitsecs=60 if name == "recorder" else 15,
                )
            )
        if self.daemon:
            argv = [str(bindir / "dagster-daemon"), "run", "-w", workspace]
            out.append(Program("dagster-daemon", argv, {}, None, priority=60, startsecs=10, stopwaitsecs=30))
        if self.webserver:
            argv = [str(bindir / "dagster-webserver"), "-w", workspace, "-h", self.host, "-p", str(self.dagster_port)]
            health = f"http://{self.host}:{self.dagster_port}/server_info"
            out.append(Program("dagster-webserver", argv, {}, health, priority=70, startsecs=10))
        return out

    def program(self, name: str) -> Program:
        return next(p for p in self.programs() if p.name == name)

    def _spawn(self, prog: Program, env: dict[str, str]) -> None:
        with open(self.logs / f"{prog.name}.log", "ab") as log:  # the child keeps its own descriptor
            self.procs[prog.name] = subprocess.Popen(
                prog.argv,
                env={**env, **prog.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                umask=UMASK,
            )

    def restart(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Kill one service (SIGKILL by default, as a crash) and start it again."""
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait()
        self._spawn(self.program(name), self.env())
        deadline = time.monotonic() + timeout
        while True:
            if answers(f"{self.url(name)}/health"):
                return
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} did not come back; see {self.logs / (name + '.log')}")
            time.sleep(0.3)

    def start(self, timeout: float = 120) -> None:
        self.prepare()
        env = self.env()
        for prog in self.programs():
            self._spawn(prog, env)
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
                if answers(url):
                    del pending[name]
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


def _die_with_parent() -> None:
    """Run in supervisord's process before exec: SIGTERM when `lucid up` dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), so a killed `lucid up` does not leave the platform running unseen."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop it
        pass


def _conf_value(text: str) -> str:
    """A value for supervisord's config: its parser expands `%(...)s`, so a literal % is doubled."""
    return text.replace("%", "%%")


@dataclass
class Supervised:
    """The platform under supervisord (`lucid up`): the config is written into the data directory,
    supervisord runs in the foreground as this process's child (in its own session, so a Ctrl-C in
    the terminal reaches `lucid up` alone, which then stops supervisord, which stops the programs in
    reverse priority order: Dagster and the gateway first, the pipeline last). The shared
    environment (which may carry secrets) is supervisord's own and inherited by every program: the
    config file holds only per-program variables."""

    platform: Platform
    startretries: int = 10  # supervisord's backoff: 1 s, 2 s, ... between quick exits, then FATAL
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.platform.data_dir / "supervisord.conf"

    @property
    def socket(self) -> Path:
        path = self.platform.data_dir / "run" / "supervisor.sock"
        if len(str(path)) < 100:  # AF_UNIX paths are limited to 107 bytes
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"lucid-supervisor-{digest}.sock"

    def config_text(self) -> str:
        p = self.platform
        logs = p.logs
        lines = [
            "; written by `lucid up` at every start (services/launcher.py): edits here are lost",
            "[supervisord]",
            "nodaemon=true",
            "silent=true",  # its log goes to logfile only, not to lucid up's terminal as well
            f"logfile={_conf_value(str(logs / 'supervisord.log'))}",
            "logfile_maxbytes=10MB",
            "logfile_backups=3",
            f"pidfile={_conf_value(str(p.data_dir / 'run' / 'supervisord.pid'))}",
            f"childlogdir={_conf_value(str(logs))}",
            "umask=077",
            "",
            "[unix_http_server]",
            f"file={_conf_value(str(self.socket))}",
            "chmod=0700",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_conf_value(str(self.socket))}",
        ]
        for prog in p.programs():
            env = ",".join(f'{k}="{_conf_value(v)}"' for k, v in prog.env.items())
            lines += [
                "",
                f"[program:{prog.name}]",
                f"command={_conf_value(shlex.join(prog.argv))}",
                f"directory={_conf_value(str(REPO))}",
                *([f"environment={env}"] if env else []),
                f"priority={prog.priority}",
                "autostart=true",
                "autorestart=true",
                f"startsecs={prog.startsecs}",
                f"startretries={self.startretries}",
                "stopsignal=TERM",
                f"stopwaitsecs={prog.stopwaitsecs}",
                "stopasgroup=true",
                "killasgroup=true",
                "umask=077",
                f"stdout_logfile={_conf_value(str(logs / (prog.name + '.log')))}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=3",
                "redirect_stderr=true",
            ]
        return "\n".join(lines) + "\n"

    def rpc(self) -> xmlrpc.client.ServerProxy:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def states(self) -> dict[str, dict]:
        """supervisord's view of every program: state name, pid, description."""
        return {i["name"]: i for i in self.rpc().supervisor.getAllProcessInfo()}

    def start(self, timeout: float = 180) -> None:
        p = self.platform
        p.prepare()  # keys and the instance config before any child starts
        (p.data_dir / "run").mkdir(mode=0o700, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.conf.write_text(self.config_text())
        self.conf.chmod(0o600)
        supervisord = Path(sys.executable).parent / "supervisord"
        with open(p.logs / "supervisord.out", "ab") as out:
            self.proc = subprocess.Popen(
                [str(supervisord), "-n", "-c", str(self.conf)],
                env=p.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                umask=UMASK,
                preexec_fn=_die_with_parent,
            )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        """Every program RUNNING in supervisord and every health URL answering 200."""
        progs = {prog.name: prog for prog in self.platform.programs()}
        deadline = time.monotonic() + timeout
        pending = set(progs)
        while pending:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"supervisord exited with {self.proc.returncode}; see {self.platform.logs}")
            try:
                states = self.states()
            except (OSError, xmlrpc.client.Error):
                states = {}
            for name in list(pending):
                info = states.get(name)
                if info and info["statename"] == "FATAL":
                    raise RuntimeError(f"{name} keeps exiting; see {self.platform.logs / (name + '.log')}")
                if not info or info["statename"] != "RUNNING":
                    continue
                if answers(progs[name].health):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout:.0f}s: {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to supervisord: it stops the programs (SIGTERM to each process group, SIGKILL
        after its stopwaitsecs) and exits; anything left after that is killed here."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            pids = [i["pid"] for i in self.states().values() if i["pid"]]
        except (OSError, xmlrpc.client.Error):
            pids = []
        self.proc.terminate()
        grace = sum(prog.stopwaitsecs for prog in self.platform.programs()) + 10
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
