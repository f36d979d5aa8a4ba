"""Reconcile: the sensor that heals after a crash of any component by launching the runs sessions
are missing."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from lucid_assets.core.states import State, WorkReason
from lucid_assets.files import clean_stale_tmp

from ..resources import PipelineResource, VaultResource
from ..sessions import batch, jobs
from ..sessions.batch import BATCH_TAG
from ..sessions.partitions import sessions
from ..sessions.sensors import REASON_TAG, SESSION_TAG, WAITING

ACTIVE = WAITING + [dg.DagsterRunStatus.STARTED]
MAX_RETRIES = 3
IDLE = timedelta(minutes=2)  # leave fresh sessions to the work-queue sensor


def _stalled_batch(instance: dg.DagsterInstance, client, settled: datetime) -> tuple[list[dg.RunRequest], list[str]]:
    """Sessions with work (live chunks, or finalized) and no batch run in flight: one batch takes them."""
    stalled = [
        p.session.id for p in client.pending(limit=500).items if datetime.fromisoformat(p.session.updated_at) <= settled
    ]
    if not stalled or instance.get_runs(dg.RunsFilter(tags={BATCH_TAG: "live"}, statuses=ACTIVE), limit=1):
        return [], []
    new = [sid for sid in stalled if not instance.has_dynamic_partition(sessions.name, sid)]
    request = dg.RunRequest(
        job_name=batch.process_sessions.name, tags={BATCH_TAG: "live", REASON_TAG: WorkReason.RECONCILE.value}
    )
    return [request], new


def _failed_retries(instance: dg.DagsterInstance, client, settled: datetime) -> tuple[list[dg.RunRequest], list[str]]:
    """Sessions whose processing failed after they were finalized: a seal run each, at most 3 tries."""
    requests, new = [], []
    for s in client.all_sessions(State.FAILED):
        if s.expected_chunks is None or datetime.fromisoformat(s.updated_at) > settled:
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": s.id}), limit=50)
        if any(r.status in ACTIVE for r in runs):
            continue
        if sum(1 for r in runs if r.tags.get(REASON_TAG) == WorkReason.RECONCILE) >= MAX_RETRIES:
            continue
        if not instance.has_dynamic_partition(sessions.name, s.id):
            new.append(s.id)
        requests.append(
            dg.RunRequest(
                partition_key=s.id,
                job_name=jobs.seal_session.name,
                tags={SESSION_TAG: s.id, REASON_TAG: WorkReason.RECONCILE.value},
            )
        )
    return requests, new


def reconcile_requests(
    instance: dg.DagsterInstance, pipeline: PipelineResource, idle: timedelta = IDLE
) -> tuple[list[dg.RunRequest], list[str]]:
    """What stalled: sessions with work and no batch in flight (one batch run), and sessions whose
    processing failed (a seal run each, bounded retries). (requests, partitions to add)"""
    settled = datetime.now(UTC) - idle
    batch_requests, batch_new = _stalled_batch(instance, pipeline.client, settled)
    retry_requests, retry_new = _failed_retries(instance, pipeline.client, settled)
    return batch_requests + retry_requests, sorted(set(batch_new + retry_new))


@dg.sensor(
    jobs=[jobs.seal_session, batch.process_sessions],
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 5 minutes, a reconciling backfill: launch the runs sessions are missing - finalized "
    "sessions without a run in flight, failed processing (at most 3 retries), recordings with "
    "unstored chunks. How the platform heals after a crash of any component. Also removes the "
    "temporary files a process killed mid-write left in the chunk store.",
)
def reconcile(context: dg.SensorEvaluationContext, pipeline: PipelineResource, vault: VaultResource):
    left = clean_stale_tmp(Path(vault.chunk_store))
    if left:
        context.log.info(f"removed {len(left)} stale temporary files from the chunk store")
    requests, new = reconcile_requests(context.instance, pipeline)
    if not requests:
        return dg.SkipReason("every session's processing is on track")
    return dg.SensorResult(
        run_requests=requests, dynamic_partitions_requests=[sessions.build_add_request(new)] if new else []
    )
