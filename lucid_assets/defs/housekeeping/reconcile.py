"""Reconcile: the sensor that heals after a crash of any component by launching the runs sessions
are missing."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from lucid_assets.core.states import State, WorkReason
from lucid_assets.models import Session

from ..resources import PipelineResource
from ..sessions import jobs
from ..sessions.partitions import sessions
from ..sessions.sensors import REASON_TAG, SESSION_TAG, WAITING

ACTIVE = WAITING + [dg.DagsterRunStatus.STARTED]
MAX_RETRIES = 3
IDLE = timedelta(minutes=2)  # leave fresh sessions to the work-queue sensor


def _candidates(client) -> list[tuple[Session, dg.JobDefinition]]:
    out = [(s, jobs.seal_session) for s in client.all_sessions(State.PROCESSING)]
    out += [(s, jobs.seal_session) for s in client.all_sessions(State.FAILED) if s.expected_chunks is not None]
    out += [
        (s, jobs.store_chunks)
        for state in (State.RECORDING, State.PAUSED)
        for s in client.all_sessions(state)
        if s.chunks_stored < s.chunk_count
    ]
    return out


def reconcile_requests(
    instance: dg.DagsterInstance, pipeline: PipelineResource, idle: timedelta = IDLE
) -> tuple[list[dg.RunRequest], list[str]]:
    """Sessions whose processing stalled: finalized without a run in flight, failed in processing
    (bounded retries), or recording with chunks not stored and no batch waiting."""
    requests, new = [], []
    settled = datetime.now(UTC) - idle
    for s, job in _candidates(pipeline.client):
        if datetime.fromisoformat(s.updated_at) > settled:
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": s.id}), limit=50)
        if any(r.status in ACTIVE for r in runs):
            continue
        if s.state == State.FAILED:
            tries = sum(1 for r in runs if r.tags.get(REASON_TAG) == WorkReason.RECONCILE)
            if tries >= MAX_RETRIES:
                continue
        if not instance.has_dynamic_partition(sessions.name, s.id):
            new.append(s.id)
        requests.append(
            dg.RunRequest(
                partition_key=s.id, job_name=job.name, tags={SESSION_TAG: s.id, REASON_TAG: WorkReason.RECONCILE.value}
            )
        )
    return requests, new


@dg.sensor(
    jobs=[jobs.seal_session, jobs.store_chunks],
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 5 minutes, a reconciling backfill: launch the runs sessions are missing - finalized "
    "sessions without a run in flight, failed processing (at most 3 retries), recordings with "
    "unstored chunks. How the platform heals after a crash of any component.",
)
def reconcile(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    requests, new = reconcile_requests(context.instance, pipeline)
    if not requests:
        return dg.SkipReason("every session's processing is on track")
    return dg.SensorResult(
        run_requests=requests, dynamic_partitions_requests=[sessions.build_add_request(new)] if new else []
    )
