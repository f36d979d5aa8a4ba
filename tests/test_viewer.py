"""The read path and the viewer: exports, HLS (live and sealed), signed links, damage handling,
the role matrix, and the page itself in headless Chromium."""

import os
import time
import uuid
from pathlib import Path

import av
import httpx
import pytest

from tests.browser import Browser, chromium
from tests.conftest import client_for, free_port
from tests.helpers import create, decode, record, wait_state

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sealed(admin):
    return record(admin, seconds=7, name="viewer demo", width=320, height=240, fps=15, chunk_seconds=2)


def test_exports_are_complete_and_play(admin, sealed, tmp_path):
    sid = sealed["id"]
    ts = admin.get(f"/v1/sessions/{sid}/recording.ts")
    assert ts.status_code == 200 and ts.headers["content-type"] == "video/mp2t"
    chunks = b"".join(admin.get(f"/v1/sessions/{sid}/chunks/{i}").content for i in range(sealed["chunk_count"]))
    assert ts.content == chunks
    mp4 = admin.get(f"/v1/sessions/{sid}/recording.mp4")
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    assert "attachment" in mp4.headers["content-disposition"]
    (tmp_path / "r.mp4").write_bytes(mp4.content)
    frames = decode(tmp_path / "r.mp4")
    (tmp_path / "r.ts").write_bytes(ts.content)
    assert len(frames) == len(decode(tmp_path / "r.ts")) > 0  # remuxed, not a frame lost


