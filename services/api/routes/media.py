"""Playback: HLS (live and sealed), MP4 and MPEG-TS exports, and the short-lived signed links that
let a <video> element use them without the API key."""
from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from lucid_assets.settings import get_settings
from services.common.errors import ApiError
from services.common.peers import call, stream

from .. import links
from ..auth import Principal, authenticate, bearer, principal_by_key_id, viewer
from .sessions import proxy_chunk

router = APIRouter(prefix="/v1/sessions", tags=["playback"])
S = get_settings()
ENDED = {"sealed", "failed", "deleted"}


def media_access(session_id: str, request: Request,
                 token: str | None = Query(None, description="a signed media link's token instead of a key"),
                 creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    if token:
        who = principal_by_key_id(request, links.check(request.app.state.link_secret, token, session_id))
        if who is None:
            raise ApiError(401, "unauthorized", "the API key that made this media link was revoked")
        return who
    return authenticate(request, creds)


def _token(request: Request, session_id: str, who: Principal) -> str:
    return request.query_params.get("token") or links.sign(request.app.state.link_secret, session_id, who.key_id)[0]


@router.post("/{session_id}/links", summary="Short-lived signed media links (HLS, MP4, TS) for a player")
async def media_links(session_id: str, request: Request, who: Principal = Depends(viewer)):
    await call("GET", f"{S.pipeline_url}/sessions/{session_id}")
    token, exp = links.sign(request.app.state.link_secret, session_id, who.key_id)
    base = f"/v1/sessions/{session_id}"
    return {"expires_at": exp, "token": token,
            "hls": f"{base}/live.m3u8?token={token}", "mp4": f"{base}/recording.mp4?token={token}",
            "ts": f"{base}/recording.ts?token={token}"}


@router.get("/{session_id}/live.m3u8", summary="HLS playlist: grows while recording, ends when sealed",
            response_class=Response)
async def playlist(session_id: str, request: Request, who: Principal = Depends(media_access)):
    session = await call("GET", f"{S.pipeline_url}/sessions/{session_id}")
    items = (await call("GET", f"{S.storage_url}/sessions/{session_id}/playlist"))["items"]
    token = _token(request, session_id, who)
    ended = session["state"] in ENDED
    longest = max([i["duration_ms"] for i in items] + [session["chunk_seconds"] * 1000])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{math.ceil(longest / 1000)}",
             "#EXT-X-MEDIA-SEQUENCE:0", f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
             "#EXT-X-INDEPENDENT-SEGMENTS"]
    for i in items:
        lines += [f"#EXTINF:{i['duration_ms'] / 1000:.3f},", f"media/{i['seq']}.ts?token={token}"]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return Response("\n".join(lines) + "\n", media_type="application/vnd.apple.mpegurl",
                    headers={"Cache-Control": "no-store"})


@router.get("/{session_id}/media/{seq}.ts", summary="One decrypted chunk for players (Range supported)",
            response_class=Response)
async def media_chunk(session_id: str, seq: int, request: Request, _: Principal = Depends(media_access)):
    return await proxy_chunk(session_id, seq, request)


PASSED_BACK = ("content-disposition", "cache-control", "content-length", "content-range", "accept-ranges", "etag")


async def _export(session_id: str, ext: str, request: Request) -> Response:
    await call("GET", f"{S.pipeline_url}/sessions/{session_id}")  # 404 for unknown sessions
    forward = {k: v for k, v in request.headers.items() if k.lower() in ("range", "if-range")}
    r = await stream(request.method, f"{S.storage_url}/sessions/{session_id}/recording.{ext}", headers=forward)
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
    return StreamingResponse(body(), status_code=r.status_code, media_type=r.headers.get("content-type"),
                             headers=headers)


@router.api_route("/{session_id}/recording.mp4", methods=["GET", "HEAD"],
                  summary="The whole recording as MP4 (no re-encode; Range and seeking supported)",
                  response_class=StreamingResponse)
async def recording_mp4(session_id: str, request: Request, _: Principal = Depends(media_access)):
    return await _export(session_id, "mp4", request)


@router.get("/{session_id}/recording.ts", summary="The whole recording as the original MPEG-TS (streamed)",
            response_class=StreamingResponse)
async def recording_ts(session_id: str, request: Request, _: Principal = Depends(media_access)):
    return await _export(session_id, "ts", request)
