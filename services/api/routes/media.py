"""Playback: HLS (live and sealed), MP4 and MPEG-TS exports, and the short-lived signed links that
let a <video> element use them without the API key."""

from __future__ import annotations

import asyncio
import math
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from lucid_assets.core.states import ENDED, Note, ShareUse
from lucid_assets.models import Playlist
from services.common.errors import ERRORS, RANGE_ERRORS, ApiError
from services.common.ids import Seq, SessionId
from services.common.peers import call, download
from services.common.streaming import RelayResponse

from .. import links, shares
from ..auth import Principal, authenticate, bearer, principal_by_key_id, viewer
from ..deps import Gw
from .sessions import AUTH, proxy_chunk

router = APIRouter(prefix="/v1/sessions", tags=["playback"], responses={**ERRORS, **AUTH})


MP4 = {
    200: {"content": {"video/mp4": {}}},
    206: {"description": "the requested range", "content": {"video/mp4": {}}},
    **RANGE_ERRORS,
}
TS = {200: {"content": {"video/mp2t": {}}}}
RANGED_TS = {**TS, **RANGE_ERRORS, 206: {"description": "the requested range", "content": {"video/mp2t": {}}}}


class MediaLinks(BaseModel):
    expires_at: int
    token: str
    hls: str
    mp4: str
    ts: str
    evidence: str


