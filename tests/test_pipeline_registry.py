"""The pipeline service on SQLite and on a real PostgreSQL: transitions, concurrency, audit chain."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from lucid_assets.core import audit
from services.launcher import SERVICES, Platform
from tests.conftest import free_port
from tests.helpers import pipeline_client


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def pipeline(request, tmp_path_factory):
    env = {}
    if request.param == "postgres":
        env["LUCID_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    p = Platform(
        data_dir=tmp_path_factory.mktemp(f"registry-{request.param}"),
        ports={n: free_port() for n in SERVICES},
        run=("pipeline",),
        webserver=False,
        daemon=False,
        extra_env=env,
    )
    p.start(timeout=60)
    with pipeline_client(p) as c:
        c.platform = p  # for tests that present one component's token themselves
        yield c
    p.stop()


def new_session(c) -> str:
    r = c.post("/sessions", json={"name": "registry"})
    assert r.status_code == 201
    return r.json()["id"]


def chain_ok(c, sid) -> list[str]:
    rows = c.get(f"/sessions/{sid}/events").json()["items"]
    assert audit.verify_chain(rows) == []
    return [r["entry"]["event"] for r in rows]


def test_full_lifecycle_and_refusals(pipeline):
    c = pipeline
    sid = new_session(c)
    t = lambda event, **kw: c.post(f"/sessions/{sid}/transitions", json={"event": event, **kw})
    assert t("seal").status_code == 409
    assert t("start", encoder="libx264").json()["state"] == "recording"
    assert t("pause").json()["state"] == "paused"
    assert t("resume").json()["state"] == "recording"
    for seq in range(2):
        r = c.post(f"/sessions/{sid}/chunks", json={"seq": seq, "sha256": f"{seq:064x}", "size": 10, "path": "/x"})
        assert r.status_code == 200 and r.json()["created"]
    assert t("stop").json()["state"] == "finalizing"
    bad = t("finalize", expected_chunks=3)
    assert bad.status_code == 409 and bad.json()["error"] == "incomplete"
    assert t("finalize", expected_chunks=2).json()["state"] == "processing"
    no_manifest = t("seal")
    assert no_manifest.status_code == 409 and no_manifest.json()["error"] == "no_manifest"
    assert t("fail", reason="disk on fire").json()["failure_reason"] == "disk on fire"
    c.put(f"/sessions/{sid}/manifest", json={"version": 1, "merkle_root": "a" * 64, "manifest_sha256": "b" * 64})
    sealed = t("seal").json()
    assert sealed["state"] == "sealed" and sealed["failure_reason"] is None
    assert chain_ok(c, sid) == [
        "create",
        "start",
        "pause",
        "resume",
        "stop",
        "finalize",
        "fail",
        "manifest",
        "retry",
        "seal",
    ]
    work = c.get("/work").json()["items"]
    assert [(w["reason"], w["up_to_seq"]) for w in work if w["session_id"] == sid] == [
        ("chunks", 0),
        ("chunks", 1),
        ("final", 1),
        ("retry", 1),
    ]
    late = c.post(f"/sessions/{sid}/chunks", json={"seq": 5, "sha256": "f" * 64, "size": 1, "path": "/y"})
    assert late.status_code == 409 and late.json()["state"] == "sealed"


def test_concurrent_transitions_apply_once(pipeline):
    c = pipeline
    sid = new_session(c)
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: c.post(f"/sessions/{sid}/transitions", json={"event": "start"}).status_code, range(16))
        )
    assert sorted(codes) == [200] + [409] * 15
    assert chain_ok(c, sid) == ["create", "start"]


def test_concurrent_chunk_registration_is_idempotent(pipeline):
    c = pipeline
    sid = new_session(c)
    c.post(f"/sessions/{sid}/transitions", json={"event": "start"})
    body = {"seq": 0, "sha256": "c" * 64, "size": 3, "path": "/z"}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: c.post(f"/sessions/{sid}/chunks", json=body).json(), range(12)))
    assert sum(r["created"] for r in results) == 1
    assert len(c.get(f"/sessions/{sid}/chunks").json()["items"]) == 1


def test_unknown_and_invalid(pipeline):
    assert pipeline.get(f"/sessions/{uuid.uuid4()}").status_code == 404
    assert pipeline.post("/sessions", json={"name": ""}).status_code == 422
    r = pipeline.post(f"/sessions/{new_session(pipeline)}/transitions", json={"event": "explode"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_list_filters_in_the_database(pipeline):
    c = pipeline
    tag = uuid.uuid4().hex[:8]
    for i in range(3):
        c.post("/sessions", json={"name": f"f{i}", "labels": {"batch": tag, "n": str(i)}})
    c.post("/sessions", json={"name": "other", "labels": {"batch": "x"}})
    page = c.get("/sessions", params={"label": f"batch={tag}", "limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    both = c.get("/sessions", params=[("label", f"batch={tag}"), ("label", "n=1")]).json()
    assert [s["name"] for s in both["items"]] == ["f1"]
    assert c.get("/sessions", params={"label": "n"}).json()["total"] >= 3  # key present, any value
    # changed_since (the insight follower's recent sessions), in UTC whatever offset it is given in
    ids = {s["id"]: s for s in c.get("/sessions", params={"label": f"batch={tag}"}).json()["items"]}
    first = min(ids.values(), key=lambda s: s["updated_at"])
    started = c.post(f"/sessions/{first['id']}/transitions", json={"event": "start"}).json()["updated_at"]
    at = datetime.fromisoformat(started)
    for since in (at, at.astimezone(timezone(timedelta(hours=-5)))):
        page = c.get("/sessions", params={"label": f"batch={tag}", "changed_since": since.isoformat()}).json()
        assert [s["id"] for s in page["items"]] == [first["id"]], since
    later = (at + timedelta(seconds=1)).isoformat()
    assert c.get("/sessions", params={"label": f"batch={tag}", "changed_since": later}).json()["total"] == 0
    assert c.get("/sessions", params={"changed_since": "yesterday"}).status_code == 422


def _with_work(c, n: int) -> set[str]:
    """n recording sessions, each with a chunk registered and not stored: pending work."""
    out = set()
    for _ in range(n):
        sid = new_session(c)
        c.post(f"/sessions/{sid}/transitions", json={"event": "start"})
        c.post(f"/sessions/{sid}/chunks", json={"seq": 0, "sha256": "d" * 64, "size": 3, "path": "/z"})
        out.add(sid)
    return out


def _claim(c, holder: str, **kw) -> set[str]:
    r = c.post("/work/claims", json={"holder": holder, "limit": 2000, **kw})
    assert r.status_code == 200, r.text
    return {i["session"]["id"] for i in r.json()["items"]}


def test_claims_split_the_queue_between_runs(pipeline):
    """Issue 17: a run's claim keeps other runs off its sessions until it releases them or its lease
    lapses; its own claim again renews them; /work/pending says who holds what."""
    c = pipeline
    mine = _with_work(c, 3)
    a = _claim(c, "run-a")
    assert mine <= a
    assert not _claim(c, "run-b") & a, "nothing another run holds"
    assert mine <= _claim(c, "run-a"), "its own claim again: still its"
    held = {i["session"]["id"]: i["claimed_by"] for i in c.get("/work/pending", params={"limit": 2000}).json()["items"]}
    assert {held[sid] for sid in mine} == {"run-a"}
    renewed = c.put("/work/claims/run-a", json={"lease_seconds": 60}).json()
    assert renewed["sessions"] >= 3 and renewed["expires_at"]
    assert c.put("/work/claims/nobody", json={"lease_seconds": 60}).json() == {
        "holder": "nobody",
        "sessions": 0,
        "expires_at": None,
    }
    assert c.delete("/work/claims/run-a").json()["sessions"] >= 3
    assert mine <= _claim(c, "run-b"), "released: free at once"
    c.delete("/work/claims/run-b")
    assert mine <= _claim(c, "run-c", lease_seconds=1)
    time.sleep(1.2)
    assert mine <= _claim(c, "run-d"), "a lease nobody renewed lapses"
    c.delete("/work/claims/run-d")
    for bad in ({"holder": "../x"}, {"holder": ""}, {"holder": "a", "lease_seconds": 0}, {"holder": "a", "limit": 0}):
        r = c.post("/work/claims", json=bad)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", bad


def test_two_pipeline_processes_hand_out_each_session_once(postgres_url, tmp_path):
    """Two pipeline processes on one PostgreSQL (no lock shared between them but the database's),
    six runs claiming at once through them: every session is held by one run at most."""
    from tests.pg import fresh_database

    with fresh_database(postgres_url, "claims") as url:
        platforms = []
        try:
            for name in ("one", "two"):
                p = Platform(
                    data_dir=tmp_path / name,
                    ports={n: free_port() for n in SERVICES},
                    run=("pipeline",),
                    webserver=False,
                    daemon=False,
                    extra_env={"LUCID_DATABASE_URL": url},
                )
                p.start(timeout=60)
                platforms.append(p)
            with pipeline_client(platforms[0]) as one, pipeline_client(platforms[1]) as two:
                mine = _with_work(one, 8)
                with ThreadPoolExecutor(6) as pool:
                    taken = list(pool.map(lambda i: _claim((one, two)[i % 2], f"race-{i}", limit=3), range(6)))
                for i, got in enumerate(taken):
                    assert all(not got & other for other in taken[i + 1 :]), "one session, one holder"
                assert set().union(*taken) == mine, "eight sessions, six runs of up to three: all taken"
        finally:
            for p in platforms:
                p.stop()


def test_the_gateway_routes_a_started_session_without_asking_the_pipeline_again(pipeline):
    """Issue 17's note: every push and control cost the gateway two pipeline calls (the session, the
    recorder list). A started session's owner never changes, and the list is reused for 2 s; a
    start (placing) always asks anew."""
    from lucid_assets.clients import PipelineClient
    from lucid_assets.settings import Settings
    from services.api.deps import Gateway

    p = pipeline.platform
    beat = {"url": "http://127.0.0.1:9/", "capacity": 2, "sources": ["push"]}
    assert httpx.put(p.url("pipeline") + "/recorders/self", json=beat, headers=p.service_headers("recorder")).is_success
    sid = new_session(pipeline)
    pipeline.post(f"/sessions/{sid}/transitions", json={"event": "start"})  # as the recorder: it owns it
    token = p.service_headers("api")["Authorization"].split()[1]
    gw = Gateway(Settings(data_dir=p.data_dir), None, b"", PipelineClient(p.url("pipeline"), token=token), None)
    asked = []
    gw.pipeline.http.event_hooks["request"] = [lambda r: asked.append(r.url.path)]
    assert gw.recorder_for(sid) == "http://127.0.0.1:9/"
    assert asked == [f"/sessions/{sid}", "/recorders"]
    asked.clear()
    for _ in range(5):
        assert gw.recorder_for(sid) == "http://127.0.0.1:9/"
    assert asked == [], "known owner, fresh list: no call"
    gw.recorder_for(sid, placing=True)
    assert asked == [f"/sessions/{sid}", "/recorders"], "a start weighs the current load"
