"""The live follower: while sessions record, their insight follows the stored chunks with bounded
lag. A sensor looks (cheaply, in the code server) for stored chunks without current records and
requests one `follow_insight` run for all of them; at most one runs at a time (tag limit), behind
live processing (priority). Each run reports a materialization and the coverage check per session
it touched, like the processing batch does."""

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from lucid_assets.core.states import Insight, State
from lucid_assets.insight import session as insight
from lucid_assets.settings import get_settings

from ..resources import PipelineResource, StorageServiceResource, VaultResource
from ..sessions.batch import MAX_RUNTIME_TAG
from ..sessions.partitions import sessions
from ..sessions.sensors import WAITING
from .assets import COVERAGE, INSIGHT_TAG, KEYS, PRIORITY, catalogue, coverage, derive

LIVE = (State.RECORDING, State.PAUSED, State.FINALIZING, State.PROCESSING)
FOLLOW_TAGS = {INSIGHT_TAG: "live", **PRIORITY, MAX_RUNTIME_TAG: "1800"}
ACTIVE = [*WAITING, dg.DagsterRunStatus.STARTED]


class FollowConfig(dg.Config):
    budget_seconds: int = Field(900, description="the run ends after this long (the sensor starts the next)")
    poll_seconds: float = Field(5, description="how often the run looks for stored chunks without insight")
    idle_exit_seconds: float = Field(
        get_settings().insight_follow_idle_seconds,
        description="the run ends once it found nothing to do for this long (0: after one pass)",
    )


RECENT = timedelta(hours=1)  # an ended session's chunks are still the follower's this long, then the backfill's


def live_sessions(pipeline: PipelineResource) -> set[str]:
    return {s.id for state in LIVE for s in pipeline.client.all_sessions(state)}


def followed_sessions(pipeline: PipelineResource) -> set[str]:
    """The live sessions, and those whose state changed in the last hour (stopped, sealed): one
    query each to the pipeline instead of a look at every session the store holds."""
    recent = pipeline.client.all_sessions(changed_since=datetime.now(UTC) - RECENT)
    gone = (State.DELETED, State.CREATED)
    return live_sessions(pipeline) | {s.id for s in recent if s.state not in gone}


@dataclass
class Tally:
    sessions: set = field(default_factory=set)
    chunks: int = 0
    failed: int = 0
    catalogued: int = 0


def _one_pass(
    context: dg.OpExecutionContext,
    pipeline: PipelineResource,
    vault: VaultResource,
    storage: StorageServiceResource,
    deadline,
    tally,
) -> int:
    """Derive what the live and recent sessions' stored chunks lack; how many chunks it derived."""
    work = insight.follow_candidates(vault.store, followed_sessions(pipeline))
    new = [sid for sid in work if not context.instance.has_dynamic_partition(sessions.name, sid)]
    if new:
        context.instance.add_dynamic_partitions(sessions.name, new)
    done = 0
    for sid, per in work.items():
        if time.monotonic() > deadline:
            break
        first = min(min(seqs) for seqs in per.values())
        seqs = [s for s in vault.store.stored_seqs(sid) if s >= first]
        rep = derive(vault, storage, sid, set(per), seqs, deadline)
        done += rep.chunks
        tally.sessions.add(sid)
        tally.failed += rep.error is not None
        for p in per:
            context.log_event(dg.AssetMaterialization(KEYS[p], partition=sid, metadata=rep.metadata(p)))
        if rep.error is None and pipeline.client.session(sid).state == State.SEALED:
            tally.catalogued += catalogue(vault, storage, sid)
        if Insight.TEXT in per:
            check = coverage(rep)
            context.log_event(
                dg.AssetCheckEvaluation(
                    asset_key=COVERAGE.asset_key,
                    check_name=COVERAGE.name,
                    partition=sid,
                    passed=check.passed,
                    severity=check.severity,
                    description=check.description,
                    metadata=check.metadata,
                )
            )
        context.log.info(f"{sid}: {rep.chunks} chunks derived" + (f"; {rep.error}" if rep.error else ""))
    tally.chunks += done
    return done


@dg.op(
    description="Follows the live sessions: every few seconds, derives activity, thumbnails and screen text of "
    "every stored chunk that has none yet (live sessions, and those that ended in the last hour), in chunk order "
    "per session, reporting a materialization and the coverage check per session as it goes. One run lives while "
    "there is work (up to its budget), so Dagster's per-run cost is paid once, not per chunk."
)
def derive_live(
    context: dg.OpExecutionContext,
    config: FollowConfig,
    pipeline: PipelineResource,
    vault: VaultResource,
    storage: StorageServiceResource,
) -> dg.Output:
    cpu0, deadline = time.process_time(), time.monotonic() + config.budget_seconds
    tally, idle_since = Tally(), time.monotonic()
    while time.monotonic() < deadline:
        if _one_pass(context, pipeline, vault, storage, deadline, tally):
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= config.idle_exit_seconds:
            break
        time.sleep(min(config.poll_seconds, max(0.0, deadline - time.monotonic())))
    meta = {
        "sessions": len(tally.sessions),
        "chunks_derived": tally.chunks,
        "failed_sessions": tally.failed,
        "catalogued_sessions": tally.catalogued,
        "insight_cpu_s": round(time.process_time() - cpu0, 3),
    }
    context.log.info(f"{len(tally.sessions)} sessions, {tally.chunks} chunks derived, {tally.failed} failed")
    return dg.Output(None, metadata=meta)


@dg.job(tags=FOLLOW_TAGS, description="Live insight: one run derives what every session's stored chunks lack.")
def follow_insight():
    derive_live()


def follower_active(instance: dg.DagsterInstance) -> bool:
    runs = instance.get_runs(dg.RunsFilter(job_name=follow_insight.name, statuses=ACTIVE), limit=1)
    return bool(runs)


def insight_follower(interval: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="insight_follower",
        job=follow_insight,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Every {interval} s: when stored chunks have no insight yet and no follower run is queued or "
        "running, requests one follow_insight run (it takes all of them).",
    )
    def sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource, vault: VaultResource):
        if follower_active(context.instance):
            return dg.SkipReason("a follow_insight run is queued or running")
        work = insight.follow_candidates(vault.store, followed_sessions(pipeline))
        if not work:
            return dg.SkipReason("every stored chunk of the live and recent sessions has its insight")
        n = sum(len(set().union(*per.values())) for per in work.values())
        return dg.RunRequest(tags={"lucid/chunks": str(n), "lucid/sessions": str(len(work))})

    return sensor
