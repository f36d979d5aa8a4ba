"""Retention (crypto-shred sessions past their retention) and partition archiving, nightly."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from lucid_assets.clients import ServiceError
from lucid_assets.core.states import Event, State
from lucid_assets.models import Session

from ..resources import PipelineResource, StorageServiceResource
from ..sessions.partitions import sessions


class RetentionConfig(dg.Config):
    dry_run: bool = True
    as_of: str | None = None  # ISO time to evaluate retention at (default now): "what goes by then?"


def due_sessions(pipeline: PipelineResource, now: datetime) -> list[Session]:
    due = []
    for state in (State.SEALED, State.FAILED):
        for s in pipeline.client.all_sessions(state):
            since = s.sealed_at or s.stopped_at or s.created_at
            if s.retention_days and datetime.fromisoformat(since) + timedelta(days=s.retention_days) < now:
                due.append(s)
    return due


@dg.op(
    description="Crypto-shred sealed and failed sessions older than their retention_days: the pipeline marks "
    "them deleted, the storage service destroys their data key, envelopes, staging files and "
    "chunk rows, and their Dagster partition is dropped. With dry_run only lists them."
)
def apply_retention(
    context: dg.OpExecutionContext, config: RetentionConfig, pipeline: PipelineResource, storage: StorageServiceResource
) -> dg.Output:
    due = due_sessions(pipeline, datetime.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC))
    for s in due:
        context.log.info(
            f"{'would shred' if config.dry_run else 'shredding'} {s.id} ({s.name}), retention {s.retention_days} days"
        )
        if config.dry_run:
            continue
        try:
            pipeline.client.transition(s.id, Event.DELETE, reason=f"retention of {s.retention_days} days")
        except ServiceError as exc:
            if exc.status != 409:
                raise
        storage.client.shred(s.id)
        if context.instance.has_dynamic_partition(sessions.name, s.id):
            context.instance.delete_dynamic_partition(sessions.name, s.id)
    ids = [s.id for s in due]
    return dg.Output(ids, metadata={"due": len(due), "dry_run": config.dry_run, "sessions": dg.MetadataValue.json(ids)})


@dg.job(description="Retention: crypto-shred sessions past their retention (run config dry_run lists them only).")
def retention():
    apply_retention()


retention_schedule = dg.ScheduleDefinition(
    job=retention,
    cron_schedule="17 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    run_config={"ops": {"apply_retention": {"config": {"dry_run": False}}}},
    description="Nightly at 03:17: apply retention for real.",
)


class ArchiveConfig(dg.Config):
    older_than_days: int = 30


@dg.op(
    description="Keep the live partition count bounded: drop the Dagster partition of every session sealed "
    "more than older_than_days ago. Nothing else changes: its envelopes, manifest, catalog rows and "
    "audit log stay and are still served and verified; the partition comes back if it is ever "
    "processed again."
)
def archive_partitions_op(
    context: dg.OpExecutionContext, config: ArchiveConfig, pipeline: PipelineResource
) -> dg.Output:
    cutoff = datetime.now(UTC) - timedelta(days=config.older_than_days)
    live = set(context.instance.get_dynamic_partitions(sessions.name))
    old = [
        s.id
        for s in pipeline.client.all_sessions(State.SEALED)
        if s.id in live and s.sealed_at and datetime.fromisoformat(s.sealed_at) < cutoff
    ]
    for sid in old:
        context.instance.delete_dynamic_partition(sessions.name, sid)
    context.log.info(f"archived {len(old)} partitions; {len(live) - len(old)} remain")
    return dg.Output(old, metadata={"archived": len(old), "partitions_left": len(live) - len(old)})


@dg.job(description="Archive old sealed sessions' partitions (their data stays and is served).")
def archive_partitions():
    archive_partitions_op()


archive_schedule = dg.ScheduleDefinition(
    job=archive_partitions,
    cron_schedule="37 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly at 03:37.",
)
