"""Scheduled backfills: when a derivation changes (a new OCR model, another thumbnail size: a new
code_version), or sessions were sealed before insight existed, the schedule launches a real Dagster
backfill (it is listed under Backfills in the UI) over the sealed sessions whose records are missing
or of another version, per asset. The backfill runs them N sessions per run (the assets' backfill
policy), tagged so that one insight run at most runs at a time, behind live processing.

Dagster 1.13's scheduler cannot itself request a backfill (only sensors can, through an internal
RunRequest field); the schedule requests a small run of `launch_insight_backfill`, whose op adds the
backfill to the instance the way Dagster's own sensor daemon does (PartitionBackfill over an asset
graph subset). The run's metadata says which backfill, for how many sessions, and why."""

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id
from dagster._time import get_current_timestamp

from lucid_assets.insight import session as insight

from ..resources import PipelineResource, VaultResource
from ..sessions.partitions import sessions
from .assets import INSIGHT_TAG, KEYS, PRIORITY
from .follow import live_sessions

BACKFILL_TAGS = {INSIGHT_TAG: "backfill", **PRIORITY}
RUNNING = (BulkActionStatus.REQUESTED,)


def backfill_running(instance: dg.DagsterInstance) -> str | None:
    for b in instance.get_backfills(status=BulkActionStatus.REQUESTED, limit=50):
        if b.tags.get(INSIGHT_TAG) == "backfill":
            return b.backfill_id
    return None


@dg.op(description="Add one asset backfill over the sealed sessions whose insight is missing or stale.")
def add_insight_backfill(context: dg.OpExecutionContext, pipeline: PipelineResource, vault: VaultResource):
    if running := backfill_running(context.instance):
        context.log.info(f"backfill {running} is still running: nothing added")
        return dg.Output(None, metadata={"backfill_id": running, "added": False})
    todo = insight.backfill_candidates(vault.store, live_sessions(pipeline))
    sids = sorted({sid for per in todo.values() for sid in per})
    if not sids:
        return dg.Output(None, metadata={"sessions": 0, "added": False})
    new = [sid for sid in sids if not context.instance.has_dynamic_partition(sessions.name, sid)]
    if new:
        context.instance.add_dynamic_partitions(sessions.name, new)
    subset = AssetGraphSubset(
        partitions_subsets_by_asset_key={
            KEYS[p]: sessions.empty_subset().with_partition_keys(per) for p, per in todo.items()
        },
        non_partitioned_asset_keys=set(),
    )
    backfill_id = make_new_backfill_id()
    context.instance.add_backfill(
        PartitionBackfill.from_asset_graph_subset(
            backfill_id=backfill_id,
            backfill_timestamp=get_current_timestamp(),
            tags=BACKFILL_TAGS,
            dynamic_partitions_store=context.instance,
            asset_graph_subset=subset,
            title=f"insight: re-derive {len(sids)} sessions",
            description="launched by insight_backfill_schedule: "
            + ", ".join(f"{KEYS[p].to_user_string()} x {len(per)}" for p, per in todo.items()),
            run_config=None,
        )
    )
    meta = {"backfill_id": backfill_id, "added": True, "sessions": len(sids)}
    meta |= {f"{KEYS[p].to_user_string()}_sessions": len(per) for p, per in todo.items()}
    context.log.info(f"backfill {backfill_id} added over {len(sids)} sessions")
    return dg.Output(None, metadata=meta)


@dg.job(tags={INSIGHT_TAG: "launcher"}, description="Adds the insight backfill the schedule asked for.")
def launch_insight_backfill():
    add_insight_backfill()


def insight_backfill_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="insight_backfill_schedule",
        cron_schedule=cron,
        job=launch_insight_backfill,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Launches a backfill of the insight assets over the sealed sessions whose records are missing "
        "or of an older code version (none while one is still running).",
    )
    def schedule(context: dg.ScheduleEvaluationContext, pipeline: PipelineResource, vault: VaultResource):
        if running := backfill_running(context.instance):
            return dg.SkipReason(f"backfill {running} is still running")
        todo = insight.backfill_candidates(vault.store, live_sessions(pipeline))
        if not todo:
            return dg.SkipReason("every sealed session's insight is current")
        n = len({sid for per in todo.values() for sid in per})
        return dg.RunRequest(tags={"lucid/sessions": str(n)})

    return schedule
