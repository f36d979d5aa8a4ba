"""lucid-session-api: the public REST gateway (API keys and roles, validation, routing to the
services, the viewer)."""

from __future__ import annotations

import sys
from pathlib import Path

from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from lucid_assets.clients import PipelineClient, StorageClient
from lucid_assets.settings import get_settings
from lucid_assets.trust import API, own_token
from services.common import migrate, peers
from services.common.app import make_app, peer_check
from services.common.db import Database

from . import links
from .auth import ensure_admin_key
from .deps import Gateway
from .edge import Edge, Metrics
from .routes import credentials, insight, keys, media, metrics, recorders, sessions, shares

STATIC = Path(__file__).resolve().parent / "static"


def create_app():
    s = get_settings()
    migrate.upgrade(s.api_db, "api")  # a no-op at head; `lucid up` and compose's migrate step ran it first
    db = Database(s.api_db)
    preset = s.preset_admin_key
    first = ensure_admin_key(db, preset)
    token = own_token(s, API)
    peers.use_token(token)
    app = make_app(
        "api",
        internal=False,  # the public edge: API keys, checked per route (auth.py)
        uploads=(("PUT", r"/v1/sessions/[^/]+/chunks/[^/]+"),),
        checks={
            "pipeline": peer_check(s.pipeline_url),
            "recorder": peer_check(s.recorder_url),
            "storage": peer_check(s.storage_url),
        },
        description="Lucid Sessions: record, seal, verify and play back remote sessions.",
    )
    if first and not preset:
        # shown once, on the terminal that started the gateway; only its hash is stored
        print(f"lucid: created the first admin API key (shown once): {first}", file=sys.stderr, flush=True)
    app.state.gateway = Gateway(
        settings=s,
        keys_db=db,
        link_secret=links.load_secret(s.link_secret_path),
        pipeline=PipelineClient(s.pipeline_url, token=token),
        storage=StorageClient(s.storage_url, token=token),
    )
    for module in (sessions, media, keys, metrics, shares, credentials, insight, recorders):
        app.include_router(module.router)
    app.include_router(shares.shared)
    app.state.metrics = Metrics()
    # outermost, outside even Starlette's own 500 answer: hardening headers on every answer (413s of
    # the body limit too), and the metrics
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: Edge(build(), metrics=app.state.metrics, fastapi_app=app)
    app.mount("/viewer", StaticFiles(directory=STATIC, html=True), name="viewer")

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/viewer/")

    return app
