"""GET /metrics: the gateway's Prometheus text (route templates only: no session ids, no keys).
It needs an API key like every other gateway route (viewer is enough): a scraper sends one."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from ..auth import Principal, viewer
from .sessions import AUTH

router = APIRouter(tags=["health"])
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests by route template and status, in flight, latency",
    responses={**AUTH, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request, _: Principal = Depends(viewer)):
    return PlainTextResponse(request.app.state.metrics.text(), media_type=PROMETHEUS)
