"""Sensors: the pipeline's work queue becomes runs; run outcomes go back to the pipeline."""

import dagster as dg

from .jobs import seal_session, store_chunks
from .partitions import sessions
from .resources import PipelineError, PipelineResource
from ..settings import get_settings

SESSION_TAG = "lucid/session"
INTERVAL = get_settings().sensor_interval_seconds


WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


@dg.sensor(jobs=[seal_session, store_chunks], minimum_interval_seconds=INTERVAL,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Reads the pipeline's work queue by cursor, adds session partitions and requests one "
                       "run per session batch (run key session:seq:item): store_chunks while recording, "
                       "seal_session once finalized. A batch already waiting to start absorbs newer chunks.")
def work_queue_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    after = int(context.cursor or 0)
    items = pipeline.get("/work", after=after, limit=500)["items"]
    if not items:
        return dg.SkipReason(f"no work after item {after}")
    latest: dict[str, dict] = {}
    sealing: set[str] = set()
    for item in items:  # one run per session per tick, for the newest item
        latest[item["session_id"]] = item
        if item["reason"] != "chunks":
            sealing.add(item["session_id"])
    requests = []
    for sid, it in latest.items():
        if sid not in sealing and context.instance.get_runs(
                dg.RunsFilter(tags={SESSION_TAG: sid}, statuses=WAITING), limit=1):
            continue  # a batch for this session has not started yet: it will read these chunks too
        requests.append(dg.RunRequest(
            partition_key=sid, run_key=f"{sid}:{it['up_to_seq']}:w{it['id']}",
            job_name=(seal_session if sid in sealing else store_chunks).name,
            tags={SESSION_TAG: sid, "lucid/reason": "final" if sid in sealing else "chunks"}))
    new = sorted(sid for sid in latest if not context.instance.has_dynamic_partition(sessions.name, sid))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[sessions.build_add_request(new)] if new else [],
        cursor=str(items[-1]["id"]),
    )


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


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[seal_session],
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=INTERVAL,
                      description="A successful seal run seals its session in the pipeline.")
def seal_on_success(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
    sid = _session_of(context.dagster_run)
    if not sid:
        return dg.SkipReason("run has no session partition")
    try:
        pipeline.post(f"/sessions/{sid}/transitions",
                      {"event": "seal", "actor": "dagster", "reason": f"run {context.dagster_run.run_id} succeeded"})
    except PipelineError as exc:
        if exc.status == 409 and exc.body.get("state") == "sealed":
            return dg.SkipReason(f"{sid} was already sealed (a rerun re-verified it)")
        raise


@dg.run_failure_sensor(monitored_jobs=[seal_session], default_status=dg.DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=INTERVAL,
                       description="A failed seal run fails its session in the pipeline, with the step's error.")
def fail_on_failure(context: dg.RunFailureSensorContext, pipeline: PipelineResource):
    sid = _session_of(context.dagster_run)
    if not sid:
        return dg.SkipReason("run has no session partition")
    state = pipeline.get(f"/sessions/{sid}")["state"]
    if state in ("recording", "paused", "sealed", "deleted"):
        # a run launched by hand before the session was finalized (or after it was sealed) failing
        # does not end the recording, nor unseal what is sealed
        return dg.SkipReason(f"{sid} is {state}: a failed run does not change it")
    why = failed_checks(context.instance, context.dagster_run.run_id)
    steps = context.get_step_failure_events()
    why = why or "; ".join(f"{e.step_key}: {e.event_specific_data.error.message.strip()}" for e in steps
                           if e.event_specific_data and e.event_specific_data.error) or context.failure_event.message
    try:
        pipeline.post(f"/sessions/{sid}/transitions",
                      {"event": "fail", "actor": "dagster",
                       "reason": f"run {context.dagster_run.run_id} failed: {why}"[:2000]})
    except PipelineError as exc:
        if exc.status == 409:
            return dg.SkipReason(f"{sid} is {exc.body.get('state')}; failure not applied")
        raise
