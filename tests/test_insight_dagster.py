"""Issue 15 in Dagster: the insight multi-asset (partitioned by session, subsettable, code versions,
multi-run backfill policy), the live follower sensor and job, and the schedule that adds a real asset
backfill to the instance for stale sessions. Real pipeline service, real Dagster instance, real
libx264 and rapidocr. (The daemon executing a scheduled backfill end to end: tests/test_insight_e2e.py.)"""

import random
import re
from pathlib import Path

import dagster as dg
import pytest

from lucid_assets.core import catalog
from lucid_assets.core.states import Insight
from lucid_assets.defs.insight import assets as insight_assets
from lucid_assets.defs.insight.backfill import BACKFILL_TAGS, insight_backfill_schedule, launch_insight_backfill
from lucid_assets.defs.insight.follow import FOLLOW_TAGS, follow_insight, insight_follower
from lucid_assets.defs.resources import PipelineResource, StorageServiceResource, VaultResource
from lucid_assets.defs.sessions.assets import session_manifest, stored_chunks
from lucid_assets.defs.sessions.partitions import sessions
from lucid_assets.insight import derive, records
from lucid_assets.insight.session import open_index
from lucid_assets.settings import Settings
from tests import screenwork
from tests.helpers import pipeline_client, token_file
from tests.test_dagster import _pipeline_only

REPO = Path(__file__).resolve().parent.parent
ONE_PASS = {"ops": {"derive_live": {"config": {"idle_exit_seconds": 0}}}}  # a daemon's run lingers for more


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("insight-dagster")
    p = _pipeline_only(tmp / "platform")
    api = pipeline_client(p)
    sid = api.post(
        "/sessions", json={"name": "insight", "video": {"width": 480, "height": 270, "fps": 4}, "chunk_seconds": 3}
    ).json()["id"]
    api.post(f"/sessions/{sid}/transitions", json={"event": "start", "encoder": "libx264"})
    rng = random.Random(7)
    steps = [
        screenwork.Step("type", text="ops@web01:~$ grep invoice CUST-77120"),
        screenwork.Step("print", lines=[screenwork.words_line(rng, 5) for _ in range(3)]),
        screenwork.Step("idle", seconds=4),
    ]
    segs, _ = screenwork.record(tmp / "rec" / sid, steps, size=(480, 270), fps=4, chunk_seconds=3)
    for seg in segs:
        body = {"seq": seg.seq, "sha256": seg.sha256, "size": seg.size, "frames": seg.frames}
        api.post(f"/sessions/{sid}/chunks", json={**body, "duration_ms": seg.duration_ms, "path": str(seg.path)})
    settings = Settings(data_dir=tmp / "data", generate_keys=True)
    resources = {
        "pipeline": PipelineResource(url=p.url("pipeline"), token_file=token_file(p)),
        "vault": VaultResource.from_settings(settings),
        # a local store: the runs write this host's index themselves and never call storage
        "storage": StorageServiceResource(url=p.url("storage"), token_file=token_file(p)),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sid])
        assert dg.materialize([stored_chunks], partition_key=sid, instance=instance, resources=resources).success
        yield p, api, sid, len(segs), resources, instance
    p.stop()


def test_follower_derives_live_chunks_and_reports_each_session(setup):
    p, api, sid, n, resources, instance = setup
    vault = resources["vault"]
    sensor = insight_follower(20)
    request = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(request, dg.RunRequest) and request.tags["lucid/sessions"] == "1"
    assert follow_insight.tags[insight_assets.INSIGHT_TAG] == "live" and FOLLOW_TAGS["dagster/priority"] == "-1"
    result = follow_insight.execute_in_process(instance=instance, resources=resources, run_config=ONE_PASS)
    assert result.success
    mats = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert {(m.asset_key.to_user_string(), m.partition) for m in mats} == {
        (k, sid) for k in ("session_activity", "session_thumbnails", "screen_text")
    }
    text = next(m for m in mats if m.asset_key.to_user_string() == "screen_text").metadata
    assert text["chunks_derived"].value == n and text["lines_found"].value >= 4
    # no screen content in Dagster: metadata, logs and run config hold counts only
    blob = repr([e.event_specific_data for e in result.all_events]) + repr(instance.all_logs(result.run_id))
    assert "CUST" not in blob and "invoice" not in blob
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert [(c.check_name, c.passed, c.partition) for c in checks] == [("screen_text_coverage", True, sid)]
    assert open_index(vault.store).indexed_chunks(sid) == set(range(n))
    # nothing left: the sensor skips
    assert isinstance(sensor(dg.build_sensor_context(instance=instance, resources=resources)), dg.SkipReason)


