"""Share links: an operator makes, lists and revokes them (/v1/sessions/{id}/shares); their holder,
with no API key, views the one session (/v1/share). Every use is audited in the session's log."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from lucid_assets.core.states import Note, ShareRevocation, ShareUse, State
from lucid_assets.models import CheckpointList, CreateShare, NewShare, Share, ShareLinks, ShareList, ShareView
from services.common.errors import ERRORS, ApiError
from services.common.ids import SessionId
from services.common.peers import call

from .. import links, shares
from ..auth import Principal, operator
from ..deps import Gw
from ..shares import Grant, share_credential
from .sessions import AUTH

router = APIRouter(prefix="/v1/sessions", tags=["shares"], responses={**ERRORS, **AUTH})
SHARE_AUTH = {401: ERRORS[401] | {"description": "no valid share link (share_invalid)"}}
shared = APIRouter(prefix="/v1/share", tags=["shares"], responses={**ERRORS, **SHARE_AUTH})


@router.post(
    "/{session_id}/shares",
    status_code=201,
    summary="Make a share link for one session (the token is shown once)",
    response_model=NewShare,
)
def create_share(session_id: SessionId, body: CreateShare, gw: Gw, who: Principal = Depends(operator)):
    limit = gw.settings.share_max_seconds
    if body.expires_in > limit:
        raise ApiError(422, "invalid_request", f"expires_in: at most {limit} seconds (LUCID_SHARE_MAX_SECONDS)")
    session = gw.pipeline.session(session_id)  # 404 for unknown sessions
    if session.state == State.DELETED:
        raise ApiError(409, "session_deleted", f"session {session_id} was deleted", state=session.state)
    row, token = shares.create(gw.keys_db, session_id, who.key_id, body)
    share = shares.share_dict(row)
    detail = {k: share[k] for k in ("expires_at", "window", "may_download", "note")}
    try:
        shares.note(gw, session_id, Note.SHARE_CREATED, {"share": row.id, **detail}, who.actor)
    except BaseException:
        shares.forget(gw.keys_db, row.id)  # not audited: not made
        raise
    return {**share, "token": token, "url": f"/viewer/#share={token}"}


@router.get("/{session_id}/shares", summary="The session's share links (never their tokens)", response_model=ShareList)
def list_shares(session_id: SessionId, gw: Gw, _: Principal = Depends(operator)):
    gw.pipeline.session(session_id)
    return {"items": [shares.share_dict(r) for r in shares.list_for(gw.keys_db, session_id)]}


@router.delete(
    "/{session_id}/shares/{share_id}", summary="Revoke a share link (at once, mid-use too)", response_model=Share
)
def revoke_share(session_id: SessionId, share_id: str, gw: Gw, who: Principal = Depends(operator)):
    gw.pipeline.session(session_id)
    row, changed = shares.revoke(gw.keys_db, session_id, share_id)
    if changed:
        shares.note_revoked(gw, [row], who.actor, ShareRevocation.OPERATOR)
    return shares.share_dict(row)


@shared.get("", summary="What this share link shows: its session and window", response_model=ShareView)
async def view(gw: Gw, grant: Grant = Depends(share_credential)):
    sid, s = grant.session_id, grant.session
    seqs = await shares.window_of(gw, grant)
    await run_in_threadpool(shares.note, gw, sid, Note.SHARE_USED, {"what": ShareUse.VIEW}, grant.actor)
    return {
        "share": shares.info_dict(grant.row),
        "session": s.model_dump(
            include={
                "id",
                "name",
                "state",
                "created_at",
                "started_at",
                "stopped_at",
                "sealed_at",
                "chunk_count",
                "verification",
            }
        ),
        "chunks": {"first_seq": seqs[0], "last_seq": seqs[-1]} if seqs else None,
    }


@shared.get(
    "/manifest",
    summary="The session's signed manifest",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}},
)
async def shared_manifest(gw: Gw, grant: Grant = Depends(share_credential)):
    r = await call("GET", f"{gw.storage_url}/sessions/{grant.session_id}/manifest", raw=True)
    return Response(r.content, media_type="application/json")


@shared.get("/checkpoints", summary="The session's signed checkpoints, oldest first", response_model=CheckpointList)
def shared_checkpoints(gw: Gw, grant: Grant = Depends(share_credential)):
    return gw.storage.checkpoints(grant.session_id)


@shared.post(
    "/links", summary="Short-lived media links for the player (and downloads if allowed)", response_model=ShareLinks
)
def shared_links(gw: Gw, grant: Grant = Depends(share_credential)):
    sid = grant.session_id
    expires = int(shares.utc(grant.row.expires_at).timestamp())
    token, exp = links.sign_share(gw.link_secret, sid, grant.row.id, expires)
    shares.note(gw, sid, Note.SHARE_USED, {"what": ShareUse.PLAY}, grant.actor)
    base = f"/v1/sessions/{sid}"
    may = grant.row.may_download
    return {
        "expires_at": exp,
        "token": token,
        "hls": f"{base}/live.m3u8?token={token}",
        "mp4": f"{base}/recording.mp4?token={token}" if may else None,
        "ts": f"{base}/recording.ts?token={token}" if may else None,
        "evidence": f"{base}/evidence?token={token}" if may else None,
    }
