"""API keys: random bearer tokens stored as SHA-256 hashes, with roles viewer < operator < admin."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from enum import IntEnum

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Field, SQLModel, select

from services.common.db import Database
from services.common.errors import ApiError


class Role(IntEnum):
    viewer = 0
    operator = 1
    admin = 2


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: str = Field(primary_key=True)
    name: str
    role: str
    key_hash: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    revoked_at: datetime | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "lucid_" + secrets.token_urlsafe(32)


def create_key(db: Database, name: str, role: Role, key: str | None = None) -> tuple[ApiKeyRow, str]:
    key = key or new_key()
    if len(key) < 24:
        raise ApiError(422, "invalid_request", "an API key must be at least 24 characters")
    row = db.insert(ApiKeyRow(id=secrets.token_hex(6), name=name, role=role.name, key_hash=hash_key(key)))
    return row, key


def ensure_admin_key(db: Database, preset: str | None = None) -> str | None:
    """The first start creates an admin key (or takes `preset`) and returns it, once; later starts
    return None."""
    with db.read() as s:
        if s.exec(select(ApiKeyRow).where(ApiKeyRow.role == Role.admin.name, ApiKeyRow.revoked_at.is_(None))).first():
            return None
    return create_key(db, "bootstrap admin", Role.admin, preset)[1]


def key_dict(row: ApiKeyRow) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


class Principal:
    def __init__(self, row: ApiKeyRow):
        self.key_id, self.name, self.role = row.id, row.name, Role[row.role]

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


def authenticate(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    unauthorized = ApiError(
        401,
        "unauthorized",
        "a valid API key is required: Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise unauthorized
    digest = hash_key(creds.credentials)
    db: Database = request.app.state.gateway.keys_db
    with db.read() as s:
        row = s.exec(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        raise unauthorized
    return Principal(row)


def principal_by_key_id(request: Request, key_id: str) -> Principal | None:
    with request.app.state.gateway.keys_db.read() as s:
        row = s.get(ApiKeyRow, key_id)
    return Principal(row) if row is not None and row.revoked_at is None else None


def require(role: Role):
    def dependency(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        who = authenticate(request, creds)
        if who.role < role:
            raise ApiError(403, "forbidden", f"this needs the {role.name} role; the key has {who.role.name}")
        return who

    return dependency


viewer, operator, admin = require(Role.viewer), require(Role.operator), require(Role.admin)
