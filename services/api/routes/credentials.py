"""/v1/credentials (admin): named remote-desktop logins that `vnc` and `rdp` session sources refer
to. The storage service keeps them sealed under the KEK; the password is write-only here: no answer,
error body or log line of the gateway carries it (a 422 names the field, never its value)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends

from lucid_assets.core.states import CREDENTIAL_OPENABLE
from lucid_assets.credentials import valid_name
from lucid_assets.models import CREDENTIAL_NAME, CredentialIn, CredentialInfo, CredentialList, NewCredential
from services.common.errors import ERRORS, ApiError

from ..auth import Principal, admin
from ..deps import Gw
from .sessions import AUTH

log = logging.getLogger("lucid.credentials")
router = APIRouter(prefix="/v1/credentials", tags=["credentials"], responses={**ERRORS, **AUTH})


def credential_name(name: str) -> str:
    """The path's credential name, checked before it becomes a peer's URL: 404 if no credential can
    have it."""
    if not valid_name(name):
        shown = name[:80].encode("unicode_escape").decode("ascii")
        raise ApiError(404, "not_found", f"no credential is named {shown!r}: a name matches {CREDENTIAL_NAME}")
    return name


Name = Annotated[str, Depends(credential_name)]
Admin = Annotated[Principal, Depends(admin)]  # first in every signature: no answer before the key is checked


@router.post(
    "",
    status_code=201,
    summary="Store a credential (409 if the name exists; the password is never shown again)",
    response_model=CredentialInfo,
)
def create_credential(who: Admin, body: NewCredential, gw: Gw):
    info = gw.storage.put_credential(body.name, body, actor=who.actor, exists=False)
    log.info("credential %r (%s) created by %s", body.name, info.kind, who.actor)
    return info


@router.put("/{name}", summary="Replace a credential (e.g. a new password)", response_model=CredentialInfo)
def replace_credential(who: Admin, name: Name, body: CredentialIn, gw: Gw):
    info = gw.storage.put_credential(name, body, actor=who.actor, exists=True)
    log.info("credential %r (%s) replaced by %s", name, info.kind, who.actor)
    return info


@router.get("", summary="List credentials (metadata only, never a password)", response_model=CredentialList)
def list_credentials(_: Admin, gw: Gw):
    return {"items": gw.storage.credentials()}


@router.get("/{name}", summary="One credential's metadata (never its password)", response_model=CredentialInfo)
def get_credential(_: Admin, name: Name, gw: Gw):
    return gw.storage.credential(name)


@router.delete(
    "/{name}",
    summary="Delete a credential (409 while a session that may still connect names it)",
    response_model=CredentialInfo,
)
def delete_credential(who: Admin, name: Name, gw: Gw):
    gw.storage.credential(name)  # 404 first for a name that is not there
    users = [
        s.id
        for state in sorted(CREDENTIAL_OPENABLE)
        for s in gw.pipeline.all_sessions(state)
        if s.source.get("credential") == name
    ]
    if users:
        raise ApiError(
            409,
            "credential_in_use",
            f"{len(users)} session(s) that may still connect name {name!r} (e.g. {', '.join(users[:3])}); "
            "stop or delete them first",
        )
    info = gw.storage.delete_credential(name, actor=who.actor)
    log.info("credential %r deleted by %s", name, who.actor)
    return info
