"""Share links (issue 16) on the real platform: made by an operator, shown once, played with no API
key, limited to their window and to downloads when allowed, cut mid-use by revocation, expiry,
their key's revocation and the session's deletion, surviving a KEK rotation, audited, and refused by
every route of the gateway but their own."""

import json
import tarfile
import time
from io import BytesIO

import av
import httpx
import pytest

from lucid_assets.keyring import rotate_kek
from lucid_assets.settings import Settings
from tests.conftest import client_for
from tests.helpers import create, record

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(platform, keys_by_role):
    with client_for(platform, keys_by_role["operator"]) as c:
        yield c


@pytest.fixture(scope="module")
def sealed(admin):
    """A sealed recording of at least three 2 s chunks."""
    s = record(admin, seconds=7, name="shared recording")
    assert s["chunk_count"] >= 3, s
    chunks = admin.get(f"/v1/sessions/{s['id']}/chunks").json()["items"]
    return {**s, "chunks": chunks}


@pytest.fixture(scope="module")
def other(admin):
    return create(admin, "not shared")


def share(client, sid, **body) -> dict:
    r = client.post(f"/v1/sessions/{sid}/shares", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def holder(platform, token: str | None = None) -> httpx.Client:
    """Whoever received the link: no API key, at most the share token."""
    return client_for(platform, token)


def middle_window(chunks: list[dict], seq: int) -> dict:
    """A window strictly inside chunk `seq`: only that chunk overlaps it."""
    start = sum(c["duration_ms"] for c in chunks if c["seq"] < seq)
    return {"from_ms": start + 100, "to_ms": start + chunks[seq]["duration_ms"] - 100}


def playlist_seqs(text: str) -> list[int]:
    return [int(line.split("/")[1].split(".")[0]) for line in text.splitlines() if line.startswith("media/")]


def frames(data: bytes, fmt: str | None = None) -> int:
    with av.open(BytesIO(data), format=fmt) as c:
        return sum(1 for _ in c.decode(video=0))


def test_create_list_revoke(platform, admin, operator, keys_by_role, sealed, other):
    sid = sealed["id"]
    made = share(operator, sid, expires_in=3600, note="auditor@example.org")
    assert made["token"].startswith("lucid_share_") and made["url"] == f"/viewer/#share={made['token']}"
    assert made["status"] == "active" and made["may_download"] is False and made["window"] is None
    assert made["session_id"] == sid and made["created_by"].startswith("key:")
    default = share(operator, sid)
    assert default["may_download"] is False and default["note"] is None
    listing = operator.get(f"/v1/sessions/{sid}/shares")
    assert listing.status_code == 200
    assert made["token"] not in listing.text and default["token"] not in listing.text
    items = {s["id"]: s for s in listing.json()["items"]}
    assert {made["id"], default["id"]} <= set(items) and all("token" not in s for s in items.values())
    assert items[made["id"]] == {k: v for k, v in made.items() if k not in ("token", "url")}

    with client_for(platform, keys_by_role["viewer"]) as viewer:
        assert viewer.post(f"/v1/sessions/{sid}/shares", json={}).status_code == 403
        assert viewer.get(f"/v1/sessions/{sid}/shares").status_code == 403
        assert viewer.delete(f"/v1/sessions/{sid}/shares/{made['id']}").status_code == 403
    with holder(platform) as anyone:
        assert anyone.post(f"/v1/sessions/{sid}/shares", json={}).status_code == 401

    for body in (
        {"expires_in": 30 * 24 * 3600 + 1},  # over LUCID_SHARE_MAX_SECONDS' default
        {"expires_in": 0},
        {"window": {"from_ms": 5000, "to_ms": 5000}},
        {"window": {"from_ms": 5000, "to_ms": 1000}},
        {"window": {"from_ms": -1, "to_ms": 1000}},
        {"may_download": "yes"},
        {"note": "x" * 501},
        {"recipient": "someone"},
    ):
        r = operator.post(f"/v1/sessions/{sid}/shares", json=body)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", (body, r.text)
    assert operator.post("/v1/sessions/00000000-0000-0000-0000-000000000000/shares", json={}).status_code == 404
    assert len(operator.get(f"/v1/sessions/{sid}/shares").json()["items"]) == len(items)  # nothing written

    r = operator.delete(f"/v1/sessions/{sid}/shares/{made['id']}")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and "token" not in r.json()
    assert operator.delete(f"/v1/sessions/{sid}/shares/{made['id']}").json()["status"] == "revoked"
    assert operator.delete(f"/v1/sessions/{sid}/shares/nope").status_code == 404
    assert operator.delete(f"/v1/sessions/{other}/shares/{default['id']}").status_code == 404  # not its session
    with holder(platform, made["token"]) as c:
        r = c.get("/v1/share")
        assert r.status_code == 401 and r.json()["error"] == "share_invalid"
    with holder(platform, default["token"]) as c:
        assert c.get("/v1/share").status_code == 200


def test_a_share_plays_the_session(platform, admin, operator, sealed):
    sid = sealed["id"]
    made = share(operator, sid)
    with holder(platform, made["token"]) as c:
        view = c.get("/v1/share")
        assert view.status_code == 200, view.text
        body = view.json()
        assert body["share"]["id"] == made["id"] and body["share"]["may_download"] is False
        assert body["session"]["id"] == sid and body["session"]["state"] == "sealed"
        assert "source" not in body["session"] and "labels" not in body["session"]
        last = max(ch["seq"] for ch in sealed["chunks"])
        assert body["chunks"] == {"first_seq": 0, "last_seq": last}
        assert c.get("/v1/share/manifest").json() == admin.get(f"/v1/sessions/{sid}/manifest").json()
        assert c.get("/v1/share/checkpoints").json() == admin.get(f"/v1/sessions/{sid}/checkpoints").json()
        links = c.post("/v1/share/links").json()
        assert links["mp4"] is None and links["ts"] is None and links["evidence"] is None
        assert links["expires_at"] <= time.time() + 15 * 60 + 1
    with holder(platform) as anyone:  # the player: the link alone
        playlist = anyone.get(links["hls"])
        assert playlist.status_code == 200 and "#EXT-X-ENDLIST" in playlist.text
        assert playlist_seqs(playlist.text) == [ch["seq"] for ch in sealed["chunks"]]
        assert made["token"] not in playlist.text
        first = next(line for line in playlist.text.splitlines() if line.startswith("media/0.ts?"))
        chunk = anyone.get(f"/v1/sessions/{sid}/{first}")
        assert chunk.status_code == 200 and chunk.content == admin.get(f"/v1/sessions/{sid}/chunks/0").content
        assert frames(chunk.content, "mpegts") > 0
        for ext in ("mp4", "ts"):
            r = anyone.get(f"/v1/sessions/{sid}/recording.{ext}", params={"token": links["token"]})
            assert r.status_code == 403 and r.json()["error"] == "download_not_allowed"
        r = anyone.get(f"/v1/sessions/{sid}/evidence", params={"token": links["token"]})
        assert r.status_code == 403 and r.json()["error"] == "download_not_allowed"
        # the share token itself is no media link
        r = anyone.get(f"/v1/sessions/{sid}/live.m3u8", params={"token": made["token"]})
        assert r.status_code == 401


def test_window_limits_playback_and_downloads(platform, admin, operator, sealed):
    sid, chunks = sealed["id"], sealed["chunks"]
    w = middle_window(chunks, 1)
    narrow = share(operator, sid, window=w)
    assert narrow["window"] == w
    with holder(platform, narrow["token"]) as c:
        assert c.get("/v1/share").json()["chunks"] == {"first_seq": 1, "last_seq": 1}
        token = c.post("/v1/share/links").json()["token"]
    with holder(platform) as anyone:
        playlist = anyone.get(f"/v1/sessions/{sid}/live.m3u8", params={"token": token}).text
        assert playlist_seqs(playlist) == [1] and "#EXT-X-MEDIA-SEQUENCE:1" in playlist
        assert anyone.get(f"/v1/sessions/{sid}/media/1.ts", params={"token": token}).status_code == 200
        for seq in (0, 2):
            r = anyone.get(f"/v1/sessions/{sid}/media/{seq}.ts", params={"token": token})
            assert r.status_code == 403 and r.json()["error"] == "outside_share_window", r.text
        r = anyone.get(f"/v1/sessions/{sid}/recording.mp4", params={"token": token})
        assert r.status_code == 403 and r.json()["error"] == "download_not_allowed"

    two = {"from_ms": w["from_ms"], "to_ms": w["to_ms"] + chunks[2]["duration_ms"]}  # chunks 1 and 2
    both = share(operator, sid, window=two, may_download=True)
    with holder(platform, both["token"]) as c:
        assert c.get("/v1/share").json()["chunks"] == {"first_seq": 1, "last_seq": 2}
        links = c.post("/v1/share/links").json()
    whole_mp4 = admin.get(f"/v1/sessions/{sid}/recording.mp4")
    assert whole_mp4.status_code == 200
    with holder(platform) as anyone:
        mp4 = anyone.get(links["mp4"])
        assert mp4.status_code == 200, mp4.text
        ts = anyone.get(links["ts"])
        assert ts.status_code == 200, ts.text
        evidence = anyone.get(links["evidence"])
        assert evidence.status_code == 200, evidence.text
    want = sum(ch["frames"] for ch in chunks if ch["seq"] in (1, 2))
    assert frames(mp4.content) == want < frames(whole_mp4.content)
    assert frames(ts.content, "mpegts") == want
    assert f"lucid-evidence-{sid}-1-2.tar" in evidence.headers["content-disposition"]
    with tarfile.open(fileobj=BytesIO(evidence.content)) as tar:
        assert tar.getnames()  # a real tar


def test_revocation_and_expiry_cut_it_mid_use(platform, operator, sealed):
    sid = sealed["id"]
    made = share(operator, sid)
    with holder(platform, made["token"]) as c:
        token = c.post("/v1/share/links").json()["token"]
        with holder(platform) as player:
            assert player.get(f"/v1/sessions/{sid}/media/0.ts", params={"token": token}).status_code == 200
            assert operator.delete(f"/v1/sessions/{sid}/shares/{made['id']}").status_code == 200
            r = player.get(f"/v1/sessions/{sid}/media/1.ts", params={"token": token})
            assert r.status_code == 401 and r.json()["error"] == "share_invalid"
            assert player.get(f"/v1/sessions/{sid}/live.m3u8", params={"token": token}).status_code == 401
        assert c.get("/v1/share").status_code == 401
        assert c.post("/v1/share/links").status_code == 401

    brief = share(operator, sid, expires_in=2)
    with holder(platform, brief["token"]) as c:
        links = c.post("/v1/share/links").json()
        assert links["expires_at"] <= int(time.time()) + 3  # a media link never outlives its share
        with holder(platform) as player:
            assert player.get(f"/v1/sessions/{sid}/media/0.ts", params={"token": links["token"]}).status_code == 200
            time.sleep(3)  # past the share's expiry
            r = player.get(f"/v1/sessions/{sid}/media/1.ts", params={"token": links["token"]})
            assert r.status_code == 401
        r = c.get("/v1/share")
        assert r.status_code == 401 and r.json()["error"] == "share_invalid"
    listing = {s["id"]: s for s in operator.get(f"/v1/sessions/{sid}/shares").json()["items"]}
    assert listing[made["id"]]["status"] == "revoked" and listing[brief["id"]]["status"] == "expired"


def fill(template: str, **values) -> str:
    for k, v in values.items():
        template = template.replace("{" + k + "}", str(v))
    return template


# long: the walk's two credentials over every documented route and method, each with its own expectations
def test_a_share_reaches_nothing_but_its_own_session(platform, admin, operator, sealed, other):
    """THE ROUTE WALK: every route of the gateway's OpenAPI document, every method, with the share
    token as bearer (own and another session), and with the share's media link token as `?token=`
    (another session, and its own): only /v1/share and the own session's playback answer 2xx."""
    sid = sealed["id"]
    made = share(operator, sid)  # no downloads: the mp4/ts/evidence routes must refuse it too
    with holder(platform, made["token"]) as c:
        media_token = c.post("/v1/share/links").json()["token"]
    spare = admin.post("/v1/api-keys", json={"name": "walk target", "role": "viewer"}).json()
    with holder(platform) as anyone:
        spec = anyone.get("/openapi.json").json()
        calls = []
        for template, item in spec["paths"].items():
            for method in item:
                if method not in ("get", "post", "put", "delete", "head", "patch"):
                    continue
                for session in (sid, other):
                    path = fill(template, session_id=session, seq=0, key_id=spare["id"], share_id=made["id"])
                    calls.append((template, method.upper(), path, session))
        public = {t for t, m, p, _ in calls if m == "GET" and anyone.get(p).status_code < 300}
        assert public == {"/health", "/ready"}, public  # open to anyone, no share needed
        seen, reached = set(), []
        for template, method, path, session in calls:
            if template in public:
                continue
            seen.add(template)
            for label, headers, params in (
                ("bearer", {"Authorization": f"Bearer {made['token']}"}, {}),
                ("link", {}, {"token": media_token}),
                ("share as link", {}, {"token": made["token"]}),
            ):
                r = anyone.request(method, path, headers=headers, params=params, json={} if method != "GET" else None)
                assert r.status_code < 500, (label, method, path, r.status_code, r.text)
                if r.status_code < 300:
                    reached.append((label, method, template, session == sid))
                else:
                    assert r.status_code in (401, 403, 404, 405, 422), (label, method, path, r.status_code, r.text)
                    assert made["token"] not in r.text and media_token not in r.text
    assert len(seen) > 20  # the document was walked, not an empty list
    own = {("GET", "/v1/share"), ("GET", "/v1/share/manifest"), ("GET", "/v1/share/checkpoints")}
    own.add(("POST", "/v1/share/links"))
    allowed = {("bearer", m, t, on) for m, t in own for on in (True, False)}  # no session in their path
    allowed |= {
        ("link", "GET", "/v1/sessions/{session_id}/live.m3u8", True),
        ("link", "GET", "/v1/sessions/{session_id}/media/{seq}.ts", True),
    }
    assert set(reached) <= allowed, sorted(set(reached) - allowed)
    assert ("link", "GET", "/v1/sessions/{session_id}/media/{seq}.ts", True) in reached  # the walk can see a 2xx
    keys = {k["id"]: k for k in admin.get("/v1/api-keys").json()["items"]}
    assert keys[spare["id"]]["revoked_at"] is None  # nothing was changed
    assert admin.get(f"/v1/sessions/{sid}").json()["state"] == "sealed"


def test_every_use_is_audited_without_the_token(platform, admin, operator, keys_by_role, sealed):
    sid = sealed["id"]
    made = share(operator, sid, may_download=True, note="for the auditor")
    with holder(platform, made["token"]) as c:
        assert c.get("/v1/share").status_code == 200
        links = c.post("/v1/share/links").json()
    with holder(platform) as player:
        assert player.get(links["mp4"]).status_code == 200
        assert player.get(links["mp4"], headers={"Range": "bytes=100-199"}).status_code == 206  # not a download
        assert player.get(links["evidence"]).status_code == 200
    assert operator.delete(f"/v1/sessions/{sid}/shares/{made['id']}").status_code == 200
    evidence = admin.get(f"/v1/sessions/{sid}/evidence")
    assert evidence.status_code == 200
    events = admin.get(f"/v1/sessions/{sid}/events").json()["items"]
    text = json.dumps(events)
    assert made["token"] not in text and links["token"] not in text
    mine = [e["entry"] for e in events if e["entry"]["detail"].get("share") == made["id"]]
    mine += [e["entry"] for e in events if e["entry"]["actor"] == f"share:{made['id']}"]
    created = [e for e in mine if e["event"] == "share_created"]
    assert len(created) == 1 and created[0]["actor"] == made["created_by"]
    assert created[0]["detail"]["note"] == "for the auditor" and created[0]["detail"]["may_download"] is True
    used = [e["detail"]["what"] for e in mine if e["event"] == "share_used"]
    assert used == ["view", "play", "mp4", "evidence"]  # the ranged request is not another download
    assert all(e["actor"] == f"share:{made['id']}" for e in mine if e["event"] == "share_used")
    revoked = [e for e in mine if e["event"] == "share_revoked"]
    assert len(revoked) == 1 and revoked[0]["actor"] == made["created_by"]
    assert [e["entry"]["event"] for e in events][-1] == "evidence"
    assert events[-1]["entry"]["actor"].startswith("key:")


def test_survives_key_rotation_and_dies_with_the_session(platform, admin, operator, sealed):
    made = share(operator, sealed["id"])
    rotate_kek(Settings(data_dir=platform.data_dir))  # a share does not depend on the KEK
    with holder(platform, made["token"]) as c:
        assert c.get("/v1/share").status_code == 200
        token = c.post("/v1/share/links").json()["token"]
        assert c.get(f"/v1/sessions/{sealed['id']}/media/0.ts", params={"token": token}).status_code == 200

    doomed = record(admin, seconds=3, name="shared, then shredded")
    gone = share(operator, doomed["id"])
    with holder(platform, gone["token"]) as c:
        token = c.post("/v1/share/links").json()["token"]
        assert c.get(f"/v1/sessions/{doomed['id']}/media/0.ts", params={"token": token}).status_code == 200
        assert admin.delete(f"/v1/sessions/{doomed['id']}").status_code == 200
        r = c.get("/v1/share")
        assert r.status_code == 401 and r.json()["error"] == "share_invalid"
        assert c.get(f"/v1/sessions/{doomed['id']}/media/0.ts", params={"token": token}).status_code == 401
    r = operator.post(f"/v1/sessions/{doomed['id']}/shares", json={})
    assert r.status_code == 409 and r.json()["error"] == "session_deleted"
    assert [s["status"] for s in operator.get(f"/v1/sessions/{doomed['id']}/shares").json()["items"]] == ["revoked"]


def test_revoking_the_key_revokes_its_shares(platform, admin, sealed):
    sid = sealed["id"]
    key = admin.post("/v1/api-keys", json={"name": "leaving operator", "role": "operator"}).json()
    with client_for(platform, key["key"]) as op:
        made = share(op, sid)
    kept = share(admin, sid)  # another key's share is not touched
    with holder(platform, made["token"]) as c:
        token = c.post("/v1/share/links").json()["token"]
        assert admin.delete(f"/v1/api-keys/{key['id']}").status_code == 200
        assert c.get("/v1/share").status_code == 401
        assert c.get(f"/v1/sessions/{sid}/media/0.ts", params={"token": token}).status_code == 401
    with holder(platform, kept["token"]) as c:
        assert c.get("/v1/share").status_code == 200
    listing = {s["id"]: s["status"] for s in admin.get(f"/v1/sessions/{sid}/shares").json()["items"]}
    assert listing[made["id"]] == "revoked" and listing[kept["id"]] == "active"
    events = [e["entry"] for e in admin.get(f"/v1/sessions/{sid}/events").json()["items"]]
    revoked = [e for e in events if e["event"] == "share_revoked" and e["detail"]["share"] == made["id"]]
    assert len(revoked) == 1 and revoked[0]["detail"]["reason"] == "api_key_revoked"