def test_asset_rerun_for_one_product_and_the_backfill_schedule(setup):
    p, api, sid, n, resources, instance = setup
    vault = resources["vault"]
    recs = records.Records(vault.store, sid)
    if not recs.current(Insight.TEXT, derive.TEXT_VERSION):
        assert follow_insight.execute_in_process(instance=instance, resources=resources, run_config=ONE_PASS).success
    # the session ends; later the text derivation changes (its records are of an older version now)
    api.post(f"/sessions/{sid}/transitions", json={"event": "stop"})
    api.post(f"/sessions/{sid}/transitions", json={"event": "finalize", "expected_chunks": n})
    assert dg.materialize(
        [stored_chunks, session_manifest], partition_key=sid, instance=instance, resources=resources
    ).success
    api.post(f"/sessions/{sid}/transitions", json={"event": "seal"})
    for path in recs.dir(Insight.TEXT).glob("*.bin"):
        seq = int(path.name.split(".")[0])
        path.rename(recs.path(Insight.TEXT, seq, "text/0/an-older-model"))
    schedule = insight_backfill_schedule("17 * * * *")
    ctx = dg.build_schedule_context(instance=instance, resources=resources)
    [request] = schedule.evaluate_tick(ctx).run_requests
    assert request.tags["lucid/sessions"] == "1"
    launched = launch_insight_backfill.execute_in_process(instance=instance, resources=resources)
    assert launched.success
    [backfill] = instance.get_backfills()
    assert backfill.tags == BACKFILL_TAGS and backfill.title == "insight: re-derive 1 sessions"
    subset = backfill.asset_backfill_data.target_subset
    assert {k.to_user_string() for k in subset.asset_keys} == {"screen_text"}  # only what is stale
    assert list(subset.get_partitions_subset(dg.AssetKey("screen_text")).get_partition_keys()) == [sid]
    # while that backfill is unfinished the schedule adds no other
    again = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, resources=resources))
    assert not again.run_requests and "still running" in again.skip_message
    # what the backfill's runs execute: the multi-asset, subset to screen_text, for its partitions
    run = dg.materialize(
        [insight_assets.session_insight],
        selection=["screen_text"],
        partition_key=sid,
        instance=instance,
        resources=resources,
    )
    assert run.success
    assert recs.current(Insight.TEXT, derive.TEXT_VERSION) == set(range(n))
    assert not list(recs.dir(Insight.TEXT).glob(f"*.{records.version_tag('text/0/an-older-model')}.bin"))
    [mat] = run.asset_materializations_for_node("session_insight")
    assert mat.asset_key == dg.AssetKey("screen_text") and mat.metadata["sessions"].value == 1
    [check] = [e.event_specific_data for e in run.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.passed and check.metadata["active_minutes"].value > 0  # activity is measured, not re-recorded
    # the sealed session's summary row in lucid.session_insight: counts, no screen content
    lake = resources["vault"].lake
    [row] = lake.rows(catalog.INSIGHT, sid)
    assert row["chunks_derived"] == n and row["text_lines"] >= 4 and row["text_version"] == derive.TEXT_VERSION
    assert row["indexed_chunks"] == n and row["active_seconds"] > 0 and row["thumbnails"] >= 1
    assert "CUST" not in repr(row) and "invoice" not in repr(row)
    # the DuckDB query docs/INSIGHT.md shows, run as written (pyiceberg's to_duckdb works offline)
    sql = re.search(r"```sql\n(.*?)```", (REPO / "docs" / "INSIGHT.md").read_text(), re.S).group(1)
    con = lake.table(catalog.INSIGHT).scan().to_duckdb("session_insight")
    [(sessions_n, active_min, idle_share, lines_per_active_min)] = con.execute(sql).fetchall()
    assert sessions_n == 1 and active_min > 0 and 0 <= idle_share <= 1 and lines_per_active_min > 0
    policy = insight_assets.session_insight.backfill_policy
    assert policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=25)
    assert {str(v) for v in insight_assets.session_insight.code_versions_by_key.values()} == {
        derive.ACTIVITY_VERSION,
        derive.THUMBS_VERSION,
        derive.TEXT_VERSION,
    }


