"""lucid-session-pipeline: the state machine, the registry, the audit log, the work queue."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from sqlmodel import select

from lucid_assets.settings import get_settings
from services.common import migrate
from services.common.app import make_app
from services.common.db import Database

from . import fleet
from .models import SessionRow
from .routes import chunks, recorders, sessions, work


def create_app(database_url: str | None = None):
    url = database_url or get_settings().pipeline_db
    migrate.upgrade(url, "pipeline")  # a no-op at head; `lucid up` and compose's migrate step ran it first
    db = Database(url)

    async def db_check():
        with db.read() as s:
            s.exec(select(SessionRow.id).limit(1)).all()
        return True, "registry database reachable"

    @asynccontextmanager
    async def lifespan(_app):
        """The watch over the recorders' heartbeats (issue 17), while the service serves."""
        stop = threading.Event()
        lapse = get_settings().recorder_lapse_seconds
        watch = threading.Thread(target=fleet.watch, args=(db, lapse, stop), name="recorder-watch", daemon=True)
        watch.start()
        yield
        stop.set()
        watch.join(10)

    app = make_app("pipeline", checks={"database": db_check}, lifespan=lifespan)
    app.state.db = db
    for module in (sessions, chunks, work, recorders):
        app.include_router(module.router)
    return app
