"""SQLModel engines: SQLite in the embedded default, PostgreSQL in compose."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from sqlalchemy import event
from sqlmodel import Session, create_engine


class Database:
    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        kwargs = (
            {"connect_args": {"check_same_thread": False, "timeout": 30}} if self.sqlite else {"pool_pre_ping": True}
        )
        self.engine = create_engine(url, **kwargs)
        if self.sqlite:

            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _):
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()

        # SQLite has one writer; serialise our write transactions so read-check-write is atomic.
        # On PostgreSQL, rows are locked with SELECT ... FOR UPDATE instead.
        self._write_lock = threading.RLock()

    @contextmanager
    def read(self):
        with Session(self.engine) as s:
            yield s

    @contextmanager
    def write(self):
        with self._write_lock, Session(self.engine) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def insert(self, row):
        """Add one row in its own transaction; returns it loaded and detached (usable after)."""
        with self.write() as s:
            s.add(row)
            s.flush()
            s.refresh(row)
            s.expunge(row)
        return row
