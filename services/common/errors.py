"""One error shape everywhere: {"error": "<code>", "detail": "<what and why>"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lucid_assets.clients import ServiceError
from lucid_assets.models import ErrorBody

log = logging.getLogger("lucid.errors")

# what every route may answer besides its success (the OpenAPI document lists them)
ERRORS: dict[int | str, dict] = {
    404: {"model": ErrorBody, "description": "no such session (or chunk)"},
    409: {"model": ErrorBody, "description": "refused in the session's current state (`state` says which)"},
    422: {"model": ErrorBody, "description": "invalid request: `detail` names the field and why"},
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
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "detail": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(
            {"error": "internal", "detail": f"internal error ({type(exc).__name__}); see the service log"},
            status_code=500,
        )
