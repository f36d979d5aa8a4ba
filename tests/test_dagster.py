"""The Dagster code location against a real pipeline service: the work-queue sensor, the assets
under `materialize` on `instance_for_test`, idempotent reruns, and verification of the result."""

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from lucid_assets.core import catalog
from lucid_assets.defs.resources import PipelineResource, VaultResource
from lucid_assets.defs.sessions.assets import session_manifest, stored_chunks
from lucid_assets.defs.sessions.partitions import sessions
from lucid_assets.defs.sessions.sensors import work_queue_sensor as make_work_queue_sensor
from lucid_assets.keyring import Keyring
from lucid_assets.lake import Lake
from lucid_assets.rebuild import NOT_DETERMINED, rebuild
from lucid_assets.settings import Settings
from lucid_assets.verification import verify_stored
from services.launcher import SERVICES, Platform
from tests.conftest import free_port, settings_for
from tests.helpers import pipeline_client, record_segments, token_file


def _pipeline_only(data):
    p = Platform(
        data_dir=data,
        ports={n: free_port() for n in SERVICES},
        run=("pipeline", "storage"),
        webserver=False,
        daemon=False,
    )
    p.start(timeout=60)
    return p


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    p = _pipeline_only(tmp_path_factory.mktemp("pipeline-only"))
    yield p
    p.stop()


@pytest.fixture
def fresh_pipeline(tmp_path_factory):
    """A registry of its own: a batch takes every pending session, so none may be left by other tests."""
    p = _pipeline_only(tmp_path_factory.mktemp("pipeline-fresh"))
    yield p
    p.stop()


