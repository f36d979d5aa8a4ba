"""Named remote-desktop credentials (issue 18): kept sealed under the KEK by this service
(lucid_assets/credentials.py). The gateway manages them (metadata only ever leaves); the recorder
opens one for a session whose source names it, the only answer that carries a password."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Header, Request

from lucid_assets.clients import ACTOR_HEADER
from lucid_assets.core.states import CREDENTIAL_OPENABLE, CredentialKind
from lucid_assets.credentials import (
    CredentialDamaged,
    CredentialError,
    CredentialExists,
    CredentialKeyUnavailable,
    CredentialNotFound,
    CredentialStore,
)
from lucid_assets.models import CredentialIn, CredentialInfo, CredentialList, CredentialSecret, OpenCredential
from lucid_assets.trust import API, RECORDER
from services.common.errors import ERRORS, ApiError
from services.common.guard import allow, check_recorder
from services.common.ids import session_id

from ..deps import Ctx

log = logging.getLogger("lucid.credentials")
router = APIRouter(prefix="/credentials", tags=["credentials"], responses=ERRORS)
_ACTOR = re.compile(r"key:[A-Za-z0-9_-]{1,64}")
OPENABLE = ", ".join(sorted(CREDENTIAL_OPENABLE))


def store(ctx) -> CredentialStore:
    return CredentialStore(ctx.store.objects)


@contextmanager
def answered() -> Iterator[None]:
    """The store's refusals as our error bodies (they never carry a secret)."""
    try:
        yield
    except CredentialNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except CredentialExists as exc:
        raise ApiError(409, "credential_exists", str(exc)) from None
    except CredentialDamaged as exc:
        raise ApiError(409, "credential_damaged", str(exc)) from None
    except CredentialKeyUnavailable as exc:
        raise ApiError(409, "key_unavailable", str(exc)) from None
    except CredentialError as exc:  # pragma: no cover - every subclass is above
        raise ApiError(409, "credential_error", str(exc)) from None


@router.get("", response_model=CredentialList, dependencies=[allow(API)], summary="Every credential's metadata")
def list_credentials(ctx: Ctx):
    good, damaged = store(ctx).infos()
    if damaged:
        log.warning("credential files that do not parse (left out of the list): %s", ", ".join(damaged))
    return {"items": good}


@router.get("/{name}", response_model=CredentialInfo, dependencies=[allow(API)], summary="One credential's metadata")
def get_credential(name: str, ctx: Ctx):
    with answered():
        return store(ctx).info(name)


@router.put(
    "/{name}",
    response_model=CredentialInfo,
    dependencies=[allow(API)],
    summary="Create or replace (If-None-Match: * creates only, If-Match: * replaces only)",
)
def put_credential(
    name: str,
    body: CredentialIn,
    request: Request,
    ctx: Ctx,
    if_none_match: Annotated[str | None, Header()] = None,
    if_match: Annotated[str | None, Header()] = None,
):
    exists = False if if_none_match == "*" else True if if_match == "*" else None
    claimed = request.headers.get(ACTOR_HEADER)
    actor = claimed if claimed and _ACTOR.fullmatch(claimed) else None
    with answered():
        info = store(ctx).put(
            name,
            kind=body.kind,
            username=body.username,
            domain=body.domain,
            password=body.password.get_secret_value(),
            keyring=ctx.keyring,
            actor=actor,
            exists=exists,
        )
    log.info("credential %r (%s) written by %s", name, info["kind"], actor or "api")
    return info


@router.delete("/{name}", response_model=CredentialInfo, dependencies=[allow(API)], summary="Delete one")
def delete_credential(name: str, request: Request, ctx: Ctx):
    with answered():
        info = store(ctx).delete(name)
    log.info("credential %r deleted by %s", name, request.headers.get(ACTOR_HEADER) or "api")
    return info


@router.post(
    "/{name}/open",
    response_model=CredentialSecret,
    dependencies=[allow(RECORDER)],
    summary="The recorder opens the credential its session's source names (the only answer with a password)",
)
def open_credential(name: str, body: OpenCredential, ctx: Ctx, request: Request):
    sid = session_id(body.session_id)
    session = ctx.pipeline.session(sid)  # 404 for an unknown session, as the pipeline says it
    check_recorder(request, session)
    if session.state not in CREDENTIAL_OPENABLE:
        raise ApiError(
            409,
            "session_state",
            f"session {sid} is {session.state}: a credential opens only for a session that is {OPENABLE}",
            state=session.state,
        )
    try:
        source_kind = CredentialKind(session.source.get("kind"))
    except ValueError:
        raise ApiError(
            403, "credential_not_named", f"session {sid} is no remote desktop: it names no credential"
        ) from None
    if session.source.get("credential") != name:
        raise ApiError(403, "credential_not_named", f"session {sid}'s source does not name the credential {name!r}")
    with answered():
        opened = store(ctx).open(name, ctx.keyring)
    if opened.kind != source_kind:
        raise ApiError(
            409,
            "credential_kind_mismatch",
            f"the credential {name!r} is for {opened.kind}, session {sid}'s source is {source_kind}",
        )
    log.info("credential %r opened for session %s", name, sid)
    return CredentialSecret(kind=opened.kind, username=opened.username, domain=opened.domain, password=opened.password)
