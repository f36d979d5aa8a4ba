"""Schedules that keep the platform healthy: reconcile (heal after any crash) and retention."""
from datetime import datetime, timedelta, timezone

import dagster as dg

from .jobs import seal_session, store_chunks
from .partitions import sessions
from .resources import PipelineError, PipelineResource, StorageServiceResource
from .sensors import SESSION_TAG, WAITING

ACTIVE = WAITING + [dg.DagsterRunStatus.STARTED]
MAX_RETRIES = 3
IDLE = timedelta(minutes=2)  # leave fresh sessions to the work-queue sensor


def _all(pipeline: PipelineResource, state: str) -> list[dict]:
    out, offset = [], 0
    while True:
        page = pipeline.get("/sessions", state=state, limit=500, offset=offset)
        out += page["items"]
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return out


def reconcile_requests(instance: dg.DagsterInstance, pipeline: PipelineResource,
                       idle: timedelta = IDLE) -> tuple[list[dg.RunRequest], list[str]]:
    """Sessions whose processing stalled: finalized without a run in flight, failed in processing
    (bounded retries), or recording with chunks not stored and no batch waiting."""
    requests, new = [], []
    candidates = [(s, seal_session) for s in _all(pipeline, "processing")]
    candidates += [(s, seal_session) for s in _all(pipeline, "failed") if s["expected_chunks"] is not None]
    candidates += [(s, store_chunks) for state in ("recording", "paused") for s in _all(pipeline, state)
                   if s["chunks_stored"] < s["chunk_count"]]
    settled = datetime.now(timezone.utc) - idle
    for s, job in candidates:
        sid = s["id"]
        if datetime.fromisoformat(s["updated_at"]) > settled:
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": sid}), limit=50)
        if any(r.status in ACTIVE for r in runs):
            continue
        if s["state"] == "failed":
            tries = sum(1 for r in runs if r.tags.get("lucid/reason") == "reconcile")
            if tries >= MAX_RETRIES:
                continue
        if not instance.has_dynamic_partition(sessions.name, sid):
            new.append(sid)
        requests.append(dg.RunRequest(partition_key=sid, job_name=job.name,
                                      tags={SESSION_TAG: sid, "lucid/reason": "reconcile"}))
    return requests, new


@dg.sensor(jobs=[seal_session, store_chunks], minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every 5 minutes, a reconciling backfill: launch the runs sessions are missing - finalized "
                       "sessions without a run in flight, failed processing (at most 3 retries), recordings with "
                       "unstored chunks. How the platform heals after a crash of any component.")
def reconcile(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    requests, new = reconcile_requests(context.instance, pipeline)
    if not requests:
        return dg.SkipReason("every session's processing is on track")
    return dg.SensorResult(run_requests=requests,
                           dynamic_partitions_requests=[sessions.build_add_request(new)] if new else [])


class RetentionConfig(dg.Config):
    dry_run: bool = True
    as_of: str | None = None  # ISO time to evaluate retention at (default now): "what goes by then?"


@dg.op(description="Crypto-shred sealed and failed sessions older than their retention_days: the pipeline marks "
                   "them deleted, the storage service destroys their data key, envelopes, staging files and "
                   "chunk rows, and their Dagster partition is dropped. With dry_run only lists them.")
def apply_retention(context: dg.OpExecutionContext, config: RetentionConfig, pipeline: PipelineResource,
                    storage: StorageServiceResource) -> dg.Output:
    now = datetime.fromisoformat(config.as_of) if config.as_of else datetime.now(timezone.utc)
    due = []
    for state in ("sealed", "failed"):
        for s in _all(pipeline, state):
            since = s["sealed_at"] or s["stopped_at"] or s["created_at"]
            if s["retention_days"] and datetime.fromisoformat(since) + timedelta(days=s["retention_days"]) < now:
                due.append(s)
    for s in due:
        context.log.info(f"{'would shred' if config.dry_run else 'shredding'} {s['id']} ({s['name']}), "
                         f"retention {s['retention_days']} days")
        if config.dry_run:
            continue
        try:
            pipeline.post(f"/sessions/{s['id']}/transitions",
                          {"event": "delete", "actor": "retention", "reason": f"retention of {s['retention_days']} days"})
        except PipelineError as exc:
            if exc.status != 409:
                raise
        storage.shred(s["id"])
        if context.instance.has_dynamic_partition(sessions.name, s["id"]):
            context.instance.delete_dynamic_partition(sessions.name, s["id"])
    return dg.Output([s["id"] for s in due], metadata={"due": len(due), "dry_run": config.dry_run,
                                                      "sessions": dg.MetadataValue.json([s["id"] for s in due])})


@dg.job(description="Retention: crypto-shred sessions past their retention (run config dry_run lists them only).")
def retention():
    apply_retention()


retention_schedule = dg.ScheduleDefinition(
    job=retention, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
    run_config={"ops": {"apply_retention": {"config": {"dry_run": False}}}},
    description="Nightly at 03:17: apply retention for real.")


class ArchiveConfig(dg.Config):
    older_than_days: int = 30


@dg.op(description="Keep the live partition count bounded: drop the Dagster partition of every session sealed "
                   "more than older_than_days ago. Nothing else changes: its envelopes, manifest, catalog rows and "
                   "audit log stay and are still served and verified; the partition comes back if it is ever "
                   "processed again.")
def archive_partitions_op(context: dg.OpExecutionContext, config: ArchiveConfig, pipeline: PipelineResource) -> dg.Output:
    cutoff = datetime.now(timezone.utc) - timedelta(days=config.older_than_days)
    live = set(context.instance.get_dynamic_partitions(sessions.name))
    old = [s["id"] for s in _all(pipeline, "sealed")
           if s["id"] in live and s["sealed_at"] and datetime.fromisoformat(s["sealed_at"]) < cutoff]
    for sid in old:
        context.instance.delete_dynamic_partition(sessions.name, sid)
    context.log.info(f"archived {len(old)} partitions; {len(live) - len(old)} remain")
    return dg.Output(old, metadata={"archived": len(old), "partitions_left": len(live) - len(old)})


@dg.job(description="Archive old sealed sessions' partitions (their data stays and is served).")
def archive_partitions():
    archive_partitions_op()


archive_schedule = dg.ScheduleDefinition(
    job=archive_partitions, cron_schedule="37 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly at 03:37.")
