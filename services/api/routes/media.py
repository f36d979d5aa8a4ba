"""Playback: HLS (live and sealed), MP4 and MPEG-TS exports, and the short-lived signed links that
let a <video> element use them without the API key."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from lucid_assets.core.states import ENDED
from lucid_assets.models import Playlist
from services.common.errors import ERRORS, RANGE_ERRORS, ApiError
from services.common.ids import Seq, SessionId
from services.common.peers import call, stream

from .. import links
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


def media_access(
    session_id: SessionId,
    request: Request,
    token: str | None = Query(None, description="a signed media link's token instead of a key"),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    if token:
        who = principal_by_key_id(request, links.check(request.app.state.gateway.link_secret, token, session_id))
        if who is None:
            raise ApiError(401, "unauthorized", "the API key that made this media link was revoked")
        return who
    return authenticate(request, creds)


def _token(request: Request, session_id: str, who: Principal) -> str:
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
    }


@router.get(
    "/{session_id}/live.m3u8",
    summary="HLS playlist: grows while recording, ends when sealed",
    response_class=Response,
    responses={200: {"content": {"application/vnd.apple.mpegurl": {}}}},
)
async def playlist(session_id: SessionId, request: Request, gw: Gw, who: Principal = Depends(media_access)):
    session = await run_in_threadpool(gw.pipeline.session, session_id)
    items = Playlist.model_validate(await call("GET", f"{gw.storage_url}/sessions/{session_id}/playlist")).items
    token = _token(request, session_id, who)
    ended = session.state in ENDED
    longest = max([i.duration_ms for i in items] + [session.chunk_seconds * 1000])
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{math.ceil(longest / 1000)}",
        "#EXT-X-MEDIA-SEQUENCE:0",
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
async def media_chunk(session_id: SessionId, seq: Seq, request: Request, gw: Gw, _: Principal = Depends(media_access)):
    return await proxy_chunk(gw, session_id, seq, request)


PASSED_BACK = ("content-disposition", "cache-control", "content-length", "content-range", "accept-ranges", "etag")


async def _export(gw, session_id: str, ext: str, request: Request) -> Response:
    await run_in_threadpool(gw.pipeline.session, session_id)  # 404 for unknown sessions
    forward = {k: v for k, v in request.headers.items() if k.lower() in ("range", "if-range")}
    r = await stream(request.method, f"{gw.storage_url}/sessions/{session_id}/recording.{ext}", headers=forward)
    headers = {k: v for k, v in r.headers.items() if k.lower() in PASSED_BACK}
    if request.method == "HEAD":
        await r.aclose()
        return Response(status_code=r.status_code, media_type=r.headers.get("content-type"), headers=headers)

    async def body():
        try:
            async for part in r.aiter_raw():
                yield part
        finally:
            await r.aclose()

    return StreamingResponse(
        body(), status_code=r.status_code, media_type=r.headers.get("content-type"), headers=headers
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
async def recording_mp4(session_id: SessionId, request: Request, gw: Gw, _: Principal = Depends(media_access)):
    return await _export(gw, session_id, "mp4", request)


@router.get(
    "/{session_id}/recording.ts",
    summary="The whole recording as the original MPEG-TS (streamed)",
    response_class=StreamingResponse,
    responses=TS,
)
async def recording_ts(session_id: SessionId, request: Request, gw: Gw, _: Principal = Depends(media_access)):
    return await _export(gw, session_id, "ts", request)