def test_on_a_bucket_the_storage_service_indexes_what_another_host_derived(seaweed, tmp_path, monkeypatch):
    """Issue 17: with the chunk store in a bucket, a processing host that is not the storage service's
    keeps no search index of its own: its run writes the sealed text records and tells storage which
    chunks; storage indexes them from the bucket, and the search finds words only that host saw."""
    import shutil

    import httpx

    from services.launcher import SERVICES, Platform
    from tests.conftest import free_port
    from tests.helpers import start_platform

    backend = seaweed.backend()
    for name, value in {**backend.credentials_env(), "LUCID_S3_ENDPOINT": backend.s3_url}.items():
        monkeypatch.setenv(name, value)
    p = start_platform(
        Platform(
            data_dir=tmp_path / "storage-host",
            ports={n: free_port() for n in SERVICES},
            run=("pipeline", "storage"),
            webserver=False,
            daemon=False,
            extra_env=backend.env(),
        )
    )
    try:
        worker = tmp_path / "worker-host"
        shutil.copytree(p.data_dir / "keys", worker / "keys")  # what a processing host is given
        api = pipeline_client(p)
        sid = api.post("/sessions", json={"name": "elsewhere", "video": {"width": 480, "height": 270, "fps": 4}}).json()
        sid = sid["id"]
        api.post(f"/sessions/{sid}/transitions", json={"event": "start", "encoder": "libx264"})
        steps = [screenwork.Step("type", text="ops@far:~$ grep CUST-90417"), screenwork.Step("idle", seconds=3)]
        segs, _ = screenwork.record(worker / "rec", steps, size=(480, 270), fps=4, chunk_seconds=3)
        for seg in segs:
            body = {"seq": seg.seq, "sha256": seg.sha256, "size": seg.size, "frames": seg.frames, "path": str(seg.path)}
            api.post(f"/sessions/{sid}/chunks", json={**body, "duration_ms": seg.duration_ms})
        resources = {
            "pipeline": PipelineResource(url=p.url("pipeline"), token_file=token_file(p)),
            "vault": VaultResource.from_settings(Settings(data_dir=worker, **backend.settings())),
            "storage": StorageServiceResource(url=p.url("storage"), token_file=token_file(p)),
        }
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(sessions.name, [sid])
            assert dg.materialize([stored_chunks], partition_key=sid, instance=instance, resources=resources).success
            assert follow_insight.execute_in_process(
                instance=instance, resources=resources, run_config=ONE_PASS
            ).success
        assert not (worker / "insight").exists() and not list(worker.rglob("*.sqlite")), "no index on the worker"
        with httpx.Client(base_url=p.url("storage"), headers=p.service_headers("api"), timeout=30) as storage:
            hits = storage.post("/search", json={"q": "CUST-90417"}).json()["items"]
            assert [h["session_id"] for h in hits] == [sid]
            assert storage.post(f"/sessions/{sid}/text-index", json={"seqs": []}).status_code == 403, "Dagster's only"
        with httpx.Client(base_url=p.url("storage"), headers=p.service_headers("dagster"), timeout=30) as dagster:
            again = dagster.post(f"/sessions/{sid}/text-index", json={"seqs": [0]}).json()
            assert again == {"indexed": 1, "chunks_indexed": len(segs)}, "idempotent: re-indexes what it is told"
            bad = dagster.post(f"/sessions/{sid}/text-index", json={"seqs": [-1]})
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    finally:
        p.stop()
