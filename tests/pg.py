"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, started on a free port as the
`postgres` system user (PostgreSQL refuses to run as root). `scripts/test` installs the server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile


def find_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class TempPostgres:
    def __init__(self, port: int):
        self.bin = find_bin()
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="lucid-pg-")
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, capture_output=True, cwd="/")

    def start(self) -> str:
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        self._run(f"{self.bin}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        self._run(
            f"{self.bin}/pg_ctl",
            "-D",
            data,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        self._run(f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "lucid")
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/lucid"

    def stop(self) -> None:
        try:
            self._run(f"{self.bin}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
