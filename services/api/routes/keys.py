"""/v1/keys/signing and /v1/api-keys."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from lucid_assets.settings import get_settings
from services.common.errors import not_found
from services.common.peers import call

from ..auth import ApiKeyRow, Principal, Role, admin, create_key, key_dict, viewer

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/keys/signing", summary="The manifest-signing public key")
async def signing_key(_: Principal = Depends(viewer)):
    return await call("GET", f"{get_settings().storage_url}/keys/signing")


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=200)
    role: Literal["viewer", "operator", "admin"]


@router.post("/api-keys", status_code=201, summary="Create an API key (the key is shown once)")
def create_api_key(body: NewKey, request: Request, _: Principal = Depends(admin)):
    row, key = create_key(request.app.state.keys_db, body.name, Role[body.role])
    return {**key_dict(row), "key": key}


@router.get("/api-keys", summary="List API keys (never the keys themselves)")
def list_api_keys(request: Request, _: Principal = Depends(admin)):
    with request.app.state.keys_db.read() as s:
        return {"items": [key_dict(r) for r in s.exec(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()]}


@router.delete("/api-keys/{key_id}", summary="Revoke an API key")
def revoke_api_key(key_id: str, request: Request, _: Principal = Depends(admin)):
    with request.app.state.keys_db.write() as s:
        row = s.get(ApiKeyRow, key_id)
        if row is None:
            raise not_found(f"API key {key_id} does not exist")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(timezone.utc)
            s.add(row)
        s.flush()
        return key_dict(row)