def test_mp4_has_a_size_and_serves_any_byte_range(admin, sealed, tmp_path):
    sid = sealed["id"]
    full = admin.get(f"/v1/sessions/{sid}/recording.mp4")
    size = len(full.content)
    assert full.headers["accept-ranges"] == "bytes" and int(full.headers["content-length"]) == size
    etag = full.headers["etag"]
    head = admin.head(f"/v1/sessions/{sid}/recording.mp4")
    assert head.status_code == 200 and int(head.headers["content-length"]) == size and head.headers["etag"] == etag
    assert head.content == b""
    # ranges inside the header, across the header/fragment and fragment/fragment borders, the tail
    moov_end = full.content.index(b"sidx") - 4
    for start, end in (
        (0, 7),
        (moov_end - 3, moov_end + 100),
        (size // 2, size // 2 + 5000),
        (size - 10, size - 1),
        (1, size - 2),
    ):
        r = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": f"bytes={start}-{end}"})
        assert r.status_code == 206 and r.content == full.content[start : end + 1], (start, end)
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
    suffix = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == full.content[-100:]
    bad = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": f"bytes={size}-"})
    assert bad.status_code == 416 and bad.json()["error"] == "range_not_satisfiable"
    # an If-Range naming another version gets the whole (current) file, not a piece of it
    other = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert other.status_code == 200 and other.content == full.content
    # the file is a playable MP4 with the session's duration and every frame
    (tmp_path / "r.mp4").write_bytes(full.content)
    with av.open(str(tmp_path / "r.mp4")) as c:
        assert abs(c.duration / 1e6 - sealed["duration_ms"] / 1000) < 0.2
    assert len(decode(tmp_path / "r.mp4")) == round(sealed["duration_ms"] / 1000 * 15)


def test_mp4_plan_that_is_tampered_with_cannot_change_the_export(platform, admin, sealed):
    """The per-chunk MP4 plans are sealed under the session's data key: flipping a byte or copying
    another chunk's plan over it only makes storage plan that chunk again; the bytes stay right."""
    sid = sealed["id"]
    good = admin.get(f"/v1/sessions/{sid}/recording.mp4").content
    plans = platform.data_dir / "chunks" / sid / "mp4"
    damaged = bytearray((plans / "00000001.plan").read_bytes())
    damaged[-5] ^= 0x40
    (plans / "00000001.plan").write_bytes(bytes(damaged))
    (plans / "00000002.plan").write_bytes((plans / "00000000.plan").read_bytes())
    assert admin.get(f"/v1/sessions/{sid}/recording.mp4").content == good
    assert (plans / "00000001.plan").read_bytes() != bytes(damaged)
    assert (plans / "00000002.plan").read_bytes() != (plans / "00000000.plan").read_bytes()


def test_hls_playlist_of_a_sealed_session(admin, sealed):
    sid = sealed["id"]
    text = admin.get(f"/v1/sessions/{sid}/live.m3u8").text
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:VOD" in lines and lines[-1] == "#EXT-X-ENDLIST"
    uris = [line for line in lines if line.startswith("media/")]
    assert len(uris) == sealed["chunk_count"]
    total = sum(float(line.split(":")[1].rstrip(",")) for line in lines if line.startswith("#EXTINF"))
    assert abs(total - sealed["duration_ms"] / 1000) < 0.01
    with httpx.Client(base_url=str(admin.base_url), timeout=30) as anonymous:  # the token is the only credential
        r = anonymous.get(f"/v1/sessions/{sid}/{uris[0]}")
        assert r.status_code == 200 and r.content[0] == 0x47
        part = anonymous.get(f"/v1/sessions/{sid}/{uris[0]}", headers={"Range": "bytes=188-375"})
        assert part.status_code == 206 and part.content == r.content[188:376]


def test_signed_links_expire_are_bound_to_a_session_and_die_with_their_key(platform, admin, sealed):
    sid = sealed["id"]
    key = admin.post("/v1/api-keys", json={"name": "link maker", "role": "viewer"}).json()
    with client_for(platform, key["key"]) as viewer:
        links = viewer.post(f"/v1/sessions/{sid}/links").json()
    with httpx.Client(base_url=str(admin.base_url), timeout=30) as anonymous:
        assert anonymous.get(links["hls"]).status_code == 200
        assert anonymous.get(f"/v1/sessions/{sid}/live.m3u8").status_code == 401
        other = create(admin, "other")
        assert anonymous.get(f"/v1/sessions/{other}/live.m3u8?token={links['token']}").status_code == 401
        forged = links["token"][:-2] + ("AA" if not links["token"].endswith("AA") else "BB")
        assert anonymous.get(f"/v1/sessions/{sid}/live.m3u8?token={forged}").status_code == 401
        assert (
            anonymous.get(f"/v1/sessions/{sid}/chunks/0?token={links['token']}").status_code == 401
        )  # API needs a key
        admin.delete(f"/v1/api-keys/{key['id']}")
        r = anonymous.get(links["hls"])
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_live_playlist_grows_and_ends_when_sealed(admin):
    sid = create(admin, "live", fps=10, chunk_seconds=1)
    admin.post(f"/v1/sessions/{sid}/start")
    try:
        deadline = time.monotonic() + 60
        while True:
            text = admin.get(f"/v1/sessions/{sid}/live.m3u8").text
            if text.count("#EXTINF") >= 1:
                break
            assert time.monotonic() < deadline, "no chunk became playable while recording"
            time.sleep(0.5)
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
        assert admin.get(f"/v1/sessions/{sid}").json()["state"] == "recording"
    finally:
        admin.post(f"/v1/sessions/{sid}/stop")
    wait_state(admin, sid, {"sealed"})
    final = admin.get(f"/v1/sessions/{sid}/live.m3u8").text
    assert final.rstrip().endswith("#EXT-X-ENDLIST") and final.count("#EXTINF") > text.count("#EXTINF") - 1


def test_damaged_chunk_is_an_error_never_corrupt_video(platform, admin):
    s = record(admin, seconds=4, name="to damage", chunk_seconds=1)
    sid, store = s["id"], Path(platform.data_dir) / "chunks" / s["id"] / "chunks"

    def flip(seq: int) -> bytes:
        path = store / f"{seq:08d}.luce"
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[-40] ^= 0x01
        path.write_bytes(bytes(damaged))
        return original

    first = flip(0)
    for path in (
        f"/v1/sessions/{sid}/chunks/0",
        f"/v1/sessions/{sid}/recording.ts",
        f"/v1/sessions/{sid}/recording.mp4",
    ):
        r = admin.get(path)
        assert r.status_code == 409 and r.json()["error"] == "chunk_damaged", (path, r.text[:200])
    (store / f"{0:08d}.luce").write_bytes(first)
    flip(s["chunk_count"] - 1)  # damage the last: the stream is cut before it, never sent
    total = sum(c["size"] for c in admin.get(f"/v1/sessions/{sid}/chunks").json()["items"])
    try:
        received = len(admin.get(f"/v1/sessions/{sid}/recording.ts").content)
    except httpx.HTTPError:
        received = None  # the connection was cut mid-stream
    assert received is None or received < total
    assert admin.post(f"/v1/sessions/{sid}/verify").json()["status"] == "failed"


def test_verify_is_pending_before_the_seal_and_recorded_by_storage_after(admin, sealed):
    """A session not sealed yet is `pending` (never stored as failed, so nothing red outlives the
    seal); a sealed session's outcome is recorded with the pipeline by the storage service itself,
    and the gateway relays its report."""
    sid = create(admin, "not sealed yet")
    r = admin.post(f"/v1/sessions/{sid}/verify")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "pending" and not report["ok"] and report["problems"] == [], report
    assert "created" in report["checks"][0]["detail"] and "not sealed" in report["checks"][0]["detail"]
    assert admin.get(f"/v1/sessions/{sid}").json()["verification"] is None  # nothing recorded
    relayed = admin.post(f"/v1/sessions/{sealed['id']}/verify").json()
    assert relayed["status"] == "verified" and {c["name"] for c in relayed["checks"]} >= {"checkpoints", "signature"}
    stored = admin.get(f"/v1/sessions/{sealed['id']}").json()["verification"]
    assert stored["status"] == "verified" and stored["problems"] == 0 and stored["at"] >= sealed["sealed_at"][:19]


def test_session_list_pages_past_200(admin):
    """The list pages by limit/offset (the viewer's Newer/Older buttons): 205 sessions under one
    label come back exactly once each over pages of 50, newest first; bad paging is a 422."""
    tag = uuid.uuid4().hex[:12]
    made = [create(admin, f"page {i}", labels={"paging": tag}) for i in range(205)]
    seen, offset = [], 0
    while True:
        r = admin.get("/v1/sessions", params={"label": f"paging={tag}", "limit": 50, "offset": offset})
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == 205 and page["offset"] == offset and page["limit"] == 50
        if not page["items"]:
            break
        seen += [s["id"] for s in page["items"]]
        offset += len(page["items"])
    assert len(seen) == len(set(seen)) == 205 and set(seen) == set(made)
    assert seen[0] == made[-1] and seen[-1] == made[0]  # newest first
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"offset": 2**63}):
        r = admin.get("/v1/sessions", params=bad)
        assert r.status_code == 422 and r.json()["error"], (bad, r.text[:200])
    js = admin.get("/viewer/app.js").text
    assert "limit=200" not in js and "&offset=${state.offset}" in js  # the viewer pages, no fixed cap