def test_sensor_and_assets_seal_a_session_idempotently(fresh_pipeline, tmp_path, backend):
    pipeline = fresh_pipeline  # the sensor must see this test's session alone
    api = pipeline_client(pipeline)
    sid = api.post(
        "/sessions", json={"name": "dagster", "video": {"width": 160, "height": 120, "fps": 10}, "chunk_seconds": 2}
    ).json()["id"]
    assert api.post(f"/sessions/{sid}/transitions", json={"event": "start", "encoder": "libx264"}).status_code == 200
    segs = record_segments(tmp_path / "rec" / sid)
    assert len(segs) == 3
    for seg in segs:
        body = {
            "seq": seg.seq,
            "sha256": seg.sha256,
            "size": seg.size,
            "frames": seg.frames,
            "duration_ms": seg.duration_ms,
            "path": str(seg.path),
        }
        assert api.post(f"/sessions/{sid}/chunks", json=body).json()["created"]
        assert not api.post(f"/sessions/{sid}/chunks", json=body).json()["created"]  # idempotent
    clash = api.post(f"/sessions/{sid}/chunks", json={**body, "sha256": "0" * 64})
    assert clash.status_code == 409 and clash.json()["error"] == "chunk_conflict"
    api.post(f"/sessions/{sid}/transitions", json={"event": "stop"})
    assert (
        api.post(f"/sessions/{sid}/transitions", json={"event": "finalize", "expected_chunks": 3}).json()["state"]
        == "processing"
    )

    settings = settings_for(tmp_path / "data", backend)
    resources = {
        "pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline)),
        "vault": VaultResource.from_settings(settings),
    }
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources=resources)
        result = make_work_queue_sensor(5)(ctx)
        assert [(r.partition_key, r.job_name) for r in result.run_requests] == [(None, "process_sessions")]
        assert result.run_requests[0].tags["lucid/batch"] == "live"
        assert result.run_requests[0].tags["lucid/reason"] == "final"
        assert result.dynamic_partitions_requests[0].partition_keys == [sid]
        ctx2 = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources)
        assert isinstance(make_work_queue_sensor(5)(ctx2), dg.SkipReason)  # the cursor moved past the item

        instance.add_dynamic_partitions(sessions.name, [sid])
        first = dg.materialize(
            [stored_chunks, session_manifest], partition_key=sid, instance=instance, resources=resources
        )
        assert first.success
        vault = resources["vault"]
        manifest_bytes = vault.store.read_manifest(sid, 1)
        assert vault.store.manifest_uri(sid, 1).startswith("s3://" if backend else "file://")
        envelopes = {s: vault.store.read_envelope(sid, s) for s in range(3)}
        assert not any(seg.path.exists() for seg in segs), "staging removed after storing"

        again = dg.materialize(
            [stored_chunks, session_manifest], partition_key=sid, instance=instance, resources=resources
        )
        assert again.success
        meta = again.asset_materializations_for_node("session_manifest")[0].metadata
        assert meta["manifest_reused"].value is True
        rechecked = [
            e.event_specific_data
            for e in again.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.event_specific_data.check_name == "chunks_readable_and_complete"
        ][0]
        assert rechecked.passed and rechecked.metadata["chunks_reread"].value == 0  # nothing new: nothing re-read
        assert vault.store.read_manifest(sid, 1) == manifest_bytes
        assert vault.store.manifest_versions(sid) == [1]
        assert {s: vault.store.read_envelope(sid, s) for s in range(3)} == envelopes
        assert [r["seq"] for r in vault.lake.rows(catalog.CHUNKS, sid)] == [0, 1, 2]
        assert len(vault.lake.rows(catalog.SESSIONS, sid)) == 1

    state = api.get(f"/sessions/{sid}").json()
    assert state["chunks_stored"] == 3 and state["manifest_version"] == 1

    keyring = Keyring.load(settings)
    events = api.get(f"/sessions/{sid}/events").json()["items"]
    report = verify_stored(
        vault.store,
        keyring,
        keyring.signing.public_key(),
        sid,
        audit_rows=events,
        registry_manifest_sha256=state["manifest_sha256"],
    ).as_dict()
    assert report["ok"], report["problems"]
    assert {c["name"] for c in report["checks"] if c["ok"]} >= {"checkpoints", "audit_chain", "manifest_registry"}
    cps = vault.store.checkpoints(sid)
    assert [c["body"]["tree_size"] for c in cps] == [3]  # one batch, one checkpoint; the rerun added none

    # the catalog rebuilt from the files alone equals the original on every column they determine
    fresh = Lake.sql(f"sqlite:///{tmp_path / 'rebuilt.db'}", (tmp_path / "rebuilt").as_uri())
    assert rebuild(fresh, vault.store, keyring) == {
        "sessions": 1,
        catalog.CHUNKS: 3,
        catalog.SESSIONS: 1,
        catalog.INSIGHT: 0,
    }
    for name in catalog.TABLES:
        keep = lambda rows, name=name: [{k: v for k, v in r.items() if k not in NOT_DETERMINED[name]} for r in rows]
        assert keep(fresh.rows(name, sid)) == keep(vault.lake.rows(name, sid)), name
    assert rebuild(fresh, vault.store, keyring)[catalog.CHUNKS] == 3 and len(fresh.rows(catalog.CHUNKS, sid)) == 3

    damaged = bytearray(envelopes[1])
    damaged[200] ^= 0x04
    vault.store.write_envelope(sid, 1, bytes(damaged))
    report = verify_stored(vault.store, keyring, keyring.signing.public_key(), sid, audit_rows=events).as_dict()
    assert not report["ok"] and [c["seq"] for c in report["chunks"] if not c["ok"]] == [1]
    assert any("chunk 1: envelope hash differs" in p for p in report["problems"])


