"""What the gateway adds to every answer: the browser-hardening headers the viewer relies on, and
Prometheus-text metrics (requests by route template and status, in flight, latency). Labels are
route templates (`/v1/sessions/{session_id}`), never the ids or keys a request carried."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from services.common.errors import documented

# The viewer (static/index.html, app.js, vendor/hls.light.min.js) loads only its own files and
# calls only this origin; hls.js plays through MediaSource (a blob: URL on the <video>) and may run
# its transmuxer in a blob: worker. Nothing inline, nothing framed, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # media links carry a token in their query string
]

# FastAPI's interactive docs load Swagger UI / ReDoc from a CDN with inline scripts: they keep the
# other headers but not the viewer's policy (they hold no session data; a key is typed in by hand)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters kept in this process (one gateway worker); text for GET /metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.hist: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.in_flight = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, route, str(status))] += 1
            counts = self.hist.setdefault((method, route), [0] * (len(BUCKETS) + 1))
            counts[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.sums[(method, route)] += seconds

    def text(self) -> str:
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        out = [
            "# HELP lucid_api_requests_total Requests answered, by method, route template and status.",
            "# TYPE lucid_api_requests_total counter",
        ]
        with self.lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f'lucid_api_requests_total{{method="{m}",route="{esc(r)}",status="{s}"}} {n}')
            out += [
                "# HELP lucid_api_requests_in_flight Requests being answered now.",
                "# TYPE lucid_api_requests_in_flight gauge",
                f"lucid_api_requests_in_flight {self.in_flight}",
                "# HELP lucid_api_request_duration_seconds Time to the last byte of the answer.",
                "# TYPE lucid_api_request_duration_seconds histogram",
            ]
            for (m, r), counts in sorted(self.hist.items()):
                labels, total = f'method="{m}",route="{esc(r)}"', 0
                for b, n in zip((*BUCKETS, "+Inf"), counts, strict=True):
                    total += n
                    out.append(f'lucid_api_request_duration_seconds_bucket{{{labels},le="{b}"}} {total}')
                out.append(f"lucid_api_request_duration_seconds_sum{{{labels}}} {self.sums[(m, r)]:.6f}")
                out.append(f"lucid_api_request_duration_seconds_count{{{labels}}} {total}")
        return "\n".join(out) + "\n"


def route_template(app, scope) -> str:
    """The template of the route that answered (or would have answered) this request."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    found = documented(app, scope["path"])  # refused before routing (body limit, 405): by path alone
    return found[0] if found else "unmatched"


class Edge:
    """Outermost ASGI middleware: hardening headers on every answer, and the metrics."""

    def __init__(self, app, *, metrics: Metrics, fastapi_app=None):
        self.app, self.metrics, self.fastapi_app = app, metrics, fastapi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        with self.metrics.lock:
            self.metrics.in_flight += 1

        async def send_hardened(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                names = {k.lower() for k, _ in message.get("headers", [])}
                if scope["path"] in DOCS_PATHS:
                    names.add(b"content-security-policy")
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_hardened)
        finally:
            with self.metrics.lock:
                self.metrics.in_flight -= 1
            route = route_template(self.fastapi_app, scope) if self.fastapi_app is not None else "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)
