"""lucid-session-api (8087): the public REST gateway."""
from __future__ import annotations

import sys

from lucid_assets.settings import get_settings
from services.common.app import make_app, peer_check
from services.common.db import Database

from pathlib import Path

from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import links
from .auth import ensure_admin_key
from .routes import keys, media, sessions

STATIC = Path(__file__).resolve().parent / "static"


def create_app():
    s = get_settings()
    db = Database(s.api_db)
    preset = s.preset_admin_key
    first = ensure_admin_key(db, preset)
    if first and not preset:
        # shown once, on the terminal that started the gateway; only its hash is stored
        print(f"lucid: created the first admin API key (shown once): {first}", file=sys.stderr, flush=True)
    app = make_app("api", checks={"pipeline": peer_check(s.pipeline_url), "recorder": peer_check(s.recorder_url),
                                   "storage": peer_check(s.storage_url)},
                   description="Lucid Sessions: record, seal, verify and play back remote sessions.")
    app.state.keys_db = db
    app.state.link_secret = links.load_secret(s.link_secret_path)
    app.include_router(sessions.router)
    app.include_router(media.router)
    app.include_router(keys.router)
    app.mount("/viewer", StaticFiles(directory=STATIC, html=True), name="viewer")

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/viewer/")
    return app
