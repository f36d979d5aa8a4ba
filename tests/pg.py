"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, started on a free port as the
`postgres` system user (PostgreSQL refuses to run as root). `scripts/test` installs the server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database of its own on the test server (its URL), dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    db = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    try:
        yield admin.url.set(database=db).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE {db} WITH (FORCE)"))
        admin.dispose()
