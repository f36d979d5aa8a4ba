"""The viewer's share mode in headless Chromium: a share link plays its session (or its window) in a
fresh browser with no API key anywhere, shows what the share may show and nothing else, and stops
when the share is revoked; the operator's Share… control makes and revokes links."""

import os

import pytest

from tests.browser import Browser, chromium
from tests.conftest import free_port
from tests.helpers import record

pytestmark = pytest.mark.e2e

# Injected before any page script (CDP scripts are not subject to the page's CSP): records CSP
# violations and uncaught errors, so a test can assert the viewer ran cleanly under the policy.
WATCH = """window.__problems = [];
document.addEventListener('securitypolicyviolation',
    e => __problems.push(`csp ${e.violatedDirective} ${e.blockedURI}`));
window.addEventListener('error', e => __problems.push(`error ${e.message}`));
window.addEventListener('unhandledrejection', e => __problems.push(`rejection ${e.reason}`));"""

VISIBLE = "(el => !!el && el.offsetParent !== null)(document.querySelector({sel!r}))"
VIDEO = "document.querySelector('#shared-video')"


@pytest.fixture(scope="module")
def recorded(admin):
    s = record(admin, seconds=8, name="share demo", width=320, height=240, fps=15, chunk_seconds=2)
    assert admin.post(f"/v1/sessions/{s['id']}/verify").json()["status"] == "verified"
    return s


@pytest.fixture
def browser():
    if not chromium():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/test installs it")
        pytest.skip("chromium not installed")
    b = Browser(free_port())  # a fresh profile: no key in any storage
    try:
        b.send("Page.enable")  # (addScriptToEvaluateOnNewDocument does nothing without it)
        b.send("Page.addScriptToEvaluateOnNewDocument", source=WATCH)
        yield b
    finally:
        b.close()


def visible(browser, sel: str) -> bool:
    return browser.js(VISIBLE.format(sel=sel))


