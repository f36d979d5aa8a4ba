"""The FastAPI app factory every service uses: logging, errors, /health and /ready."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lucid_assets.settings import get_settings
from lucid_assets.trust import TokenTable

from . import errors
from .guard import BodyLimit, ServiceAuth

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]


class QueryRedacted(logging.Filter):
    """Access-log lines keep the path, never the query string: it can hold what someone searched
    for (/v1/search?q=..., which the search log records, with who asked) or a media link's token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


class QuietHeartbeats(logging.Filter):
    """A recorder's heartbeat (every few seconds, issue 17) answered 200 is no news: those request
    lines are dropped from the client log (a failed one is still logged, as is every other call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # httpx: 'HTTP Request: %s %s "%s %d %s"' % (method, url, http_version, status, reason)
        if not isinstance(args, tuple) or len(args) < 4:
            return True
        return not (str(args[1]).endswith("/recorders/self") and args[3] == 200)


def configure_logging() -> None:
    s = get_settings()
    logging.basicConfig(
        level=("DEBUG" if s.debug else s.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QueryRedacted) for f in access.filters):
        access.addFilter(QueryRedacted())
    client = logging.getLogger("httpx")
    if not any(isinstance(f, QuietHeartbeats) for f in client.filters):
        client.addFilter(QuietHeartbeats())


def make_app(
    name: str,
    *,
    checks: dict[str, ReadyCheck] | None = None,
    internal: bool = True,
    uploads: tuple[tuple[str, str], ...] = (),
    **kwargs,
) -> FastAPI:
    """`internal` services admit only callers with a service token (the gateway authenticates
    API keys itself); `uploads` are the (method, path regex) routes that take chunk bytes."""
    configure_logging()
    app = FastAPI(title=f"Lucid {name}", version="0.1.0", **kwargs)
    errors.install(app)
    started = time.time()
    s = get_settings()
    if internal:
        app.add_middleware(ServiceAuth, table=TokenTable.load(s))
    # outermost: a body over the limit is refused before authentication reads or checks anything
    app.add_middleware(BodyLimit, limit=s.max_request_bytes, upload_limit=s.max_chunk_bytes, uploads=uploads)
    service = s.service_name if "service_name" in s.model_fields_set else name  # SERVICE_NAME if given
    checks = checks or {}

    @app.get("/health", tags=["health"], summary="Liveness")
    async def health():
        return {"status": "ok", "service": service, "uptime_s": int(time.time() - started)}

    @app.get("/ready", tags=["health"], summary="Readiness: dependencies reachable")
    async def ready():
        results, ok = {}, True
        for check_name, check in checks.items():
            try:
                good, detail = await check()
            except Exception as exc:  # a failing dependency is a readiness answer, not a crash
                good, detail = False, f"{type(exc).__name__}: {exc}"
            results[check_name] = {"ok": good, "detail": detail}
            ok &= good
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": results}, status_code=200 if ok else 503
        )

    return app


def writable_dir_check(path) -> ReadyCheck:
    async def check():
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".ready-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
        return True, f"{path} writable"

    return check


def peer_check(url: str) -> ReadyCheck:
    async def check():
        from .peers import client

        r = await client().get(f"{url}/health", timeout=3)
        return r.status_code == 200, f"{url} answered {r.status_code}"

    return check
