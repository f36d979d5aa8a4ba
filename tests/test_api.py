"""Bad input gets a clear 4xx and writes nothing; roles are enforced; OpenAPI has the scheme."""

import uuid

import pytest

from tests.conftest import client_for

pytestmark = pytest.mark.e2e


def snapshot(admin):
    sessions = admin.get("/v1/sessions", params={"limit": 500}).json()
    events = {s["id"]: len(admin.get(f"/v1/sessions/{s['id']}/events").json()["items"]) for s in sessions["items"]}
    return sessions["total"], events, [(s["id"], s["state"]) for s in sessions["items"]]


@pytest.fixture()
def created(admin):
    r = admin.post("/v1/sessions", json={"name": "bad-input target"})
    assert r.status_code == 201
    return r.json()


def test_unknown_session_is_404(admin):
    before = snapshot(admin)
    for path in (f"/v1/sessions/{uuid.uuid4()}", "/v1/sessions/not-a-uuid"):
        r = admin.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    for action in ("start", "stop", "pause", "resume"):
        r = admin.post(f"/v1/sessions/{uuid.uuid4()}/{action}")
        assert r.status_code == 404, r.text
    assert admin.post(f"/v1/sessions/{uuid.uuid4()}/verify").status_code == 404
    assert snapshot(admin) == before


def test_illegal_transition_is_409_with_state(admin, created):
    before = snapshot(admin)
    for action in ("stop", "pause", "resume"):
        r = admin.post(f"/v1/sessions/{created['id']}/{action}")
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["error"] == "illegal_transition" and body["state"] == "created"
        assert "created" in body["detail"]
    assert snapshot(admin) == before


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "video": {"width": 99999}}, "video.width"),
        ({"name": "x", "video": {"fps": 0}}, "video.fps"),
        ({"name": "x", "source": {"kind": "carrier-pigeon"}}, "source"),
        ({"name": "x", "chunk_seconds": -1}, "chunk_seconds"),
        ({"name": "x", "labels": {"bad key!": "v"}}, "labels"),
        ({"name": "x", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_body_is_422_with_reason(admin, body, field):
    before = snapshot(admin)
    r = admin.post("/v1/sessions", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and field in r.json()["detail"]
    assert snapshot(admin) == before


def test_not_json_is_422(admin):
    r = admin.post("/v1/sessions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_missing_or_wrong_key_is_401(platform, admin, created):
    before = snapshot(admin)
    for key in (None, "wrong-key-wrong-key-wrong-key"):
        with client_for(platform, key) as c:
            for method, path in (
                ("GET", "/v1/sessions"),
                ("POST", "/v1/sessions"),
                ("POST", f"/v1/sessions/{created['id']}/start"),
                ("GET", "/v1/api-keys"),
            ):
                r = c.request(method, path, json={"name": "x"} if method == "POST" else None)
                assert r.status_code == 401, (key, path, r.text)
                assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    assert snapshot(admin) == before


def test_roles(platform, admin, keys_by_role, created):
    with client_for(platform, keys_by_role["viewer"]) as viewer:
        assert viewer.get("/v1/sessions").status_code == 200
        assert viewer.get(f"/v1/sessions/{created['id']}").status_code == 200
        before = snapshot(admin)
        r = viewer.post("/v1/sessions", json={"name": "nope"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert viewer.post(f"/v1/sessions/{created['id']}/start").status_code == 403
        assert viewer.get("/v1/api-keys").status_code == 403
        assert snapshot(admin) == before
    with client_for(platform, keys_by_role["operator"]) as op:
        assert op.post("/v1/sessions", json={"name": "by operator"}).status_code == 201
        assert op.post("/v1/api-keys", json={"name": "x", "role": "admin"}).status_code == 403


def test_api_keys_are_hashed_listed_and_revocable(platform, admin):
    r = admin.post("/v1/api-keys", json={"name": "short-lived", "role": "viewer"})
    assert r.status_code == 201
    key, kid = r.json()["key"], r.json()["id"]
    listing = admin.get("/v1/api-keys").text
    assert key not in listing and kid in listing
    with client_for(platform, key) as c:
        assert c.get("/v1/sessions").status_code == 200
        assert admin.delete(f"/v1/api-keys/{kid}").status_code == 200
        assert c.get("/v1/sessions").status_code == 401
    assert admin.post("/v1/api-keys", json={"name": "x", "role": "god"}).status_code == 422


def test_openapi_declares_bearer_security(platform):
    with client_for(platform, None) as c:
        spec = c.get("/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
        assert "/v1/sessions/{session_id}/verify" in spec["paths"]
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/ready").json()["status"] == "ready"


def test_list_filters_and_paginates(admin):
    for i in range(3):
        assert admin.post("/v1/sessions", json={"name": f"page {i}", "labels": {"batch": "p"}}).status_code == 201
    page = admin.get("/v1/sessions", params={"label": "batch=p", "limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert all(s["state"] == "created" for s in admin.get("/v1/sessions", params={"state": "created"}).json()["items"])
