"""What the gateway's routes share (made once in create_app): its settings, the API-key database,
the media-link secret and the typed clients of the pipeline and storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from lucid_assets.clients import PipelineClient, StorageClient
from lucid_assets.settings import Settings
from services.common.db import Database
from services.common.errors import ApiError


@dataclass
class Gateway:
    settings: Settings
    keys_db: Database
    link_secret: bytes
    pipeline: PipelineClient
    storage: StorageClient

    @property
    def storage_url(self) -> str:
        return self.settings.storage_url

    @property
    def recorder_url(self) -> str:
        return self.settings.recorder_url

    def recorder_for(self, session_id: str, *, placing: bool = False) -> str:
        """The URL of the recorder that owns the session; placing (a start), the least-loaded live
        recorder that can open its source (issue 17). With no recorder announced at all, the one
        configured recorder (recorder_url)."""
        session = self.pipeline.session(session_id)
        fleet = self.pipeline.recorders()
        owner = next((r for r in fleet if r.name == session.recorder), None)
        if owner is not None:  # one that never announced itself is the configured one (below)
            if not owner.alive:
                raise ApiError(
                    503,
                    "recorder_unavailable",
                    f"session {session_id} is recorded by {session.recorder}, whose heartbeat has lapsed",
                    state=session.state,
                )
            return owner.url
        if not placing or session.recorder is not None or not fleet:
            return self.settings.recorder_url
        kind = session.source.get("kind")
        able = [r for r in fleet if r.alive and kind in r.sources]
        if not able:
            why = f"no live recorder can open a {kind} source"
            raise ApiError(503, "no_recorder", f"session {session_id} cannot start: {why}", state=session.state)
        # capacity weighs the choice; it refuses nothing (a recorder over it records more slowly, not worse)
        return min(able, key=lambda r: (r.live / r.capacity, r.live, r.name)).url


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


Gw = Annotated[Gateway, Depends(get_gateway)]
