"""lucid-session-storage: the read path over the catalog and the chunk store (chunks, proofs,
exports), verification, and crypto-shredding."""

from __future__ import annotations

import asyncio

from lucid_assets.files import clean_stale_tmp
from lucid_assets.settings import get_settings
from services.common.app import make_app, peer_check

from .deps import Storage
from .routes import chunks, credentials, exports, insight, integrity, staging, text_index


def create_app():
    settings = get_settings()
    storage = Storage.from_settings(settings)
    if storage.store.is_local:  # what a process killed mid-write left in the chunk store (a bucket has none)
        clean_stale_tmp(storage.store.root)

    async def store_check():
        return await asyncio.to_thread(storage.store.objects.check)

    async def catalog_check():
        storage.lake.ensure_tables()
        return True, "iceberg catalog reachable"

    app = make_app(
        "storage",
        checks={
            "chunk_store": store_check,
            "catalog": catalog_check,
            "pipeline": peer_check(settings.pipeline_url),
        },
    )
    app.state.storage = storage
    for module in (chunks, exports, integrity, credentials, insight, staging, text_index):
        app.include_router(module.router)
    return app