ROLE_MATRIX = [  # (method, path template, minimum role)
    ("GET", "/v1/sessions", "viewer"),
    ("GET", "/v1/sessions/{sid}", "viewer"),
    ("GET", "/v1/sessions/{sid}/events", "viewer"),
    ("GET", "/v1/sessions/{sid}/chunks", "viewer"),
    ("GET", "/v1/sessions/{sid}/manifest", "viewer"),
    ("GET", "/v1/sessions/{sid}/checkpoints", "viewer"),
    ("GET", "/v1/sessions/{sid}/recording.mp4", "viewer"),
    ("GET", "/v1/sessions/{sid}/live.m3u8", "viewer"),
    ("POST", "/v1/sessions/{sid}/links", "viewer"),
    ("POST", "/v1/sessions/{sid}/verify", "viewer"),
    ("POST", "/v1/sessions", "operator"),
    ("POST", "/v1/sessions/{fresh}/start", "operator"),
    ("DELETE", "/v1/sessions/{fresh}", "admin"),
    ("GET", "/v1/api-keys", "admin"),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_role_matrix(platform, admin, keys_by_role, sealed, role):
    key = keys_by_role.get(role) or "test-admin-key-0123456789abcdef"
    with client_for(platform, key) as c:
        for method, template, needed in ROLE_MATRIX:
            fresh = create(admin, "matrix")
            path = template.format(sid=sealed["id"], fresh=fresh)
            r = c.request(
                method, path, json={"name": "matrix"} if method == "POST" and path == "/v1/sessions" else None
            )
            if RANK[role] >= RANK[needed]:
                assert r.status_code < 400, (role, method, path, r.text[:200])
            else:
                assert r.status_code == 403 and r.json()["error"] == "forbidden", (role, method, path, r.text[:200])
            if path.endswith("/start") and r.status_code < 400:
                admin.post(f"/v1/sessions/{fresh}/stop")


def test_viewer_page_plays_and_seeks_in_chromium(platform, sealed, artifacts):
    if not chromium():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/test installs it")
        pytest.skip("chromium not installed")
    browser = Browser(free_port())
    try:
        base = platform.url("api")
        browser.goto(f"{base}/viewer/")
        browser.js("sessionStorage.setItem('lucid-key', 'test-admin-key-0123456789abcdef'); location.reload()")
        browser.wait_for("document.readyState === 'complete'")
        sid = sealed["id"]
        # the list pages (other tests made hundreds of sessions): page Older until the row shows,
        # one click per page shown
        browser.wait_for(
            f"""(() => {{
                if (document.querySelector('tr[data-session-id="{sid}"]')) return true;
                const info = document.querySelector('#page-info'), older = document.querySelector('#older');
                if (!info || !older || !info.textContent) return false;  // (re)loading
                if (window.__paged !== info.textContent && !older.disabled) {{
                    window.__paged = info.textContent;
                    older.click();
                }}
                return false;
            }})()""",
            timeout=120,
        )
        row = browser.js(f"document.querySelector('tr[data-session-id=\"{sid}\"]').innerText")
        assert "viewer demo" in row and "sealed" in row
        browser.js(f"document.querySelector('tr[data-session-id=\"{sid}\"]').click()")
        expected = sealed["duration_ms"] / 1000
        duration = browser.wait_for(
            "(v => v.readyState >= 1 && isFinite(v.duration) && v.duration)(document.querySelector('#video'))"
        )
        assert abs(duration - expected) < 0.5, (duration, expected)
        browser.js("document.querySelector('#video').play()")
        browser.wait_for("document.querySelector('#video').currentTime > 0.5", timeout=30)
        target = round(expected * 0.7, 2)
        browser.js(f"""new Promise(done => {{ const v = document.querySelector('#video');
            v.addEventListener('seeked', () => done(true), {{once: true}}); v.currentTime = {target}; }})""")
        now = browser.js("document.querySelector('#video').currentTime")
        assert abs(now - target) < 1.0, (now, target)
        browser.wait_for("document.querySelector('#verify-status').dataset.status === 'verified'")
        assert browser.js("document.querySelector('#events tbody').rows.length") >= 5
        assert "lucid-manifest/1" in browser.js("document.querySelector('#manifest').textContent")
        href = browser.js("document.querySelector('#mp4').getAttribute('href')")
        assert "token=" in href and "test-admin-key" not in href
        browser.screenshot(artifacts / "viewer.png")
        # the MP4 download itself, opened by a bare <video>: its duration is known before it is
        # fetched, and a seek near the end plays from there (the browser fetches that range only)
        browser.js(f"""(() => {{ const v = document.createElement('video'); v.id = 'mp4video'; v.muted = true;
            v.preload = 'metadata'; v.src = {href!r}; document.body.appendChild(v); }})()""")
        duration = browser.wait_for(
            "(v => v.readyState >= 1 && isFinite(v.duration) && v.duration)(document.querySelector('#mp4video'))"
        )
        assert abs(duration - expected) < 0.5, (duration, expected)
        target = round(expected * 0.8, 2)
        browser.js(f"""new Promise(done => {{ const v = document.querySelector('#mp4video');
            v.addEventListener('seeked', () => done(true), {{once: true}}); v.currentTime = {target}; }})""")
        browser.js("document.querySelector('#mp4video').play()")
        browser.wait_for(f"document.querySelector('#mp4video').currentTime > {target + 0.3}", timeout=30)
    finally:
        browser.close()