def test_live_chunks_become_store_batches(pipeline):
    api = pipeline_client(pipeline)
    resources = {"pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline))}
    with dg.instance_for_test() as instance:
        first = make_work_queue_sensor(5)(dg.build_sensor_context(instance=instance, resources=resources))
        cursor = getattr(first, "cursor", None)  # nothing queued yet (a SkipReason): from the start
        sid = api.post("/sessions", json={"name": "live"}).json()["id"]
        api.post(f"/sessions/{sid}/transitions", json={"event": "start"})
        for seq in range(2):
            api.post(f"/sessions/{sid}/chunks", json={"seq": seq, "sha256": f"{seq:064x}", "size": 1, "path": "/p"})
        result = make_work_queue_sensor(5)(
            dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        )
        assert [(r.job_name, r.tags["lucid/reason"]) for r in result.run_requests] == [
            ("process_sessions", "chunks")
        ]  # two chunks, one batch run


def test_failed_materialization_reports_why(pipeline, tmp_path):
    """A session whose staging file vanished before storing fails with the reason, not silently."""
    api = pipeline_client(pipeline)
    sid = api.post("/sessions", json={"name": "lost"}).json()["id"]
    api.post(f"/sessions/{sid}/transitions", json={"event": "start"})
    api.post(
        f"/sessions/{sid}/chunks", json={"seq": 0, "sha256": "a" * 64, "size": 10, "path": str(tmp_path / "gone.ts")}
    )
    settings = Settings(data_dir=tmp_path / "data", generate_keys=True)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sid])
        result = dg.materialize(
            [stored_chunks],
            partition_key=sid,
            instance=instance,
            raise_on_error=False,
            resources={
                "pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline)),
                "vault": VaultResource.from_settings(settings),
            },
        )
        assert not result.success
        failure = result.get_step_failure_events()[0].event_specific_data.error.message
        assert "staging file" in failure and "is gone" in failure


def test_rotate_data_keys_job_rewraps_every_dek(tmp_path, backend):
    from lucid_assets.defs.keys.rotation import rotate_data_keys
    from lucid_assets.keyring import prune_retired, rotate_kek

    settings = settings_for(tmp_path, backend)
    vault = VaultResource.from_settings(settings)
    sids = [str(uuid.uuid4()) for _ in range(3)]
    deks = {sid: vault.store.data_key(sid, vault.keyring, create=True) for sid in sids}
    old_id = vault.keyring.active.key_id
    _, new_id = rotate_kek(settings)
    result = rotate_data_keys.execute_in_process(resources={"vault": VaultResource.from_settings(settings)})
    assert result.success
    assert {vault.store.dek_kek_id(sid) for sid in sids} == {new_id} != {old_id}
    assert [p.name for p in prune_retired(settings, {new_id})] == [f"{old_id}.key"]
    fresh = Keyring.load(settings)
    assert old_id not in fresh.keks
    assert {sid: vault.store.data_key(sid, fresh) for sid in sids} == deks  # same DEKs, new wrapping


def recorded_and_finalized(api, tmp_path, name: str, finalize: bool = True) -> str:
    """A session with two real 2 s segments registered and finalized through the pipeline (or,
    without finalize, still recording)."""
    sid = api.post(
        "/sessions", json={"name": name, "video": {"width": 160, "height": 120, "fps": 10}, "chunk_seconds": 2}
    ).json()["id"]
    api.post(f"/sessions/{sid}/transitions", json={"event": "start"})
    for seg in record_segments(tmp_path / "rec" / sid, seconds=4):
        api.post(
            f"/sessions/{sid}/chunks",
            json={
                "seq": seg.seq,
                "sha256": seg.sha256,
                "size": seg.size,
                "frames": seg.frames,
                "duration_ms": seg.duration_ms,
                "path": str(seg.path),
            },
        )
    if not finalize:
        return sid
    api.post(f"/sessions/{sid}/transitions", json={"event": "stop"})
    assert (
        api.post(f"/sessions/{sid}/transitions", json={"event": "finalize", "expected_chunks": 2}).json()["state"]
        == "processing"
    )
    return sid


