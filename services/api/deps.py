"""What the gateway's routes share (made once in create_app): its settings, the API-key database,
the media-link secret and the typed clients of the pipeline and storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from lucid_assets.clients import PipelineClient, StorageClient
from lucid_assets.settings import Settings
from services.common.db import Database


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


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


Gw = Annotated[Gateway, Depends(get_gateway)]
