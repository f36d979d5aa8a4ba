"""Shared steps of the end-to-end tests."""

import time
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

from services.recorder.capture import SegmentWriter, open_encoder


def wait_state(client, sid, wanted, timeout=180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = client.get(f"/v1/sessions/{sid}").json()
        if s["state"] in wanted:
            return s
        assert time.monotonic() < deadline, f"session {sid} still {s['state']} after {timeout}s"
        time.sleep(0.5)


def create(client, name, *, source=None, width=160, height=120, fps=10, chunk_seconds=2, **extra) -> str:
    body = {
        "name": name,
        "video": {"width": width, "height": height, "fps": fps},
        "chunk_seconds": chunk_seconds,
        **extra,
    }
    if source:
        body["source"] = source
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def record(client, seconds=5, name="recording", **kw) -> dict:
    """Create, start, record `seconds`, stop, wait until sealed."""
    sid = create(client, name, **kw)
    assert client.post(f"/v1/sessions/{sid}/start").status_code == 200
    time.sleep(seconds)
    assert client.post(f"/v1/sessions/{sid}/stop").status_code == 200
    s = wait_state(client, sid, {"sealed", "failed"})
    assert s["state"] == "sealed", s["failure_reason"]
    return s


def download(client, sid, path: Path) -> list[dict]:
    """The decrypted recording, chunk by chunk into one file; returns the chunk list."""
    chunks = client.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    with path.open("wb") as f:
        for c in chunks:
            r = client.get(f"/v1/sessions/{sid}/chunks/{c['seq']}")
            assert r.status_code == 200, r.text
            f.write(r.content)
    return chunks


def decode(path: Path) -> list:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def record_segments(
    directory: Path, fps=10, seconds: float = 6, chunk_seconds=2, size=(160, 120), pattern="testsrc"
) -> list:
    """Real libx264 segments through the recorder's own encoder setup and writer, unpaced."""
    video = {"width": size[0], "height": size[1], "fps": fps, "encoders": ["libx264"]}
    codec = open_encoder(video, fps * chunk_seconds)
    segs = []
    writer = SegmentWriter(directory, codec, fps, segs.append)
    src = av.open(f"{pattern}=size={size[0]}x{size[1]}:rate={fps},format=yuv420p", format="lavfi")
    for i, frame in enumerate(src.decode(video=0)):
        if i == int(fps * seconds):
            break
        frame.pts, frame.time_base = i, Fraction(1, fps)
        frame.pict_type = PictureType.I if i % (fps * chunk_seconds) == 0 else PictureType.NONE
        for pkt in codec.encode(frame):
            writer.write(pkt)
    for pkt in codec.encode(None):
        writer.write(pkt)
    writer.close_segment()
    src.close()
    return segs


def _acting_caller(request) -> str:
    """Which component would make this pipeline call (the test client plays every one of them)."""
    import json

    path, method = request.url.path, request.method
    if path.startswith("/work") or path.endswith(("/manifest", "/audit")):
        return "dagster"
    if path.endswith("/verification"):
        return "storage"
    if path.endswith("/transitions"):
        event = json.loads(request.content or b"{}").get("event")
        return {"delete": "api", "seal": "dagster", "retry": "dagster"}.get(event, "recorder")
    if method == "POST" and path.endswith("/chunks"):
        return "recorder"
    return "api"


def pipeline_client(platform, **kw):
    """An httpx client of the pipeline that presents, per request, the service token of the
    component that makes that call in the platform (the gateway names an API key as the actor).
    Tests about who may call what use `platform.service_headers` directly."""
    import httpx

    tokens = {c: platform.service_headers(c) for c in ("api", "recorder", "storage", "dagster")}

    def sign(request):
        caller = _acting_caller(request)
        request.headers.update(tokens[caller])
        if caller == "api":
            request.headers["X-Lucid-Actor"] = "key:test"

    return httpx.Client(base_url=platform.url("pipeline"), timeout=30, event_hooks={"request": [sign]}, **kw)


def token_file(platform, caller: str = "dagster") -> str:
    """The service token file a Dagster resource of this platform reads."""
    return str(platform.data_dir / "keys" / "service" / f"{caller}.token")


def start_platform(p, timeout: float = 180):
    """Start a Platform; if it does not come up, stop it and print the tail of every log first."""
    try:
        p.start(timeout=timeout)
    except Exception:
        p.stop()
        for log in sorted(p.logs.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text()[-4000:]}")
        raise
    return p
