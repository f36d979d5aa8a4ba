"""One error shape everywhere: {"error": "<code>", "detail": "<what and why>"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from lucid_assets.clients import ServiceError
from lucid_assets.models import ErrorBody

log = logging.getLogger("lucid.errors")

# what every route may answer besides its success (the OpenAPI document lists them)
ERRORS: dict[int | str, dict] = {
    401: {"model": ErrorBody, "description": "no valid credential (an API key at the gateway, a service token inside)"},
    403: {"model": ErrorBody, "description": "the credential may not do this"},
    404: {"model": ErrorBody, "description": "no such session (or chunk)"},
    409: {"model": ErrorBody, "description": "refused in the session's current state (`state` says which)"},
    410: {"model": ErrorBody, "description": "the session was crypto-shredded: its data is gone"},
    413: {"model": ErrorBody, "description": "the request body is over the route's limit"},
    422: {
        "model": ErrorBody,
        "description": "invalid request (our body, not FastAPI's): `detail` names the field and why",
    },
    503: {"model": ErrorBody, "description": "a service this one needs is unreachable"},
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.error, self.detail, self.extra, self.headers = status, error, detail, extra, headers

    def body(self) -> dict:
        return {"error": self.error, "detail": self.detail, **self.extra}


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", what)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return "; ".join(parts) or "invalid request"


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def documented(app: FastAPI, path: str) -> tuple[str, list[str]] | None:
    """The OpenAPI path template that `path` falls under and the methods the document gives it."""
    for template, item in app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            return template, sorted(m.upper() for m in item if m in HTTP_METHODS)
    return None


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the app documents for `path` (a 405's `Allow`: Starlette's names only the
    first route that matched the path, though GET and DELETE are separate routes)."""
    found = documented(app, path)
    return found[1] if found else []


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ServiceError)
    async def _peer_error(_: Request, exc: ServiceError):  # a peer's answer passes through unchanged
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid_request", "detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        status, headers = exc.status_code, dict(getattr(exc, "headers", None) or {})
        if status == 400:  # FastAPI's "error parsing the body": an invalid request like any other
            return JSONResponse({"error": "invalid_request", "detail": f"body: {exc.detail}"}, status_code=422)
        if status == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope["path"])) or headers.get(
                "Allow", ""
            )
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(status, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=status, headers=headers or None)

    async def _database_down(_: Request, exc: DBAPIError):
        # the database restarting, crashed or unreachable (or SQLite's lock timeout): a 503 that
        # callers wait out (the recorder queues its segments), not a 500 that ends a recording
        log.warning("database unavailable: %s", type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__)
        return JSONResponse(
            {"error": "database_unavailable", "detail": "the service's database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(
            {"error": "internal", "detail": f"internal error ({type(exc).__name__}); see the service log"},
            status_code=500,
        )


# routes that serve byte ranges: an unsatisfiable Range is a 416 that names the current length
RANGE_ERRORS: dict[int | str, dict] = {
    416: {
        "model": ErrorBody,
        "description": "the Range is outside the body or malformed",
        "headers": {"Content-Range": {"description": "`bytes */<length>`", "schema": {"type": "string"}}},
    },
}
