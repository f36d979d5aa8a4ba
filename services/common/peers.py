"""Calls between services. A peer's JSON error passes through unchanged; an unreachable peer is a
503 that names it."""

from __future__ import annotations

import httpx

from .errors import ApiError

_client: httpx.AsyncClient | None = None
_headers: dict[str, str] = {}


def use_token(token: str) -> None:
    """The service token every call of this process presents (the gateway's)."""
    global _client
    _headers["Authorization"] = f"Bearer {token}"
    _client = None


def client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), headers=_headers)
    return _client


def _unreachable(url: str, exc: Exception) -> ApiError:
    return ApiError(503, "service_unavailable", f"{url.split('/')[2]} is unreachable: {type(exc).__name__}")


async def call(method: str, url: str, *, raw: bool = False, **kwargs):
    try:
        r = await client().request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from None
    return _result(r, raw)


def _result(r: httpx.Response, raw: bool):
    if r.status_code >= 400:
        try:
            body = r.json()
            error, detail = body.pop("error"), body.pop("detail")
        except (ValueError, KeyError, TypeError, AttributeError):
            error, detail, body = "upstream_error", r.text[:500], {}
        passed = {k: r.headers[k] for k in ("content-range",) if k in r.headers}  # a 416's `bytes */N`
        raise ApiError(r.status_code, error, detail, headers=passed or None, **body)
    if raw:
        return r
    return r.json() if r.content else None


async def stream(method: str, url: str, **kwargs):
    """Open a streamed response from a peer; errors are raised like call()'s. The caller iterates
    `aiter_raw()` and must `aclose()` it."""
    req = client().build_request(method, url, **kwargs)
    try:
        r = await client().send(req, stream=True)
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from None
    if r.status_code >= 400:
        await r.aread()
        await r.aclose()
        _result(r, True)
    return r
