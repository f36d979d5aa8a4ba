"""Issue 15, the library: a session's chunks (real libx264 through the recorder's encoder, sealed as
envelopes) derived into activity, thumbnails and screen text with real rapidocr; read back, searched
through the keyed index, and gone after a crypto-shred. No Dagster here (tests/test_insight_dagster.py)."""

from __future__ import annotations

import io
import random
import uuid

import pytest
from PIL import Image

from lucid_assets.core import envelope
from lucid_assets.core.states import Insight
from lucid_assets.insight import derive, index, records
from lucid_assets.insight.session import SessionDeriver, open_index, stale, todo
from lucid_assets.insight.view import SearchKeys, SessionView, search
from lucid_assets.keyring import Keyring
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from tests import screenwork

ALL = {Insight.ACTIVITY, Insight.THUMBNAILS, Insight.TEXT}


def seal_segments(store: ChunkStore, keyring: Keyring, sid: str, segs) -> None:
    dek = store.data_key(sid, keyring, create=True)
    for s in segs:
        store.write_envelope(
            sid, s.seq, envelope.seal(s.path.read_bytes(), dek=dek, session_id=uuid.UUID(sid), seq=s.seq)
        )


SCRIPT = [
    screenwork.Step("idle", seconds=3),
    screenwork.Step("type", text="ops@web01:~$ ssh db07.prod.example.com"),
    screenwork.Step("print", lines=["Welcome to db07 customer CUST-48213 invoice backlog", "last login refused"]),
    screenwork.Step("idle", seconds=9),
    screenwork.Step("type", text="ops@db07:~$ systemctl restart pipeline --now --no-block"),  # 7 s of typing
    screenwork.Step("idle", seconds=4),
]


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("insight")
    settings = Settings(data_dir=tmp / "data", generate_keys=True)
    keyring = Keyring.load(settings, with_signing=False)
    store = ChunkStore.from_settings(settings)
    segs, truth = screenwork.record(tmp / "rec", SCRIPT, size=(640, 360), fps=5, chunk_seconds=4)
    sid = str(uuid.uuid4())
    seal_segments(store, keyring, sid, segs)
    idx = open_index(store)
    rep = SessionDeriver(store, keyring, sid, idx).run(ALL, todo(store, sid)[Insight.TEXT])
    return store, keyring, sid, idx, rep, truth, segs


def test_every_chunk_is_derived_and_sealed(derived):
    store, keyring, sid, idx, rep, truth, segs = derived
    assert rep.error is None and rep.chunks == len(segs) >= 6
    assert todo(store, sid) == {} and not stale(store, sid)
    recs = records.Records(store, sid)
    for p in (*ALL, Insight.STATE):
        files = list(recs.dir(p).glob("*.bin"))
        assert len(files) == (1 if p == Insight.STATE else len(segs))  # only the newest state is kept
        for f in files:  # sealed: no JPEG, no JSON, no screen word in the clear
            data = f.read_bytes()
            assert data[:4] == envelope.SIDECAR_MAGIC
            assert b"\xff\xd8\xff" not in data and b"db07" not in data and b'"text"' not in data
    assert idx.indexed_chunks(sid) == set(range(len(segs)))


def test_screen_text_has_time_box_and_words(derived):
    store, keyring, sid, *_, truth, segs = derived
    lines = SessionView(store, keyring, sid).text()
    texts = [ln["text"] for ln in lines]
    assert any("db07.prod.example.com" in t for t in texts), texts
    assert any("CUST-48213" in t for t in texts), texts
    restart = next(ln for ln in lines if "--no-block" in ln["text"])  # partial lines read while typing come first
    typed_at = next(t for t, text in truth.lines if "restart" in text)
    assert typed_at * 1000 - 500 <= restart["t"] <= typed_at * 1000 + derive.MAX_WAIT_MS + 1000
    x, y, w, h = restart["box"]
    assert 0 <= x < 640 and 0 <= y < 360 and w > 50 and 5 < h < 60 and 0.5 < restart["conf"] <= 1
    assert [w[0] for w in restart["words"]][-4:] == ["restart", "pipeline", "--now", "--no-block"]
    # a time window gives only the lines that appeared in it
    late = SessionView(store, keyring, sid).text(start_ms=int(typed_at * 1000) - 200)
    assert late and all("restart" in ln["text"] or ln["t"] >= typed_at * 1000 - 200 for ln in late)
    assert not any("Welcome" in ln["text"] for ln in late)
    assert any("systemctl" in t and "--no-block" not in t for t in texts)  # read mid-typing (MAX_WAIT_MS)