def test_blocking_check_stops_the_manifest_and_explains_the_failure(pipeline, tmp_path):
    from lucid_assets.defs.sessions.sensors import fail_on_failure as make_fail_on_failure
    from lucid_assets.defs.sessions.sensors import failed_checks

    api = pipeline_client(pipeline)
    sid = recorded_and_finalized(api, tmp_path, "drift")
    settings = Settings(data_dir=tmp_path / "data", generate_keys=True)
    vault = VaultResource.from_settings(settings)
    now = datetime.now(UTC)  # a catalog row the registry does not know: drift the check must catch
    vault.lake.append_missing(
        catalog.CHUNKS,
        sid,
        [
            {
                "session_id": sid,
                "seq": 7,
                "raw_sha256": "0" * 64,
                "envelope_sha256": "0" * 64,
                "raw_size": 1,
                "stored_size": 1,
                "compressed": False,
                "key_version": 1,
                "envelope_uri": "file:///nowhere",
                "duration_ms": 0,
                "recorded_at": now,
                "stored_at": now,
            }
        ],
        key="seq",
    )
    resources = {
        "pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline)),
        "vault": vault,
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sid])
        result = dg.materialize(
            [stored_chunks, session_manifest],
            partition_key=sid,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            tags={"lucid/session": sid},
        )
        assert not result.success
        assert not result.asset_materializations_for_node("session_manifest")  # blocked
        why = failed_checks(instance, result.run_id)
        assert "chunks_readable_and_complete failed" in why and "[0, 1, 7]" in why, why
        run = instance.get_run_by_id(result.run_id)
        failure = [
            e
            for e in instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
        ][0]
        ctx = dg.build_run_status_sensor_context(
            sensor_name="fail_on_failure",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure.dagster_event,
            resources={"pipeline": resources["pipeline"]},
        ).for_run_failure()
        make_fail_on_failure(5)(ctx)
    s = api.get(f"/sessions/{sid}").json()
    assert s["state"] == "failed" and "chunks_readable_and_complete failed" in s["failure_reason"], s
    assert not vault.store.manifest_versions(sid)


def finalized_without_dagster(api, retention_days=None) -> str:
    """An empty session taken to `processing` through the pipeline's own transitions."""
    body = {"name": "ops", "retention_days": retention_days} if retention_days else {"name": "ops"}
    sid = api.post("/sessions", json=body).json()["id"]
    api.post(f"/sessions/{sid}/transitions", json={"event": "start"})
    api.post(f"/sessions/{sid}/transitions", json={"event": "stop"})
    api.post(f"/sessions/{sid}/transitions", json={"event": "finalize", "expected_chunks": 0})
    return sid


def test_reconcile_launches_what_stalled(pipeline):
    from datetime import timedelta

    from lucid_assets.defs.housekeeping.reconcile import reconcile_requests

    api = pipeline_client(pipeline)
    stalled = finalized_without_dagster(api)  # finalized, processing, and no run ever came
    live = api.post("/sessions", json={"name": "live"}).json()["id"]
    api.post(f"/sessions/{live}/transitions", json={"event": "start"})
    api.post(f"/sessions/{live}/chunks", json={"seq": 0, "sha256": "1" * 64, "size": 1, "path": "/p"})
    res = PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline))
    with dg.instance_for_test() as instance:
        requests, new = reconcile_requests(instance, res, idle=timedelta(0))
        # one batch run takes both the finalized session and the live one's unstored chunk
        batches = [r for r in requests if r.job_name == "process_sessions"]
        assert [r.tags["lucid/reason"] for r in batches] == ["reconcile"]
        assert {stalled, live} <= set(new)
        fresh = reconcile_requests(instance, res)[0]  # default idle: fresh sessions are the queue sensor's
        assert not [r for r in fresh if r.job_name == "process_sessions"]


