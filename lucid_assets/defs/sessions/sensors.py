"""Sensors: the pipeline's work queue becomes runs; run outcomes go back to the pipeline. Built by
factories (their interval is a setting, read when the code location loads, not at import)."""

import dagster as dg

from lucid_assets.clients import ServiceError
from lucid_assets.core.states import Event, State, WorkReason
from lucid_assets.settings import get_settings

from ..resources import PipelineResource
from . import jobs
from .partitions import sessions

SESSION_TAG = "lucid/session"
REASON_TAG = "lucid/reason"
ACTOR = "dagster"
WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


def work_queue_sensor(interval: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="work_queue_sensor",
        jobs=[jobs.seal_session, jobs.store_chunks],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reads the pipeline's work queue by cursor, adds session partitions and requests one "
        "run per session batch (run key session:seq:item): store_chunks while recording, "
        "seal_session once finalized. A batch already waiting to start absorbs newer chunks.",
    )
    def sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        after = int(context.cursor or 0)
        items = pipeline.client.work(after=after, limit=500)
        if not items:
            return dg.SkipReason(f"no work after item {after}")
        latest = {item.session_id: item for item in items}  # one run per session per tick, for the newest item
        sealing = {item.session_id for item in items if item.reason != WorkReason.CHUNKS}
        requests = []
        for sid, it in latest.items():
            if sid not in sealing and context.instance.get_runs(
                dg.RunsFilter(tags={SESSION_TAG: sid}, statuses=WAITING), limit=1
            ):
                continue  # a batch for this session has not started yet: it will read these chunks too
            final = sid in sealing
            requests.append(
                dg.RunRequest(
                    partition_key=sid,
                    run_key=f"{sid}:{it.up_to_seq}:w{it.id}",
                    job_name=(jobs.seal_session if final else jobs.store_chunks).name,
                    tags={SESSION_TAG: sid, REASON_TAG: (WorkReason.FINAL if final else WorkReason.CHUNKS).value},
                )
            )
        new = sorted(sid for sid in latest if not context.instance.has_dynamic_partition(sessions.name, sid))
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
            pipeline.client.transition(
                sid, Event.SEAL, actor=ACTOR, reason=f"run {context.dagster_run.run_id} succeeded"
            )
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
            pipeline.client.transition(sid, Event.FAIL, actor=ACTOR, reason=reason)
        except ServiceError as exc:
            if exc.status == 409:
                return dg.SkipReason(f"{sid} is {exc.state}; failure not applied")
            raise

    return sensor


@dg.definitions
def defs() -> dg.Definitions:
    interval = get_settings().sensor_interval_seconds
    return dg.Definitions(sensors=[work_queue_sensor(interval), seal_on_success(interval), fail_on_failure(interval)])