def test_activity_scores_idle_spans_and_scenes(derived):
    store, keyring, sid, *_ = derived
    act = SessionView(store, keyring, sid).activity(idle_seconds=3)
    secs = act["seconds"]
    assert len(secs) >= 20 and all(0 <= s <= 1 for s in secs)
    assert max(secs[4:12]) > 0  # typing
    # the nine idle seconds after the login banner are one idle span; the first three seconds too
    assert any(e - s >= 7000 for s, e in act["idle"]), act["idle"]
    assert act["active_seconds"] < len(secs)


def test_thumbnails_vtt_and_sprite(derived):
    store, keyring, sid, *_ = derived
    view = SessionView(store, keyring, sid)
    thumbs = view.thumbnails()
    assert len(thumbs) >= 5 and [t for t, _ in thumbs] == sorted(t for t, _ in thumbs)
    vtt = view.vtt("/v1/sessions/x/thumbnails/{sheet}.jpg")
    assert vtt.startswith("WEBVTT") and vtt.count("-->") == len(thumbs)
    assert "/v1/sessions/x/thumbnails/0.jpg#xywh=160,0,160,90" in vtt
    sheet = Image.open(io.BytesIO(view.sprite(0)))
    assert sheet.size == (160 * min(10, len(thumbs)), 90 * -(-len(thumbs) // 10))
    assert view.sprite(1) is None


def test_search_words_phrases_prefixes_and_shred(derived, tmp_path):
    store, keyring, sid, idx, *_ = derived
    keys = SearchKeys(store, keyring)

    def find(q: str) -> list[dict]:
        return search(store, keyring, idx, keys.get(idx.sessions()), index.parse_query(q))

    assert {h["session_id"] for h in find("db07")} == {sid}
    hit = find("CUST-48213")[0]
    assert "CUST-48213" in hit["text"] and hit["t"] > 0
    assert find('"restart pipeline"') and not find('"pipeline restart"')
    assert find("custom*") and find("backl*") and not find("zebra")
    # crypto-shred: the key is destroyed; the records and index rows go too; nothing finds it
    store.shred(sid)
    assert records.Records(store, sid).drop() == 0  # store.shred removed the derived records itself
    keys.forget(sid)
    assert keys.get([sid]) == {}
    assert idx.drop_session(sid) > 0 and sid not in idx.sessions()
    assert find("db07") == []


def test_chunks_derived_out_of_order_and_rerun_keep_one_version(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", generate_keys=True)
    keyring = Keyring.load(settings, with_signing=False)
    store = ChunkStore.from_settings(settings)
    rng = random.Random(4)
    steps = [
        screenwork.Step("print", lines=[screenwork.words_line(rng, 5) for _ in range(4)]),
        screenwork.Step("idle", seconds=5),
    ]
    segs, _ = screenwork.record(tmp_path / "rec", steps, size=(320, 180), fps=4, chunk_seconds=2)
    sid = str(uuid.uuid4())
    seal_segments(store, keyring, sid, segs[:2])
    d = SessionDeriver(store, keyring, sid, None)
    assert d.run({Insight.ACTIVITY}, [0, 1]).chunks == 2
    seal_segments(store, keyring, sid, segs)
    assert todo(store, sid, (Insight.ACTIVITY,)) == {Insight.ACTIVITY: list(range(2, len(segs)))}
    d.run({Insight.ACTIVITY}, todo(store, sid, (Insight.ACTIVITY,))[Insight.ACTIVITY])
    assert todo(store, sid, (Insight.ACTIVITY,)) == {}
    # a record of an older derivation is stale (a backfill's work), and rewriting replaces it
    recs = records.Records(store, sid)
    path = recs.path(Insight.ACTIVITY, 0, derive.ACTIVITY_VERSION)
    path.rename(recs.path(Insight.ACTIVITY, 0, "activity/0"))
    assert stale(store, sid, (Insight.ACTIVITY,))
    d.run({Insight.ACTIVITY}, [0])
    assert not stale(store, sid, (Insight.ACTIVITY,)) and len(list(recs.dir(Insight.ACTIVITY).glob("00000000.*"))) == 1
    # a record moved to another chunk does not open (the seq is in its AAD)
    dek = store.data_key(sid, keyring)
    recs.path(Insight.ACTIVITY, 1, derive.ACTIVITY_VERSION).write_bytes(path.read_bytes())
    assert recs.read(Insight.ACTIVITY, 1, derive.ACTIVITY_VERSION, dek=dek) is None


def test_access_log_lines_drop_the_query_string(caplog):
    """What someone searched for goes to the search log (with who asked), not to access logs."""
    from services.common.app import configure_logging

    configure_logging()
    with caplog.at_level("INFO", logger="uvicorn.access"):
        access = __import__("logging").getLogger("uvicorn.access")
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/v1/search?q=CUST-48213", "1.1", 200)
    assert "/v1/search?…" in caplog.text and "CUST-48213" not in caplog.text