def test_retention_dry_run_lists_and_real_run_shreds(pipeline, tmp_path):
    from datetime import timedelta

    from lucid_assets.defs.housekeeping.retention import retention
    from lucid_assets.defs.resources import StorageServiceResource

    api = pipeline_client(pipeline)
    sid = finalized_without_dagster(api, retention_days=1)
    api.put(f"/sessions/{sid}/manifest", json={"version": 1, "merkle_root": "a" * 64, "manifest_sha256": "b" * 64})
    api.post(f"/sessions/{sid}/transitions", json={"event": "seal"})
    keep = finalized_without_dagster(api)  # no retention: kept forever
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    resources = {
        "pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline)),
        "storage": StorageServiceResource(url=pipeline.url("storage"), token_file=token_file(pipeline)),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sid])
        now = retention.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"apply_retention": {"config": {"dry_run": True}}}},
        )
        assert sid not in now.output_for_node("apply_retention")  # not due yet
        dry = retention.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"apply_retention": {"config": {"dry_run": True, "as_of": later}}}},
        )
        assert sid in dry.output_for_node("apply_retention") and keep not in dry.output_for_node("apply_retention")
        assert api.get(f"/sessions/{sid}").json()["state"] == "sealed"  # a dry run changes nothing
        real = retention.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"apply_retention": {"config": {"dry_run": False, "as_of": later}}}},
        )
        assert sid in real.output_for_node("apply_retention")
        assert not instance.has_dynamic_partition(sessions.name, sid)
    assert api.get(f"/sessions/{sid}").json()["state"] == "deleted"
    assert api.get(f"/sessions/{keep}").json()["state"] == "processing"
    events = [e["entry"] for e in api.get(f"/sessions/{sid}/events").json()["items"]]
    # the audit log names the authenticated caller (Dagster's service token), and why
    assert events[-1]["event"] == "delete" and events[-1]["actor"] == "dagster"
    assert "retention of 1 days" in events[-1]["detail"]["reason"]


def test_maintenance_and_rebuild_jobs_run(tmp_path, backend):
    from lucid_assets.defs.catalog.maintenance import iceberg_maintenance, rebuild_catalog

    vault = VaultResource.from_settings(settings_for(tmp_path, backend))
    now = datetime.now(UTC)
    sid = str(uuid.uuid4())
    for seq in range(5):
        vault.lake.append_missing(
            catalog.CHUNKS,
            sid,
            [
                {
                    "session_id": sid,
                    "seq": seq,
                    "raw_sha256": "0" * 64,
                    "envelope_sha256": "1" * 64,
                    "raw_size": 1,
                    "stored_size": 81,
                    "compressed": False,
                    "key_version": 1,
                    "envelope_uri": "file:///x",
                    "duration_ms": 0,
                    "recorded_at": now,
                    "stored_at": now,
                }
            ],
            key="seq",
        )
    before = vault.lake.rows(catalog.CHUNKS, sid)
    started_ms = time.time() * 1000
    result = iceberg_maintenance.execute_in_process(
        resources={"vault": vault},
        run_config={
            "ops": {"iceberg_maintenance_op": {"config": {"expire_older_than_days": 0, "min_files_per_partition": 2}}}
        },
    )
    assert result.success
    assert vault.lake.rows(catalog.CHUNKS, sid) == before
    table = vault.lake.table(catalog.CHUNKS)
    assert len(list(table.scan().plan_files())) == 1  # five small files became one
    assert all(snap.timestamp_ms >= started_ms for snap in table.metadata.snapshots)  # older ones expired
    # nothing on disk backs these rows: a rebuild from the files replaces them with nothing
    assert rebuild_catalog.execute_in_process(resources={"vault": vault}).success


