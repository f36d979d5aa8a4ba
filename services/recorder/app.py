"""lucid-session-recorder: capture sessions into segments and register them; take pushed chunks
from external agents; after a crash, register what was completed and finalize it."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from fastapi.concurrency import run_in_threadpool

from lucid_assets.settings import get_settings
from services.common.app import make_app, peer_check, writable_dir_check

from .capture import probe_encoders
from .recorder import Recorder
from .recovery import leftovers, recover
from .remote import clear_displays
from .routes import recordings


def create_app():
    settings = get_settings()
    clear_displays()  # the private displays' cookie files of a previous (killed) recorder process
    rec = Recorder(settings)

    @asynccontextmanager
    async def lifespan(_app):
        rec.encoders.update(await run_in_threadpool(probe_encoders, settings.encoder_order))
        # only the directories that exist before this process records: a session started since is its own
        threading.Thread(target=recover, args=(rec, leftovers(rec.recordings)), name="recover", daemon=True).start()
        threading.Thread(target=rec.heartbeats, name="heartbeat", daemon=True).start()  # issue 17
        yield
        await run_in_threadpool(rec.shutdown)  # SIGTERM: end the captures cleanly, saying why

    async def encoders_check():
        usable = [n for n, v in rec.encoders.items() if v == "available"]
        return bool(usable), f"encoder {usable[0] if usable else 'none'} first; " + ", ".join(
            f"{n}: {v}" for n, v in rec.encoders.items()
        )

    app = make_app(
        "recorder",
        lifespan=lifespan,
        uploads=(("PUT", r"/recordings/[^/]+/chunks/[^/]+"),),  # pushed chunks: max_chunk_bytes
        checks={
            "recordings_volume": writable_dir_check(rec.recordings),
            "pipeline": peer_check(settings.pipeline_url),
            "encoders": encoders_check,
        },
    )
    app.state.recorder = rec
    app.include_router(recordings.router)
    return app
