"""Inputs that used to reach a 500 (or write before refusing), ids that could leak into internal
URLs, the gateway's hardening headers and metrics, the url source's reach: each against the real
embedded platform."""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from lucid_assets.core.states import ChunkState, State
from lucid_assets.settings import Settings
from services.common.ids import MAX_CHUNK_DURATION_MS
from services.recorder.sources import SourceError, check_url
from tests.conftest import client_for
from tests.helpers import create, record_segments, wait_state
from tests.test_fuzz import service_headers

pytestmark = pytest.mark.e2e

# control characters, a decoded query string, path tricks, not-quite-UUIDs
BAD_IDS = ["%00", "%0A", "a%1Fb", "a%3Fb%3Dc", "..%2F..%2Fkeys", "not-a-uuid", "%7B" + "0" * 32 + "%7D"]


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def recordings(platform) -> Path:
    return Path(platform.data_dir) / "recordings"


def files_of(platform, sid: str) -> list[str]:
    d = recordings(platform) / sid
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture()
def push_session(admin):
    sid = create(admin, "push target", source={"kind": "push"})
    assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
    return sid


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_session_id_is_404_everywhere(platform, admin, bad):
    for method, path in (
        ("GET", f"/v1/sessions/{bad}"),
        ("POST", f"/v1/sessions/{bad}/start"),
        ("GET", f"/v1/sessions/{bad}/chunks/0"),
        ("GET", f"/v1/sessions/{bad}/recording.mp4"),
        ("POST", f"/v1/sessions/{bad}/links"),
        ("DELETE", f"/v1/sessions/{bad}"),
    ):
        r = admin.request(method, path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert r.json()["error"] == "not_found", r.text
        assert "UUID" in r.json()["detail"] or "%2F" in bad, r.text  # %2F: no route has that many parts
    internal = (
        ("pipeline", "GET", f"/sessions/{bad}"),
        ("pipeline", "GET", f"/sessions/{bad}/chunks"),
        ("storage", "GET", f"/sessions/{bad}/checkpoints"),
        ("recorder", "POST", f"/recordings/{bad}/stop"),
    )
    for service, method, path in internal:
        with client_for(platform, None) as c:
            r = c.request(method, platform.url(service) + path, headers=service_headers(platform, service))
        assert r.status_code == 404 and r.json()["error"] == "not_found", (service, path, r.text)


def test_downloads_of_an_unknown_or_empty_session_are_404(admin, push_session):
    """The gateway asks the pipeline whether the session exists while storage starts answering:
    an unknown session is the pipeline's 404 (whatever storage says); a known one with no chunk yet
    is storage's."""
    unknown = str(uuid.uuid4())
    for what in ("recording.mp4", "recording.ts", "evidence"):
        r = admin.get(f"/v1/sessions/{unknown}/{what}")
        assert r.status_code == 404 and r.json()["error"] == "not_found", (what, r.text)
        assert unknown in r.json()["detail"], r.text
    r = admin.get(f"/v1/sessions/{push_session}/recording.ts")
    assert r.status_code == 404 and "no stored chunks" in r.json()["detail"], r.text


def test_seq_and_offset_out_of_range_are_422(admin, push_session):
    for params in ({"offset": 10**30}, {"offset": -1}):
        r = admin.get("/v1/sessions", params=params)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    r = admin.get(f"/v1/sessions/{push_session}/chunks/{10**30}")
    assert r.status_code == 422 and "seq" in r.json()["detail"], r.text
    r = admin.get("/v1/sessions", params={"label": 'x"] OR 1=1 --'})
    assert r.status_code == 422 and "label" in r.json()["detail"], r.text


def test_absurd_chunk_duration_is_refused_before_anything_is_written(platform, admin, push_session):
    body = b"pushed bytes " * 100
    sha = hashlib.sha256(body).hexdigest()
    url = f"/v1/sessions/{push_session}/chunks/0"
    for duration in (str(10**20), str(MAX_CHUNK_DURATION_MS + 1), "-5", "soon"):
        headers = {"X-Content-SHA256": sha, "X-Chunk-Duration-Ms": duration}
        r = admin.put(url, content=body, headers=headers)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", (duration, r.text)
        # the recorder checks every header itself too, for any caller that is not the gateway
        with client_for(platform, None) as c:
            r = c.put(
                platform.url("recorder") + f"/recordings/{push_session}/chunks/0",
                content=body,
                headers={**headers, **service_headers(platform, "recorder")},
            )
        assert r.status_code == 422, (duration, r.text)
    assert files_of(platform, push_session) == []
    assert admin.get(f"/v1/sessions/{push_session}/chunks").json()["items"] == []
    r = admin.put(url, content=body, headers={"X-Content-SHA256": sha, "X-Chunk-Duration-Ms": "2000"})
    assert r.status_code == 201, r.text


def test_malformed_media_link_tokens_are_401(platform, admin, push_session):
    secret = Settings(data_dir=Path(platform.data_dir)).link_secret_path.read_bytes()

    def signed(payload: bytes) -> str:
        return f"{_b64(payload)}.{_b64(hmac.new(secret, payload, hashlib.sha256).digest())}"

    far = int(time.time()) + 600
    tokens = [
        f"{_b64(b'[1, 2]')}.{_b64(b'x')}",  # not an object, not signed
        "%%%.%%%",
        "no-dot-at-all",
        "é.é",
        signed(b"[1, 2]"),  # signed but not an object
        signed(b"\xff\xfe"),  # signed but not UTF-8
        signed(json.dumps({"s": push_session, "e": far}).encode()),  # no key id
        signed(json.dumps({"s": push_session, "k": 7, "e": far}).encode()),
        signed(json.dumps({"s": push_session, "k": "x", "e": True}).encode()),
        signed(json.dumps({"s": push_session, "k": "x", "e": "later"}).encode()),
    ]
    with client_for(platform, None) as anonymous:
        for token in tokens:
            r = anonymous.get(f"/v1/sessions/{push_session}/live.m3u8", params={"token": token})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (token, r.text)


def test_416_names_the_length(platform, admin, push_session):
    body = b"0123456789" * 50
    headers = {"X-Content-SHA256": hashlib.sha256(body).hexdigest(), "X-Chunk-Duration-Ms": "1000"}
    assert admin.put(f"/v1/sessions/{push_session}/chunks/0", content=body, headers=headers).status_code == 201
    deadline = time.monotonic() + 240
    while admin.get(f"/v1/sessions/{push_session}/chunks").json()["items"][0]["state"] != ChunkState.STORED:
        assert time.monotonic() < deadline, "chunk never stored"
        time.sleep(1)
    url = f"/v1/sessions/{push_session}/chunks/0"
    assert admin.get(url, headers={"Range": "bytes=10-19"}).content == body[10:20]
    for rng in ("bytes=5000-", "bytes=0-1,5-6", "pages=1-2"):
        for path in (url, f"/v1/sessions/{push_session}/media/0.ts"):
            r = admin.get(path, headers={"Range": rng})
            assert r.status_code == 416 and r.json()["error"] == "range_not_satisfiable", (path, rng, r.text)
            assert r.headers["content-range"] == f"bytes */{len(body)}", (path, rng, r.headers)


def test_security_headers_on_every_gateway_answer(platform, admin):
    with client_for(platform, None) as anonymous:
        answers = [
            anonymous.get("/viewer/"),
            anonymous.get("/viewer/app.js"),
            anonymous.get("/openapi.json"),
            anonymous.get("/health"),
            anonymous.get("/v1/sessions"),  # 401
            anonymous.get("/nowhere"),  # 404
            anonymous.options("/v1/sessions"),  # 405
            admin.get(f"/v1/sessions/{uuid.uuid4()}"),  # 404 from the pipeline
            admin.get("/v1/sessions"),
        ]
        docs = anonymous.get("/docs")  # Swagger UI: CDN and inline scripts, so not the viewer's policy
    assert docs.headers["x-frame-options"] == "DENY" and "content-security-policy" not in docs.headers
    for r in answers:
        h = r.headers
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff", r.url
        assert h["referrer-policy"] == "no-referrer", r.url
        csp = h["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp


def test_405_allows_every_method_of_the_path(admin):
    r = admin.options(f"/v1/sessions/{uuid.uuid4()}")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}, r.headers
    r = admin.post("/v1/sessions", content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text


def test_metrics_need_a_key_and_name_routes_not_ids(platform, admin, keys_by_role):
    sid = admin.post("/v1/sessions", json={"name": "metrics"}).json()["id"]
    admin.get(f"/v1/sessions/{sid}")
    with client_for(platform, None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    with client_for(platform, keys_by_role["viewer"]) as viewer:
        r = viewer.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    text = r.text
    assert 'lucid_api_requests_total{method="GET",route="/v1/sessions/{session_id}",status="200"}' in text
    assert 'lucid_api_requests_total{method="GET",route="/metrics",status="401"}' in text
    assert "lucid_api_requests_in_flight 1" in text  # this request
    assert 'lucid_api_request_duration_seconds_bucket{method="POST",route="/v1/sessions",le="+Inf"}' in text
    assert sid not in text and "test-admin-key" not in text and keys_by_role["viewer"] not in text


@pytest.mark.parametrize(
    "url, allow",
    [
        ("http://127.0.0.1:8087/openapi.json", ""),
        ("http://localhost/x.ts", ""),
        ("http://169.254.169.254/latest/meta-data", ""),
        ("rtsp://10.0.0.5/cam", ""),
        ("http://[::1]:8084/recordings", ""),
        ("http://[::ffff:127.0.0.1]/", ""),
        ("udp://0.0.0.0:1234", ""),
        ("http://10.0.0.5/cam", "127.0.0.1"),
    ],
)
def test_url_source_refuses_internal_targets(url, allow):
    with pytest.raises(SourceError, match="LUCID_URL_ALLOW_HOSTS"):
        check_url(url, [], allow)


def test_url_source_allowed_by_the_operator():
    assert check_url("http://10.0.0.5/cam", [], "10.0.0.0/8") == "http://10.0.0.5/cam"
    assert check_url("http://127.0.0.1:9/x", [], "127.0.0.1, camera.lan") == "http://127.0.0.1:9/x"


def test_url_source_does_not_tell_open_ports_from_closed(platform, admin):
    """The platform allows 127.0.0.1 (its tests stream from there): an open port that is not
    video and a closed one fail alike."""
    api_port = platform.url("api").rsplit(":", 1)[1]
    details = set()
    for url in (f"http://127.0.0.1:{api_port}/openapi.json", "http://127.0.0.1:9/x.ts"):
        sid = create(admin, "probe", source={"kind": "url", "url": url})
        r = admin.post(f"/v1/sessions/{sid}/start")
        assert r.status_code == 422, r.text
        details.add(r.json()["detail"])
        assert wait_state(admin, sid, {State.CREATED})["state"] == State.CREATED
    assert len(details) == 1, details
    assert api_port not in details.pop()


def test_openapi_documents_our_error_body(platform):
    """Every operation's error answers are our ErrorBody (FastAPI's own 422 shape is nowhere), and
    every /v1 operation documents 401 and 403."""
    with client_for(platform, None) as c:
        spec = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            errors = {s: r for s, r in op["responses"].items() if s.startswith("4")}
            for status, r in errors.items():
                schema = next(iter(r.get("content", {}).values()), {}).get("schema", {})
                assert schema.get("$ref", "").endswith("/ErrorBody"), (method, path, status, r)
            if path.startswith("/v1/"):
                assert {"401", "403", "422"} <= set(errors), (method, path, sorted(errors))


def test_url_source_follows_no_redirect(admin, tmp_path):
    """A URL that passed the host check must not lead FFmpeg elsewhere: the same stream plays when
    asked for directly and is refused behind a redirect."""
    segs = record_segments(tmp_path, seconds=2, chunk_seconds=2)
    video = b"".join(Path(s.path).read_bytes() for s in segs)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved.ts":
                self.send_response(302)
                self.send_header("Location", "/video.ts")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(video)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        direct = create(admin, "direct", source={"kind": "url", "url": f"{base}/video.ts", "realtime": False})
        assert admin.post(f"/v1/sessions/{direct}/start").status_code == 200
        moved = create(admin, "moved", source={"kind": "url", "url": f"{base}/moved.ts", "realtime": False})
        r = admin.post(f"/v1/sessions/{moved}/start")
        assert r.status_code == 422 and r.json()["error"] == "source_unavailable", r.text
    finally:
        server.shutdown()
