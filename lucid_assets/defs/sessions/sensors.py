"""Sensors: the pipeline's work queue becomes runs; run outcomes go back to the pipeline. Built by
factories (their interval is a setting, read when the code location loads, not at import)."""

from datetime import UTC, datetime

import dagster as dg

from lucid_assets.clients import ServiceError
from lucid_assets.core.states import Event, State, WorkReason
from lucid_assets.settings import get_settings

from ..resources import PipelineResource
from . import batch, jobs
from .batch import BATCH_TAG
from .partitions import sessions

SESSION_TAG = "lucid/session"
REASON_TAG = "lucid/reason"
WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


def batch_waiting(instance: dg.DagsterInstance) -> bool:
    """A batch run that has not started yet: it will take whatever is pending when it starts."""
    return bool(instance.get_runs(dg.RunsFilter(tags={BATCH_TAG: "live"}, statuses=WAITING), limit=1))


def last_batch_age(instance: dg.DagsterInstance) -> float | None:
    records = instance.get_run_records(dg.RunsFilter(tags={BATCH_TAG: "live"}), limit=1)
    if not records:
        return None
    created = records[0].create_timestamp
    return (datetime.now(UTC) - (created if created.tzinfo else created.replace(tzinfo=UTC))).total_seconds()


def work_queue_sensor(interval: int, batch_interval: int = 10) -> dg.SensorDefinition:
    @dg.sensor(
        name="work_queue_sensor",
        jobs=[batch.process_sessions],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reads the pipeline's work queue by cursor, adds a partition for every new session and, "
        "when there is new work and no batch run is waiting to start, requests one process_sessions run: "
        "it takes every session with work, live or finalized. A waiting run absorbs newer work. Live work "
        f"starts a batch at most every {batch_interval} s; a finalized session starts one at once.",
    )
    def sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        after = int(context.cursor or 0)
        items = pipeline.client.work(after=after, limit=1000)
        if not items:
            return dg.SkipReason(f"no work after item {after}")
        final = any(item.reason != WorkReason.CHUNKS for item in items)
        age = last_batch_age(context.instance)
        if not final and age is not None and age < batch_interval:
            # cursor kept: these items start the next batch once the interval has passed
            return dg.SkipReason(f"{len(items)} live items wait: the last batch started {age:.0f} s ago")
        sids = sorted({item.session_id for item in items})
        new = [sid for sid in sids if not context.instance.has_dynamic_partition(sessions.name, sid)]
        requests = []
        if not batch_waiting(context.instance):
            requests.append(
                dg.RunRequest(
                    run_key=f"batch:{items[-1].id}",
                    job_name=batch.process_sessions.name,
                    tags={BATCH_TAG: "live", REASON_TAG: (WorkReason.FINAL if final else WorkReason.CHUNKS).value},
                )
            )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[sessions.build_add_request(new)] if new else [],
            cursor=str(items[-1].id),
        )

    return sensor


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> str:
    """The explanation of every failed asset check of a run (what an operator needs to read first)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    out = []
    for rec in records:
        ev = rec.event_log_entry.dagster_event.event_specific_data
        if not ev.passed:
            out.append(f"check {ev.check_name} failed: {ev.description}")
    return "; ".join(out)


def _session_of(run: dg.DagsterRun) -> str | None:
    return run.tags.get("dagster/partition")


def seal_on_success(interval: int) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="seal_on_success",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[jobs.seal_session],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
        description="A successful seal run seals its session in the pipeline.",
    )
    def sensor(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
        sid = _session_of(context.dagster_run)
        if not sid:
            return dg.SkipReason("run has no session partition")
        try:
            pipeline.client.transition(sid, Event.SEAL, reason=f"run {context.dagster_run.run_id} succeeded")
        except ServiceError as exc:
            if exc.status == 409 and exc.state == State.SEALED:
                return dg.SkipReason(f"{sid} was already sealed (a rerun re-verified it)")
            raise

    return sensor


def _failure_reason(context: dg.RunFailureSensorContext) -> str:
    why = failed_checks(context.instance, context.dagster_run.run_id)
    steps = context.get_step_failure_events()
    return (
        why
        or "; ".join(
            f"{e.step_key}: {e.event_specific_data.error.message.strip()}"
            for e in steps
            if e.event_specific_data and e.event_specific_data.error
        )
        or context.failure_event.message
    )


def fail_on_failure(interval: int) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="fail_on_failure",
        monitored_jobs=[jobs.seal_session],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
        description="A failed seal run fails its session in the pipeline, with the step's error.",
    )
    def sensor(context: dg.RunFailureSensorContext, pipeline: PipelineResource):
        sid = _session_of(context.dagster_run)
        if not sid:
            return dg.SkipReason("run has no session partition")
        state = pipeline.client.session(sid).state
        if state in (State.RECORDING, State.PAUSED, State.SEALED, State.DELETED):
            # a run launched by hand before the session was finalized (or after it was sealed) failing
            # does not end the recording, nor unseal what is sealed
            return dg.SkipReason(f"{sid} is {state}: a failed run does not change it")
        reason = f"run {context.dagster_run.run_id} failed: {_failure_reason(context)}"[:2000]
        try:
            pipeline.client.transition(sid, Event.FAIL, reason=reason)
        except ServiceError as exc:
            if exc.status == 409:
                return dg.SkipReason(f"{sid} is {exc.state}; failure not applied")
            raise

    return sensor


@dg.definitions
def defs() -> dg.Definitions:
    s = get_settings()
    interval = s.sensor_interval_seconds
    return dg.Definitions(
        sensors=[
            work_queue_sensor(interval, s.batch_interval_seconds),
            seal_on_success(interval),
            fail_on_failure(interval),
        ]
    )
