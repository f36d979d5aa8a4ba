"""What the storage routes share: the stores, keys and peers of this process (made once in
create_app), and the session id a path names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, Request

from lucid_assets.clients import PipelineClient
from lucid_assets.core import keys
from lucid_assets.insight.index import TextIndex
from lucid_assets.insight.session import open_index
from lucid_assets.insight.view import SearchKeys
from lucid_assets.keyring import Keyring
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from lucid_assets.trust import STORAGE, own_token
from services.common.errors import ApiError
from services.common.ids import SessionId


@dataclass
class Storage:
    store: ChunkStore
    lake: Lake
    keyring: Keyring
    public_key: Ed25519PublicKey
    pipeline: PipelineClient
    recordings: Path
    text_index: TextIndex
    search_keys: SearchKeys
    max_chunk_bytes: int

    @classmethod
    def from_settings(cls, s: Settings) -> Storage:
        store, keyring = ChunkStore.from_settings(s), Keyring.load(s, with_signing=False)
        return cls(
            store=store,
            lake=Lake.from_settings(s),
            keyring=keyring,
            public_key=Keyring.public_key(s),
            pipeline=PipelineClient(s.pipeline_url, token=own_token(s, STORAGE)),
            recordings=s.recordings_path,
            text_index=open_index(store),
            search_keys=SearchKeys(store, keyring),
            max_chunk_bytes=s.max_chunk_bytes,
        )

    def dek(self, sid: str) -> bytes:
        try:
            dek = self.store.data_key(sid, self.keyring)
        except keys.KeyMaterialError as exc:
            raise ApiError(409, "key_unavailable", f"the data key of {sid} does not open: {exc}") from None
        if dek is None:
            raise ApiError(410, "shredded", f"session {sid} has no data key (never stored, or crypto-shredded)")
        return dek


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


Ctx = Annotated[Storage, Depends(get_storage)]
Sid = SessionId  # the one id check every service shares (services/common/ids.py)
