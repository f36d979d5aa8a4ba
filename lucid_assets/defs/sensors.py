"""Sensors: the pipeline's work queue becomes runs; run outcomes go back to the pipeline."""

import dagster as dg

from .jobs import seal_session
from .partitions import sessions
from .resources import PipelineError, PipelineResource

SESSION_TAG = "lucid/session"


@dg.sensor(job=seal_session, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Reads the pipeline's work queue by cursor, adds session partitions and requests one "
                       "run per session batch (run key session:seq:item).")
def work_queue_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    after = int(context.cursor or 0)
    items = pipeline.get("/work", after=after, limit=500)["items"]
    if not items:
        return dg.SkipReason(f"no work after item {after}")
    latest: dict[str, dict] = {}
    for item in items:  # one run per session per tick, for the newest item
        latest[item["session_id"]] = item
    known = set(context.instance.get_dynamic_partitions(sessions.name))
    new = sorted(set(latest) - known)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=sid, run_key=f"{sid}:{it['up_to_seq']}:w{it['id']}",
                          tags={SESSION_TAG: sid, "lucid/reason": it["reason"]})
            for sid, it in latest.items()
        ],
        dynamic_partitions_requests=[sessions.build_add_request(new)] if new else [],
        cursor=str(items[-1]["id"]),
    )


def _session_of(run: dg.DagsterRun) -> str | None:
    return run.tags.get("dagster/partition")


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[seal_session],
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5,
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
                       minimum_interval_seconds=5,
                       description="A failed seal run fails its session in the pipeline, with the step's error.")
def fail_on_failure(context: dg.RunFailureSensorContext, pipeline: PipelineResource):
    sid = _session_of(context.dagster_run)
    if not sid:
        return dg.SkipReason("run has no session partition")
    steps = context.get_step_failure_events()
    why = "; ".join(f"{e.step_key}: {e.event_specific_data.error.message.strip()}" for e in steps
                    if e.event_specific_data and e.event_specific_data.error) or context.failure_event.message
    try:
        pipeline.post(f"/sessions/{sid}/transitions",
                      {"event": "fail", "actor": "dagster",
                       "reason": f"run {context.dagster_run.run_id} failed: {why}"[:2000]})
    except PipelineError as exc:
        if exc.status == 409:
            return dg.SkipReason(f"{sid} is {exc.body.get('state')}; failure not applied")
        raise
