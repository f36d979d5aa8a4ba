"""Shared steps of the end-to-end tests."""
import time
from pathlib import Path

import av


def wait_state(client, sid, wanted, timeout=180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = client.get(f"/v1/sessions/{sid}").json()
        if s["state"] in wanted:
            return s
        assert time.monotonic() < deadline, f"session {sid} still {s['state']} after {timeout}s"
        time.sleep(0.5)


def create(client, name, *, source=None, width=160, height=120, fps=10, chunk_seconds=2, **extra) -> str:
    body = {"name": name, "video": {"width": width, "height": height, "fps": fps}, "chunk_seconds": chunk_seconds,
            **extra}
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
