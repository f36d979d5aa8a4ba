"""/v1/keys/signing and /v1/api-keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from lucid_assets.core.states import ShareRevocation
from lucid_assets.models import SigningKey
from services.common.errors import ERRORS, not_found
from services.common.peers import call

from .. import shares
from ..auth import ApiKeyRow, Principal, Role, admin, create_key, key_dict, viewer
from ..deps import Gw
from .sessions import AUTH

router = APIRouter(prefix="/v1", tags=["keys"], responses={**ERRORS, **AUTH})


@router.get("/keys/signing", summary="The manifest-signing public key", response_model=SigningKey)
async def signing_key(gw: Gw, _: Principal = Depends(viewer)):
    return await call("GET", f"{gw.storage_url}/keys/signing")


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=200)
    role: Literal["viewer", "operator", "admin"]


class ApiKey(BaseModel):
    id: str
    name: str
    role: Literal["viewer", "operator", "admin"]
    created_at: str
    revoked_at: str | None


class NewApiKey(ApiKey):
    key: str = Field(..., description="the bearer token: shown this once, stored only as a hash")


class ApiKeyList(BaseModel):
    items: list[ApiKey]


@router.post(
    "/api-keys", status_code=201, summary="Create an API key (the key is shown once)", response_model=NewApiKey
)
def create_api_key(body: NewKey, gw: Gw, _: Principal = Depends(admin)):
    row, key = create_key(gw.keys_db, body.name, Role[body.role])
    return {**key_dict(row), "key": key}


@router.get("/api-keys", summary="List API keys (never the keys themselves)", response_model=ApiKeyList)
def list_api_keys(gw: Gw, _: Principal = Depends(admin)):
    with gw.keys_db.read() as s:
        return {"items": [key_dict(r) for r in s.exec(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()]}


@router.delete("/api-keys/{key_id}", summary="Revoke an API key (and the share links it made)", response_model=ApiKey)
def revoke_api_key(key_id: str, gw: Gw, who: Principal = Depends(admin)):
    with gw.keys_db.write() as s:
        row = s.get(ApiKeyRow, key_id)
        if row is None:
            raise not_found(f"API key {key_id} does not exist")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            s.add(row)
        s.flush()
        answer = key_dict(row)
    revoked = shares.revoke_where(gw.keys_db, shares.ShareRow.created_by == key_id)
    shares.note_revoked(gw, revoked, who.actor, ShareRevocation.API_KEY_REVOKED)
    return answer
