"""What the gateway's routes share (made once in create_app): its settings, the API-key database,
the media-link secret and the typed clients of the pipeline and storage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from lucid_assets.clients import PipelineClient, StorageClient
from lucid_assets.models import RecorderInfo
from lucid_assets.settings import Settings
from services.common.db import Database
from services.common.errors import ApiError

FLEET_TTL_S = 2.0  # how long the gateway reuses the pipeline's list of recorders for routing
OWNERS_KEPT = 10_000  # session -> recorder names remembered (an owner never changes once started)


@dataclass
class Gateway:
    settings: Settings
    keys_db: Database
    link_secret: bytes
    pipeline: PipelineClient
    storage: StorageClient
    _owners: dict[str, str] = field(default_factory=dict, repr=False)
    _fleet: tuple[float, list[RecorderInfo]] = (float("-inf"), [])

    @property
    def storage_url(self) -> str:
        return self.settings.storage_url

    @property
    def recorder_url(self) -> str:
        return self.settings.recorder_url

    def _recorders(self, *, fresh: bool) -> list[RecorderInfo]:
        """The pipeline's recorder list, reused for FLEET_TTL_S (placing a start always asks anew:
        it weighs their current load)."""
        at, fleet = self._fleet
        if fresh or time.monotonic() - at > FLEET_TTL_S:
            fleet = self.pipeline.recorders()
            self._fleet = (time.monotonic(), fleet)
        return fleet

    def recorder_for(self, session_id: str, *, placing: bool = False) -> str:
        """The URL of the recorder that owns the session; placing (a start), the least-loaded live
        recorder that can open its source (issue 17). With no recorder announced at all, the one
        configured recorder (recorder_url). A push or control of a started session costs no
        pipeline call when its owner and the recorder list are known (issue 17's note: it cost two)."""
        name, session = self._owners.get(session_id), None
        if name is None or placing:
            session = self.pipeline.session(session_id)
            name = session.recorder
            if name is not None:
                if len(self._owners) >= OWNERS_KEPT:
                    self._owners.clear()
                self._owners[session_id] = name
        fleet = self._recorders(fresh=placing)
        owner = next((r for r in fleet if r.name == name), None)
        if owner is not None:  # one that never announced itself is the configured one (below)
            if not owner.alive:
                session = session or self.pipeline.session(session_id)
                raise ApiError(
                    503,
                    "recorder_unavailable",
                    f"session {session_id} is recorded by {name}, whose heartbeat has lapsed",
                    state=session.state,
                )
            return owner.url
        if not placing or name is not None or not fleet:
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