def media_access(
    session_id: SessionId,
    request: Request,
    token: str | None = Query(None, description="a signed media link's token instead of a key"),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal | shares.Grant:
    """An API key, a media link made with one, or a media link made through a share (its share is
    re-checked here on every request: revoked, expired or its session deleted is a 401)."""
    if token:
        gw = request.app.state.gateway
        link = links.check(gw.link_secret, token, session_id)
        if link.share_id is not None:
            return shares.by_id(gw, link.share_id, session_id)
        who = principal_by_key_id(request, link.key_id)
        if who is None:
            raise ApiError(401, "unauthorized", "the API key that made this media link was revoked")
        return who
    return authenticate(request, creds)


Access = Principal | shares.Grant


def _token(request: Request, session_id: str, who: Access) -> str:
    if isinstance(who, shares.Grant):
        return request.query_params["token"]  # a share reaches media routes through its link alone
    return (
        request.query_params.get("token")
        or links.sign(request.app.state.gateway.link_secret, session_id, who.key_id)[0]
    )


@router.post(
    "/{session_id}/links",
    summary="Short-lived signed media links (HLS, MP4, TS) for a player",
    response_model=MediaLinks,
)
def media_links(session_id: SessionId, gw: Gw, who: Principal = Depends(viewer)):
    gw.pipeline.session(session_id)
    token, exp = links.sign(gw.link_secret, session_id, who.key_id)
    base = f"/v1/sessions/{session_id}"
    return {
        "expires_at": exp,
        "token": token,
        "hls": f"{base}/live.m3u8?token={token}",
        "mp4": f"{base}/recording.mp4?token={token}",
        "ts": f"{base}/recording.ts?token={token}",
        "evidence": f"{base}/evidence?token={token}",
    }


@router.get(
    "/{session_id}/live.m3u8",
    summary="HLS playlist: grows while recording, ends when sealed",
    response_class=Response,
    responses={200: {"content": {"application/vnd.apple.mpegurl": {}}}},
)
async def playlist(session_id: SessionId, request: Request, gw: Gw, who: Access = Depends(media_access)):
    grant = who if isinstance(who, shares.Grant) else None
    session = grant.session if grant else await run_in_threadpool(gw.pipeline.session, session_id)
    items = Playlist.model_validate(await call("GET", f"{gw.storage_url}/sessions/{session_id}/playlist")).items
    if grant:  # only the share's window
        keep = set(shares.window_seqs(items, grant.window))
        items = [i for i in items if i.seq in keep]
    token = _token(request, session_id, who)
    ended = session.state in ENDED
    longest = max([i.duration_ms for i in items] + [session.chunk_seconds * 1000])
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{math.ceil(longest / 1000)}",
        f"#EXT-X-MEDIA-SEQUENCE:{items[0].seq if items else 0}",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    for i in items:
        lines += [f"#EXTINF:{i.duration_ms / 1000:.3f},", f"media/{i.seq}.ts?token={token}"]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return Response(
        "\n".join(lines) + "\n", media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-store"}
    )


@router.get(
    "/{session_id}/media/{seq}.ts",
    summary="One decrypted chunk for players (Range supported)",
    response_class=Response,
    responses=RANGED_TS,
)
async def media_chunk(session_id: SessionId, seq: Seq, request: Request, gw: Gw, who: Access = Depends(media_access)):
    if isinstance(who, shares.Grant) and who.window is not None and seq not in await shares.window_of(gw, who):
        raise ApiError(403, "outside_share_window", f"chunk {seq} is outside the share's window")
    return await proxy_chunk(gw, session_id, seq, request)


PASSED_BACK = ("content-disposition", "cache-control", "content-length", "content-range", "accept-ranges", "etag")


EXPORTS = {ShareUse.MP4: "recording.mp4", ShareUse.TS: "recording.ts", ShareUse.EVIDENCE: "evidence"}


def _from_start(request: Request) -> bool:
    """A download, not one of a player's later range requests: no Range, or one from byte 0."""
    rng = request.headers.get("range")
    return rng is None or rng.replace(" ", "").lower().startswith("bytes=0-")


async def _share_download(gw, grant: shares.Grant) -> dict:
    """The storage query of a share's download: its window's run of chunks (none: all of them)."""
    if not grant.row.may_download:
        raise ApiError(403, "download_not_allowed", "this share link does not allow downloads")
    if grant.window is None:
        return {}
    seqs = await shares.window_of(gw, grant)
    if not seqs:
        raise ApiError(403, "outside_share_window", "the share's window holds no chunks (yet)")
    return {"first": seqs[0], "last": seqs[-1]}


def _audit_download(gw, session_id: str, what: ShareUse, who: Access, params: dict) -> None:
    if isinstance(who, shares.Grant):
        shares.note(gw, session_id, Note.SHARE_USED, {"what": what, **params}, who.actor)
    elif what == ShareUse.EVIDENCE:
        shares.note(gw, session_id, Note.EVIDENCE, dict(params), who.actor)


async def _export(gw, session_id: str, what: ShareUse, request: Request, who: Access) -> Response:
    params, query_params, known = {}, {}, None
    if isinstance(who, shares.Grant):  # the share and its session were checked by media_access
        params = query_params = await _share_download(gw, who)
        if what == ShareUse.EVIDENCE and who.window is not None:  # stated in bundle.json
            query_params = {**params, "from_ms": who.window.from_ms, "to_ms": who.window.to_ms}
    else:  # 404 for unknown sessions; asked while storage starts answering (a seek's latency is both)
        known = asyncio.ensure_future(run_in_threadpool(gw.pipeline.session, session_id))
    forward = {k: v for k, v in request.headers.items() if k.lower() in ("range", "if-range")}
    query = f"?{urlencode(query_params)}" if query_params else ""
    try:
        r = await download(request.method, f"{gw.storage_url}/sessions/{session_id}/{EXPORTS[what]}{query}", forward)
    except Exception:
        if known is not None:
            await known  # the pipeline's answer first: an unknown session is its 404, whatever storage said
        raise
    except BaseException:  # cancelled: the client went away
        if known is not None:
            known.cancel()
        raise
    if known is not None:
        try:
            await known
        except BaseException:
            r.close()
            raise
    if _from_start(request) and request.method != "HEAD":
        try:
            await run_in_threadpool(_audit_download, gw, session_id, what, who, params)
        except BaseException:
            r.close()
            raise
    return RelayResponse(
        r,
        status_code=r.status_code,
        media_type=r.headers.get("content-type"),
        headers={k: v for k, v in r.headers.items() if k.lower() in PASSED_BACK},
        head=request.method == "HEAD",
    )


@router.get(
    "/{session_id}/recording.mp4",
    summary="The whole recording as MP4 (no re-encode; Range and seeking supported)",
    response_class=StreamingResponse,
    responses=MP4,
)
@router.head(
    "/{session_id}/recording.mp4", summary="The MP4's size and ETag", response_class=StreamingResponse, responses=MP4
)
async def recording_mp4(session_id: SessionId, request: Request, gw: Gw, who: Access = Depends(media_access)):
    return await _export(gw, session_id, ShareUse.MP4, request, who)


@router.get(
    "/{session_id}/recording.ts",
    summary="The whole recording as the original MPEG-TS (streamed)",
    response_class=StreamingResponse,
    responses=TS,
)
async def recording_ts(session_id: SessionId, request: Request, gw: Gw, who: Access = Depends(media_access)):
    return await _export(gw, session_id, ShareUse.TS, request, who)


EVIDENCE = {
    200: {"content": {"application/x-tar": {}}},
    409: ERRORS[409] | {"description": "not sealed yet (`not_sealed`), or a chunk is damaged (`chunk_damaged`)"},
}


@router.get(
    "/{session_id}/evidence",
    summary="The evidence bundle (tar): recording, signed manifest, checkpoints, proofs, audit log, verifier",
    response_class=StreamingResponse,
    responses=EVIDENCE,
)
async def evidence(session_id: SessionId, request: Request, gw: Gw, who: Access = Depends(media_access)):
    return await _export(gw, session_id, ShareUse.EVIDENCE, request, who)