def make_share(admin, sid, **body) -> dict:
    r = admin.post(f"/v1/sessions/{sid}/shares", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_playing(browser) -> float:
    """Waits until the shared video has its duration, plays it past 1 s; returns the duration."""
    duration = browser.wait_for(f"(v => v.readyState >= 1 && isFinite(v.duration) && v.duration)({VIDEO})")
    browser.js(f"{VIDEO}.play()")
    browser.wait_for(f"{VIDEO}.currentTime > 1", timeout=30)
    assert browser.js(f"{VIDEO}.error") is None
    return duration


def test_share_link_plays_without_a_key_and_stops_when_revoked(platform, admin, recorded, browser, artifacts):
    sid = recorded["id"]
    share = make_share(admin, sid, may_download=True, note="external auditor")
    assert share["url"] == f"/viewer/#share={share['token']}"
    url = platform.url("api") + share["url"]
    browser.goto(url)
    duration = wait_playing(browser)
    assert abs(duration - recorded["duration_ms"] / 1000) < 0.5, (duration, recorded["duration_ms"])
    # what a share shows: the session, its verification, the manifest's facts, checkpoints, evidence
    assert browser.js("document.querySelector('#shared-title').textContent") == "share demo"
    browser.wait_for("document.querySelector('#shared-manifest').textContent.includes('merkle root')")
    manifest = admin.get(f"/v1/sessions/{sid}/manifest").json()
    shown = browser.js("document.querySelector('#shared').innerText")
    assert manifest["body"]["merkle"]["root"] in shown and manifest["signature"]["key_id"] in shown
    assert "external auditor" in shown and sid in shown
    assert browser.js("document.querySelector('#shared-verification').dataset.status") == "verified"
    assert browser.js("document.querySelector('#shared-checkpoints tbody').rows.length") >= 1
    assert visible(browser, "#shared-evidence") and visible(browser, "#shared-mp4")
    evidence = browser.js("document.querySelector('#shared-evidence').getAttribute('href')")
    assert evidence.startswith(f"/v1/sessions/{sid}/evidence?token=")
    # and nothing else: no key prompt, no session list, no operator controls, no key stored
    for sel in ("#signin", "#key", "#list", "#session", "#signout", "#share-toggle"):
        assert not visible(browser, sel), sel
    assert browser.js("document.querySelectorAll('tr[data-session-id]').length") == 0
    assert "API key" not in browser.js("document.body.innerText")
    assert browser.js("sessionStorage.length + localStorage.length") == 0
    # the share token went in Authorization headers only, never in a URL the browser fetched
    fetched = browser.js("performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/live.m3u8?token=" in u for u in fetched) and any("/media/" in u for u in fetched)
    assert not any(share["token"] in u for u in fetched)
    assert browser.js("window.__problems") == []  # no CSP violation, no uncaught error
    browser.screenshot(artifacts / "share-viewer.png")

    r = admin.delete(f"/v1/sessions/{sid}/shares/{share['id']}")
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    # the open page learns it at its next link refresh: the message, and the player stops
    browser.js("refreshShareLinks().catch(shareFail)")
    browser.wait_for(VISIBLE.format(sel="#shared-invalid"))
    assert not visible(browser, "#shared")
    assert browser.js(f"{VIDEO}.paused && {VIDEO}.readyState === 0")
    # reloaded, the revoked link shows only the message and never plays
    browser.goto("about:blank")
    browser.goto(url)
    browser.wait_for(VISIBLE.format(sel="#shared-invalid"))
    text = browser.js("document.querySelector('#shared-invalid').innerText")
    assert "invalid, expired or revoked" in text
    assert not visible(browser, "#shared") and not visible(browser, "#signin") and not visible(browser, "#list")
    assert browser.js(f"{VIDEO}.readyState === 0 && {VIDEO}.currentTime === 0 && !{VIDEO}.src")
    assert "share demo" not in browser.js("document.body.innerText")
    assert browser.js("window.__problems") == []
    browser.screenshot(artifacts / "share-viewer-revoked.png")


def test_windowed_share_plays_only_its_window(platform, admin, recorded, browser):
    sid = recorded["id"]
    chunks = admin.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    assert len(chunks) >= 3
    first = chunks[0]["duration_ms"]
    # a window inside the second chunk: that chunk alone is shared
    share = make_share(admin, sid, window={"from_ms": first + 100, "to_ms": first + 200})
    browser.goto(platform.url("api") + share["url"])
    duration = wait_playing(browser)
    whole = recorded["duration_ms"] / 1000
    assert duration < whole - 1, (duration, whole)
    assert abs(duration - chunks[1]["duration_ms"] / 1000) < 0.5, (duration, chunks[1])
    playlist = browser.js(
        "performance.getEntriesByType('resource').map(e => e.name).filter(u => u.includes('/media/'))"
    )
    assert playlist and all("/media/1.ts?" in u for u in playlist), playlist
    # may_download is false: no evidence bundle, no MP4
    assert not visible(browser, "#shared-evidence") and not visible(browser, "#shared-mp4")
    assert browser.js("window.__problems") == []
    # revoked while open: the player's next media request is refused, a fatal hls.js error, and the
    # page stops the player with the same message
    assert admin.delete(f"/v1/sessions/{sid}/shares/{share['id']}").status_code == 200
    browser.js("state.hls.loadSource(state.hls.url)")
    browser.wait_for(VISIBLE.format(sel="#shared-invalid"))
    assert not visible(browser, "#shared") and not visible(browser, "#error")
    assert browser.js(f"{VIDEO}.paused && {VIDEO}.readyState === 0")


def test_operator_makes_and_revokes_a_share_in_the_viewer(platform, admin, keys_by_role, recorded, browser, artifacts):
    sid = recorded["id"]
    browser.goto(f"{platform.url('api')}/viewer/")
    browser.js("sessionStorage.setItem('lucid-key', 'test-admin-key-0123456789abcdef')")
    browser.goto("about:blank")  # the tab keeps its sessionStorage
    browser.goto(f"{platform.url('api')}/viewer/#{sid}")
    browser.wait_for(VISIBLE.format(sel="#share-toggle"))
    browser.js("document.querySelector('#share-toggle').click()")
    browser.wait_for(VISIBLE.format(sel="#share-form"))
    browser.js("""(() => { document.querySelector('#share-days').value = '2';
        document.querySelector('#share-from').value = '1'; document.querySelector('#share-to').value = '3';
        document.querySelector('#share-note').value = 'made in the viewer';
        document.querySelector('#share-form').requestSubmit(); })()""")
    link = browser.wait_for("document.querySelector('#share-url').value")
    assert link.startswith(f"{platform.url('api')}/viewer/#share=lucid_share_"), link
    made = next(s for s in admin.get(f"/v1/sessions/{sid}/shares").json()["items"] if s["note"] == "made in the viewer")
    assert made["window"] == {"from_ms": 1000, "to_ms": 3000} and made["status"] == "active"
    assert not made["may_download"]
    row = f"document.querySelector('tr[data-share-id=\"{made['id']}\"]')"
    browser.wait_for(f"!!{row}")
    browser.js("document.querySelector('#share-panel').scrollIntoView()")
    browser.screenshot(artifacts / "share-operator.png")
    browser.js(f"{row}.querySelector('button').click()")
    browser.wait_for(f"{row} && {row}.innerText.includes('revoked')")
    again = next(s for s in admin.get(f"/v1/sessions/{sid}/shares").json()["items"] if s["id"] == made["id"])
    assert again["status"] == "revoked"
    # the link is shown once: closing and opening the panel again does not show it
    browser.js("document.querySelector('#share-toggle').click()")
    browser.js("document.querySelector('#share-toggle').click()")
    assert not visible(browser, "#share-made") and browser.js("document.querySelector('#share-url').value") == ""
    assert browser.js("window.__problems") == []
    # a viewer key cannot share: the panel says so and offers no form
    browser.js(f"sessionStorage.setItem('lucid-key', {keys_by_role['viewer']!r})")
    browser.goto("about:blank")
    browser.goto(f"{platform.url('api')}/viewer/#{sid}")
    browser.wait_for(VISIBLE.format(sel="#share-toggle"))
    browser.js("document.querySelector('#share-toggle').click()")
    browser.wait_for(VISIBLE.format(sel="#share-denied"))
    assert not visible(browser, "#share-form") and not visible(browser, "#shares")
    assert browser.js("window.__problems") == []
