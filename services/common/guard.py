"""What stands in front of every route: the request body limit (every service) and the service
credential check (internal services). Both are plain ASGI middleware so they act before FastAPI
reads a body, authenticates or validates anything."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from fastapi import Depends, Request

from lucid_assets.trust import TokenTable, role_of

from .errors import ApiError

OPEN_PATHS = frozenset({"/health", "/ready"})  # liveness and readiness stay open for probes


async def _answer(send, status: int, error: str, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TooLarge(ApiError):
    def __init__(self, limit: int, upload: bool = False):
        what = "the chunk is over max_chunk_bytes" if upload else "the request body is over this route's limit"
        super().__init__(413, "chunk_too_large" if upload else "too_large", f"{what} ({limit} bytes)")


class BodyLimit:
    """413 for a body over the route's limit: at once from Content-Length, else as soon as the
    streamed body passes it (nothing beyond the limit is read). `uploads` are (method, path regex)
    pairs of the routes that take chunk bytes; they get `upload_limit`, everything else `limit`."""

    def __init__(self, app, *, limit: int, upload_limit: int, uploads: Iterable[tuple[str, str]] = ()):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit
        self.uploads = [(m, re.compile(p)) for m, p in uploads]

    def is_upload(self, method: str, path: str) -> bool:
        return any(m == method and p.fullmatch(path) for m, p in self.uploads)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = self.is_upload(scope["method"], scope["path"])
        limit = self.upload_limit if upload else self.limit
        too_large = TooLarge(limit, upload)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _answer(send, 400, "bad_request", "Content-Length is not a number")
                if declared > limit:
                    return await _answer(send, 413, too_large.error, too_large.detail)
        seen, over, started = 0, False, False

        async def limited():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise too_large
            return message

        async def answer(message):
            # whatever the app made of the interrupted read (a parse error, a proxy failure), the
            # client hears 413, unless the app had already begun its answer
            nonlocal started
            if over and not started:
                if message["type"] == "http.response.start":
                    started = True
                    await _answer(send, 413, too_large.error, too_large.detail)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, answer)


class ServiceAuth:
    """Internal services: a request without a valid service token gets 401 before anything else
    runs; the authenticated caller's name is put in `request.state.caller`."""

    def __init__(self, app, *, table: TokenTable):
        self.app, self.table = app, table

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        caller = self.table.caller(header)
        if caller is None:
            detail = "an internal service: only Lucid's own components may call it (service token required)"
            return await _answer(send, 401, "unauthorized", detail, [(b"www-authenticate", b"Bearer")])
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def caller(request: Request) -> str:
    """The authenticated caller's identity (`dagster`, `recorder`, `recorder-b`)."""
    return request.state.caller


def allow(*callers: str):
    """A route dependency: 403 unless the authenticated caller's role is one of `callers`."""

    def dependency(request: Request) -> str:
        who = caller(request)
        if role_of(who) not in callers:
            raise ApiError(403, "forbidden", f"the {who} service may not call this (allowed: {', '.join(callers)})")
        return who

    return Depends(dependency)


def check_recorder(request: Request, session) -> None:
    """A recorder acts only on the sessions it records (issue 17: the pipeline records the owner from
    the recorder's authenticated identity at its start); 403 for another recorder."""
    refuse_other_recorder(session, caller(request))


def refuse_other_recorder(session, who: str) -> None:
    """403 not_owner when `session` is recorded by a recorder other than `who`."""
    if session.recorder is not None and session.recorder != who:
        detail = f"session {session.id} is recorded by {session.recorder}; {who} may not act on it"
        raise ApiError(403, "not_owner", detail, state=session.state)