def test_archive_drops_only_old_sealed_partitions(pipeline):
    from lucid_assets.defs.housekeeping.retention import archive_partitions

    api = pipeline_client(pipeline)
    sealed = finalized_without_dagster(api)
    api.put(f"/sessions/{sealed}/manifest", json={"version": 1, "merkle_root": "a" * 64, "manifest_sha256": "b" * 64})
    api.post(f"/sessions/{sealed}/transitions", json={"event": "seal"})
    busy = finalized_without_dagster(api)  # still processing: never archived
    res = {"pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sealed, busy])
        kept = archive_partitions.execute_in_process(
            instance=instance,
            resources=res,
            run_config={"ops": {"archive_partitions_op": {"config": {"older_than_days": 1}}}},
        )
        assert kept.output_for_node("archive_partitions_op") == []  # sealed just now: not old enough
        done = archive_partitions.execute_in_process(
            instance=instance,
            resources=res,
            run_config={"ops": {"archive_partitions_op": {"config": {"older_than_days": -1}}}},
        )
        assert sealed in done.output_for_node("archive_partitions_op")
        assert not instance.has_dynamic_partition(sessions.name, sealed)
        assert instance.has_dynamic_partition(sessions.name, busy)
    assert api.get(f"/sessions/{sealed}").json()["state"] == "sealed"  # everything else is kept


def test_forced_reprocess_writes_new_envelopes_and_a_new_manifest_version(pipeline, tmp_path, backend):
    api = pipeline_client(pipeline)
    sid = recorded_and_finalized(api, tmp_path, "forced")
    settings = settings_for(tmp_path / "data", backend)
    vault = VaultResource.from_settings(settings)
    resources = {
        "pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline)),
        "vault": vault,
    }
    force = {"ops": {name: {"config": {"force": True}} for name in ("stored_chunks", "session_manifest")}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sid])
        assert dg.materialize(
            [stored_chunks, session_manifest], partition_key=sid, instance=instance, resources=resources
        ).success
        v1 = vault.store.read_manifest(sid, 1)
        before = {s: vault.store.read_envelope(sid, s) for s in range(2)}
        assert dg.materialize(
            [stored_chunks, session_manifest],
            partition_key=sid,
            instance=instance,
            resources=resources,
            run_config=force,
        ).success
    assert vault.store.manifest_versions(sid) == [1, 2]
    assert vault.store.read_manifest(sid, 1) == v1  # the old version's record is kept
    after = {s: vault.store.read_envelope(sid, s) for s in range(2)}
    assert all(after[s] != before[s] for s in range(2))  # new envelopes (new nonces)
    rows = vault.lake.rows(catalog.CHUNKS, sid)
    assert [r["seq"] for r in rows] == [0, 1]  # replaced, not duplicated
    assert [r["manifest_version"] for r in vault.lake.rows(catalog.SESSIONS, sid)] == [1, 2]
    events = api.get(f"/sessions/{sid}/events").json()["items"]
    assert "reprocess" in [e["entry"]["event"] for e in events]
    keyring = Keyring.load(settings)
    state = api.get(f"/sessions/{sid}").json()
    assert state["manifest_version"] == 2
    report = verify_stored(
        vault.store,
        keyring,
        keyring.signing.public_key(),
        sid,
        audit_rows=events,
        registry_manifest_sha256=state["manifest_sha256"],
    ).as_dict()
    assert report["ok"], report["problems"]
    superseded = [d for d in vault.store.objects.dirs(sid) if d.startswith("checkpoints.superseded-")]
    assert len(superseded) == 1 and vault.store.objects.list(f"{sid}/{superseded[0]}")  # the old chain, kept
    assert vault.store.checkpoints(sid)  # and a new one


def test_a_premature_manual_run_does_not_fail_a_recording_session(pipeline, tmp_path):
    from lucid_assets.defs.sessions.sensors import fail_on_failure as make_fail_on_failure

    api = pipeline_client(pipeline)
    sid = api.post("/sessions", json={"name": "still recording"}).json()["id"]
    api.post(f"/sessions/{sid}/transitions", json={"event": "start"})
    resources = {
        "pipeline": PipelineResource(url=pipeline.url("pipeline"), token_file=token_file(pipeline)),
        "vault": VaultResource.from_settings(Settings(data_dir=tmp_path, generate_keys=True)),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sessions.name, [sid])
        result = dg.materialize(
            [session_manifest], partition_key=sid, instance=instance, resources=resources, raise_on_error=False
        )  # an operator's "materialize" before the session ended
        assert not result.success
        failure = [
            e
            for e in instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
        ][0]
        ctx = dg.build_run_status_sensor_context(
            sensor_name="fail_on_failure",
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
            dagster_event=failure.dagster_event,
            resources={"pipeline": resources["pipeline"]},
        ).for_run_failure()
        assert isinstance(make_fail_on_failure(5)(ctx), dg.SkipReason)
    assert api.get(f"/sessions/{sid}").json()["state"] == "recording"


