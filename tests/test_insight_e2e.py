"""Issue 15 end to end on the real embedded platform (services, Dagster daemon): pushed screen-work
chunks are followed live by the insight sensor and become searchable through the gateway (every
search logged); text, activity, seek previews and markers through /v1; a changed derivation is
re-derived by a backfill the schedule launches on its tick; a shredded session is found no more."""

from __future__ import annotations

import hashlib
import time

import dagster as dg
import httpx
import numpy as np
import pytest
from PIL import Image

from lucid_assets.core.states import Insight
from lucid_assets.insight import derive, ocr, records
from lucid_assets.insight.session import open_index
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from services.launcher import SERVICES, Platform
from tests import screenwork
from tests.browser import Browser, chromium
from tests.conftest import free_port
from tests.helpers import create, wait_state

KEY = "insight-admin-key-0123456789abcdef"
SCRIPT = [
    screenwork.Step("type", text="ops@web01:~$ ssh db07.prod.example.com"),
    screenwork.Step("print", lines=["customer CUST-48213 invoice overdue", "kernel module loaded"]),
    screenwork.Step("idle", seconds=6),
    screenwork.Step("type", text="ops@db07:~$ systemctl restart pipeline"),
    screenwork.Step("idle", seconds=3),
]


@pytest.fixture(scope="module")
def plat(tmp_path_factory):
    data = tmp_path_factory.mktemp("insight-platform")
    p = Platform(
        data_dir=data,
        ports={n: free_port() for n in SERVICES},
        webserver=False,
        extra_env={
            "LUCID_API_KEY": KEY,
            "LUCID_INSIGHT_INTERVAL_SECONDS": "5",
            "LUCID_INSIGHT_BACKFILL_CRON": "* * * * *",
        },
    )
    try:
        p.start(timeout=180)
    except Exception:
        p.stop()
        raise
    with httpx.Client(base_url=p.url("api"), timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as admin:
        yield p, admin
    p.stop()


def push(admin: httpx.Client, sid: str, segs) -> None:
    for s in segs:
        data = s.path.read_bytes()
        headers = {"X-Content-SHA256": hashlib.sha256(data).hexdigest(), "X-Chunk-Duration-Ms": str(s.duration_ms)}
        assert admin.put(f"/v1/sessions/{sid}/chunks/{s.seq}", content=data, headers=headers).status_code == 201


def wait_for(fn, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := fn():
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def live(plat, tmp_path_factory):
    p, admin = plat
    segs, truth = screenwork.record(tmp_path_factory.mktemp("rec"), SCRIPT, size=(640, 360), fps=5, chunk_seconds=4)
    sid = create(admin, "screen work", source={"kind": "push"}, width=640, height=360, fps=5, chunk_seconds=4)
    assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
    push(admin, sid, segs[:3])  # while it records
    found = wait_for(lambda: admin.get("/v1/search", params={"q": "db07"}).json()["items"], 300, "live search hit")
    return p, admin, sid, segs, truth, found


def test_live_session_is_searchable_while_it_records(live):
    p, admin, sid, segs, truth, found = live
    assert admin.get(f"/v1/sessions/{sid}").json()["state"] == "recording"
    hit = found[0]
    assert hit["session_id"] == sid and "db07" in hit["text"] and hit["session_name"] == "screen work"
    assert hit["play"] == f"/viewer/#{sid}?t={hit['t_ms'] / 1000:.1f}"
    thumb = admin.get(hit["thumbnail"])
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    # the rest is pushed, the session ends and seals; its insight completes
    push(admin, sid, segs[3:])
    admin.post(f"/v1/sessions/{sid}/stop")
    assert wait_state(admin, sid, {"sealed", "failed"})["state"] == "sealed"
    wait_for(
        lambda: admin.get(f"/v1/sessions/{sid}/text").json()["chunks_derived"] == len(segs), 300, "every chunk's text"
    )
    hits = admin.get("/v1/search", params={"q": '"restart pipeline"'}).json()["items"]
    assert [h["session_id"] for h in hits] == [sid]


def test_text_activity_previews_and_markers(live):
    p, admin, sid, segs, truth, _ = live
    wait_for(lambda: admin.get(f"/v1/sessions/{sid}/text").json()["chunks_derived"] == len(segs), 300, "derivation")
    lines = admin.get(f"/v1/sessions/{sid}/text").json()["items"]
    cust = next(ln for ln in lines if "CUST-48213" in ln["text"])
    assert cust["box"][2] > 100 and cust["words"] and 0 < cust["conf"] <= 1
    later = admin.get(f"/v1/sessions/{sid}/text", params={"from": cust["t_ms"] + 1}).json()["items"]
    assert all(ln["t_ms"] > cust["t_ms"] for ln in later) and not any("CUST" in ln["text"] for ln in later)
    act = admin.get(f"/v1/sessions/{sid}/activity", params={"idle_seconds": 4}).json()
    assert len(act["seconds"]) >= int(truth.duration) - 1 and any(e - s >= 4000 for s, e in act["idle"])
    vtt = admin.get(f"/v1/sessions/{sid}/thumbnails.vtt")
    assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.count("-->") >= int(truth.duration) // 5
    assert "thumbnails/0.jpg#xywh=0,0,160,90" in vtt.text
    sheet = admin.get(f"/v1/sessions/{sid}/thumbnails/0.jpg")
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/jpeg"
    assert admin.get(f"/v1/sessions/{sid}/thumbnails/9.jpg").status_code == 404
    # markers: audited with the key that made them, listed by time
    m = admin.post(f"/v1/sessions/{sid}/markers", json={"t_ms": 4200, "note": "customer id shown"})
    assert m.status_code == 201 and m.json()["actor"].startswith("key:")
    admin.post(f"/v1/sessions/{sid}/markers", json={"t_ms": 1000, "note": "login"})
    assert [x["note"] for x in admin.get(f"/v1/sessions/{sid}/markers").json()["items"]] == [
        "login",
        "customer id shown",
    ]
    events = admin.get(f"/v1/sessions/{sid}/events").json()["items"]
    assert [e["entry"]["detail"]["t_ms"] for e in events if e["entry"]["event"] == "marker"] == [4200, 1000]
    bad = admin.post(f"/v1/sessions/{sid}/markers", json={"t_ms": -1})
    assert bad.status_code == 422


def test_search_roles_errors_filters_and_log(live):
    p, admin, sid, *_ = live
    viewer = admin.post("/v1/api-keys", json={"name": "searcher", "role": "viewer"}).json()
    with httpx.Client(base_url=p.url("api"), timeout=60, headers={"Authorization": f"Bearer {viewer['key']}"}) as v:
        assert v.get("/v1/search", params={"q": "invoice"}).json()["items"]
        assert v.get("/v1/search", params={"q": "CUST-48213", "label": "team=none"}).json()["items"] == []
        assert v.get("/v1/search/log").status_code == 403  # the log is for admins
        assert v.post(f"/v1/sessions/{sid}/markers", json={"t_ms": 1}).status_code == 403
        for q, code in (("ab*", "bad_query"), ("", None)):
            r = v.get("/v1/search", params={"q": q})
            assert r.status_code == 422 and (code is None or r.json()["error"] == code), r.text
        bad = v.get("/v1/search", params={"q": "x", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
        assert bad.status_code == 422 and bad.json()["error"] == "bad_window"
        assert v.get("/v1/search", params={"q": "invoice", "from": "2000-01-01T00:00:00Z"}).json()["items"]
        assert v.get("/v1/search", params={"q": "invoice", "to": "2000-01-01T00:00:00Z"}).json()["items"] == []
        assert v.get("/v1/search", params={"q": "invoice", "from": "1.5e9"}).status_code == 422  # not a number
    log = admin.get("/v1/search/log", params={"actor": f"key:{viewer['id']}"}).json()["items"]
    assert [e["query"] for e in log][::-1][:2] == ["invoice", "CUST-48213"]
    assert log[-2]["filters"]["label"] == ["team=none"] and log[-1]["role"] == "viewer"
    assert "hits" not in log[-1]  # what was found is not logged: that a word was on a screen is screen content


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_viewer_search_hit_opens_the_frame_with_that_text(live, artifacts):
    p, admin, sid, segs, *_ = live
    wait_for(lambda: admin.get(f"/v1/sessions/{sid}/text").json()["chunks_derived"] == len(segs), 300, "derivation")
    browser = Browser(free_port())
    try:
        browser.goto(f"{p.url('api')}/viewer/")
        browser.js(f"sessionStorage.setItem('lucid-key', '{KEY}'); location.reload()")
        browser.wait_for("document.readyState === 'complete' && !document.querySelector('#list').hidden")
        browser.js(
            "document.querySelector('#search-q').value = 'CUST-48213';"
            "document.querySelector('#search-form').requestSubmit()"
        )
        browser.wait_for("document.querySelectorAll('#search-results .hit img[src]').length > 0")
        hit = browser.js(
            "(h => ({t: +h.dataset.t, text: h.innerText}))(document.querySelector('#search-results .hit'))"
        )
        assert "CUST-48213" in hit["text"] and browser.js("document.querySelector('.hit mark').textContent") == "CUST"
        browser.screenshot(artifacts / "insight-search.png")
        browser.js("document.querySelector('#search-results .hit').click()")
        # the player opens at that second, paused on the frame that showed the text
        at = browser.wait_for(
            "(v => v.readyState >= 2 && !v.seeking && v.currentTime > 0 && v.currentTime)"
            "(document.querySelector('#video'))"
        )
        assert abs(at - hit["t"] / 1000) < 1.0, (at, hit)
        browser.wait_for("!document.querySelector('#timeline').hidden")
        time.sleep(0.5)  # the frame is painted
        browser.screenshot(artifacts / "insight-hit.png")
        rect = browser.js(
            "(r => [r.x, r.y, r.width, r.height])(document.querySelector('#video').getBoundingClientRect())"
        )
        shot = np.asarray(Image.open(artifacts / "insight-hit.png").convert("RGB"))
        x, y, w, h = (round(v) for v in rect)
        seen = " ".join(line.text for line in ocr.Reader().read(shot[y : y + h, x : x + w].copy()))
        assert "CUST-48213" in seen, seen  # read back off the screen, with our own OCR
        # a seek preview from the sprite sheet, speed, and a marker from the page
        browser.js(
            "(c => { const r = c.getBoundingClientRect();"
            " c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + r.width * 0.1, clientY: r.top + 5})); })"
            "(document.querySelector('#activity'))"
        )
        browser.wait_for("document.querySelector('#preview-img').style.backgroundImage.startsWith('url(\"blob:')")
        browser.js("(s => { s.value = '2'; s.dispatchEvent(new Event('change')); })(document.querySelector('#speed'))")
        assert browser.js("document.querySelector('#video').playbackRate") == 2
        before = browser.js("document.querySelectorAll('#markers li').length")
        browser.js(
            "document.querySelector('#marker-note').value = 'seen in search';"
            "document.querySelector('#marker-form').requestSubmit()"
        )
        browser.wait_for(f"document.querySelectorAll('#markers li').length === {before + 1}")
        notes = [m["note"] for m in admin.get(f"/v1/sessions/{sid}/markers").json()["items"]]
        assert "seen in search" in notes
        # skip idle: playing into the long idle stretch jumps to its end
        idle = max(admin.get(f"/v1/sessions/{sid}/activity").json()["idle"], key=lambda s: s[1] - s[0])
        assert idle[1] - idle[0] >= 4000
        browser.js(
            "(v => { document.querySelector('#skip-idle').checked = true; v.playbackRate = 1;"
            f" v.currentTime = {(idle[0] + 200) / 1000}; return v.play(); }})(document.querySelector('#video'))"
        )
        browser.wait_for(f"document.querySelector('#video').currentTime >= {idle[1] / 1000 - 0.3}", timeout=3)
    finally:
        browser.close()


def test_schedule_tick_backfills_a_changed_derivation(live):
    p, admin, sid, segs, *_ = live
    wait_for(lambda: admin.get(f"/v1/sessions/{sid}/text").json()["chunks_derived"] == len(segs), 300, "derivation")
    store = ChunkStore.from_settings(Settings(data_dir=p.data_dir))
    recs = records.Records(store, sid)
    for path in recs.dir(Insight.TEXT).glob("*.bin"):  # as if an older OCR model had made them
        path.rename(recs.path(Insight.TEXT, int(path.name.split(".")[0]), "text/0/an-older-model"))
    # until the backfill replaces them, the older records are what readers see: search still finds
    assert admin.get(f"/v1/sessions/{sid}/text").json()["chunks_derived"] == len(segs)
    assert admin.get("/v1/search", params={"q": "CUST-48213"}).json()["items"]
    wait_for(lambda: recs.current(Insight.TEXT, derive.TEXT_VERSION) == set(range(len(segs))), 200, "the backfill")
    with dg.DagsterInstance.from_config(str(p.dagster_home)) as instance:
        mine = [b for b in instance.get_backfills() if b.tags.get("lucid/insight") == "backfill"]
        assert mine and mine[0].title == "insight: re-derive 1 sessions"
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": mine[0].backfill_id}))
        assert runs and all(r.tags.get("lucid/insight") == "backfill" for r in runs)
        assert all(r.tags.get("dagster/priority") == "-1" for r in runs)
    assert admin.get("/v1/search", params={"q": "CUST-48213"}).json()["items"]


def test_shredded_session_is_found_no_more(live):
    p, admin, sid, *_ = live
    assert admin.get("/v1/search", params={"q": "db07"}).json()["items"]
    assert admin.delete(f"/v1/sessions/{sid}").status_code == 200
    for q in ("db07", "CUST-48213", "cust*", '"restart pipeline"'):
        assert admin.get("/v1/search", params={"q": q}).json()["items"] == [], q
    assert admin.get(f"/v1/sessions/{sid}/text").status_code == 410
    store = ChunkStore.from_settings(Settings(data_dir=p.data_dir))
    assert not (store.session_dir(sid) / "derived").exists()
    assert sid not in open_index(store).sessions()  # the storage dropped its index rows