def _events(instance, run_id: str, kind) -> dict[str, list]:
    """Asset events of a run by asset key: the partitions they name, with their data."""
    out: dict[str, list] = {}
    for rec in instance.get_records_for_run(run_id, of_type=kind).records:
        ev = rec.event_log_entry.dagster_event
        data = ev.event_specific_data
        key = data.materialization.asset_key if kind == dg.DagsterEventType.ASSET_MATERIALIZATION else data.asset_key
        part = data.materialization.partition if kind == dg.DagsterEventType.ASSET_MATERIALIZATION else data.partition
        out.setdefault(key.to_user_string(), []).append((part, data))
    return out


def test_one_batch_run_reports_each_session_it_touched_and_no_other(fresh_pipeline, tmp_path):
    """Live processing: one process_sessions run for several sessions; a materialization (and check)
    per session it processed, none for a session it did not touch; the finalized one is sealed."""
    from lucid_assets.defs.sessions.batch import process_sessions

    api = pipeline_client(fresh_pipeline)
    live = recorded_and_finalized(api, tmp_path, "live", finalize=False)
    final = recorded_and_finalized(api, tmp_path, "final")
    idle = api.post("/sessions", json={"name": "idle"}).json()["id"]
    api.post(f"/sessions/{idle}/transitions", json={"event": "start"})  # recording, nothing registered
    settings = Settings(data_dir=tmp_path / "data", generate_keys=True)
    resources = {
        "pipeline": PipelineResource(url=fresh_pipeline.url("pipeline"), token_file=token_file(fresh_pipeline)),
        "vault": VaultResource.from_settings(settings),
    }
    with dg.instance_for_test() as instance:
        result = process_sessions.execute_in_process(instance=instance, resources=resources)
        assert result.success
        mats = _events(instance, result.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert sorted(p for p, _ in mats["stored_chunks"]) == sorted([live, final])
        assert [p for p, _ in mats["session_manifest"]] == [final]
        manifest = mats["session_manifest"][0][1].materialization.metadata["manifest"].value
        assert manifest == resources["vault"].store.manifest_uri(final, 1)
        assert idle not in {p for ev in mats.values() for p, _ in ev}
        checks = _events(instance, result.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        assert all(c.passed for ev in checks.values() for _, c in ev)
        assert sorted(p for p, _ in checks["stored_chunks"]) == sorted([live, final])
        assert set(instance.get_dynamic_partitions(sessions.name)) >= {live, final}
        again = process_sessions.execute_in_process(instance=instance, resources=resources)
        assert again.success  # nothing left to do: no event at all
        assert not _events(instance, again.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert api.get(f"/sessions/{final}").json()["state"] == "sealed"
    s = api.get(f"/sessions/{live}").json()
    assert (s["state"], s["chunks_stored"], s["chunk_count"]) == ("recording", 2, 2)
    vault = resources["vault"]
    assert [c["body"]["tree_size"] for c in vault.store.checkpoints(live)] == [2]
    assert sorted(vault.lake.keys_by_session(catalog.CHUNKS, [live, final, idle], "seq").items()) == sorted(
        [(live, [0, 1]), (final, [0, 1])]
    )


def test_a_batch_run_leaves_what_another_run_holds(fresh_pipeline, tmp_path):
    """Issue 17: two processing workers split the queue. A session another run has claimed is not
    touched (no event, not sealed); the run releases its own claims when it ends, and once the other
    run lets go the next batch seals what it held."""
    from lucid_assets.defs.sessions.batch import process_sessions

    api = pipeline_client(fresh_pipeline)
    live = recorded_and_finalized(api, tmp_path, "live", finalize=False)
    held = recorded_and_finalized(api, tmp_path, "held")
    taken = api.post("/work/claims", json={"holder": "other-worker", "limit": 1, "lease_seconds": 300}).json()
    assert [i["session"]["id"] for i in taken["items"]] == [held], "finalized sessions are claimed first"
    resources = {
        "pipeline": PipelineResource(url=fresh_pipeline.url("pipeline"), token_file=token_file(fresh_pipeline)),
        "vault": VaultResource.from_settings(Settings(data_dir=tmp_path / "data", generate_keys=True)),
    }
    with dg.instance_for_test() as instance:
        result = process_sessions.execute_in_process(instance=instance, resources=resources)
        mats = _events(instance, result.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert [p for p, _ in mats["stored_chunks"]] == [live] and "session_manifest" not in mats
        assert api.get(f"/sessions/{held}").json()["state"] == "processing"
        holders = {i["session"]["id"]: i["claimed_by"] for i in api.get("/work/pending").json()["items"]}
        assert holders == {held: "other-worker"}, "the run released its own claims; the other's stand"
        assert api.delete("/work/claims/other-worker").json()["sessions"] == 1
        after = process_sessions.execute_in_process(instance=instance, resources=resources)
        mats = _events(instance, after.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert [p for p, _ in mats["session_manifest"]] == [held]
    assert api.get(f"/sessions/{held}").json()["state"] == "sealed"
    assert api.get("/work/pending").json()["items"] == []


def test_a_failing_session_does_not_fail_or_delay_the_others(fresh_pipeline, tmp_path):
    """In one batch: a live session whose staging file is gone, a finalized one whose chunk was
    tampered with on disk, and a healthy finalized one. The healthy one is sealed in this run; the
    broken ones are reported (failed checks, the finalized one failed with the reason); the run
    says how many failed."""
    from lucid_assets.defs.sessions.batch import process_sessions

    api = pipeline_client(fresh_pipeline)
    gone = api.post("/sessions", json={"name": "gone"}).json()["id"]
    api.post(f"/sessions/{gone}/transitions", json={"event": "start"})
    api.post(
        f"/sessions/{gone}/chunks", json={"seq": 0, "sha256": "a" * 64, "size": 10, "path": str(tmp_path / "gone.ts")}
    )
    tampered = recorded_and_finalized(api, tmp_path, "tampered")
    path = Path(api.get(f"/sessions/{tampered}/chunks").json()["items"][1]["path"])
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    healthy = recorded_and_finalized(api, tmp_path, "healthy")
    settings = Settings(data_dir=tmp_path / "data", generate_keys=True)
    resources = {
        "pipeline": PipelineResource(url=fresh_pipeline.url("pipeline"), token_file=token_file(fresh_pipeline)),
        "vault": VaultResource.from_settings(settings),
    }
    with dg.instance_for_test() as instance:
        result = process_sessions.execute_in_process(instance=instance, resources=resources, raise_on_error=False)
        assert not result.success  # the run says it: 2 of 3 failed
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
        assert "2 of 3 sessions failed" in failure.event_specific_data.error.message
        mats = _events(instance, result.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert [p for p, _ in mats["stored_chunks"]] == [healthy]
        assert [p for p, _ in mats["session_manifest"]] == [healthy]
        checks = _events(instance, result.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        verdicts = {p: c.passed for p, c in checks["stored_chunks"]}
        assert verdicts == {gone: False, tampered: False, healthy: True}
    assert api.get(f"/sessions/{healthy}").json()["state"] == "sealed"
    t = api.get(f"/sessions/{tampered}").json()
    assert t["state"] == "failed" and "chunk 1" in t["failure_reason"] and "SHA-256" in t["failure_reason"], t
    g = api.get(f"/sessions/{gone}").json()
    assert g["state"] == "recording" and g["chunks_stored"] == 0  # live: left for the next batch to retry
    waiting = api.get("/work/pending").json()["items"]
    assert [(i["session"]["id"], i["claimed_by"]) for i in waiting] == [(gone, None)], "a failed run releases too"


def test_every_processing_run_is_bounded_by_run_monitoring():
    """A hung run would hold the one batch slot (or its session's): every processing job carries a
    max runtime that the daemon's run monitoring (enabled in both instances) enforces."""
    from lucid_assets.defs.sessions import batch, jobs

    for job in (batch.process_sessions, jobs.seal_session, jobs.store_chunks):
        assert int(job.tags["dagster/max_runtime"]) == batch.BATCH_MAX_RUNTIME_S, job.name
