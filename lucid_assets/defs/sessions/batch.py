"""Live processing in batches: one run takes every session with work (new chunks, or finalized and
not sealed), does the same work as the assets for each, and reports, per session it touched, the
materializations and checks the assets would have (partition = session). A session that fails is
reported and left; the others go on. Finalized sessions are sealed (or failed) by the run itself."""

import time

import dagster as dg
from pydantic import Field

from lucid_assets import processing
from lucid_assets.clients import PipelineClient, ServiceError
from lucid_assets.core.states import Event, State

from ..resources import PipelineResource, VaultResource
from .assets import chunks_check, manifest_check, manifest_metadata, stored_metadata
from .partitions import sessions

BATCH_TAG = "lucid/batch"
# a batch normally takes seconds; after a long outage its 200 sessions' backlog can take many
# minutes on a Pi. Past this the daemon's run monitoring ends it (a hung run would otherwise hold
# the one batch slot) and the next batch picks up what it left: every step is idempotent.
MAX_RUNTIME_TAG, BATCH_MAX_RUNTIME_S = "dagster/max_runtime", 1800


class BatchConfig(dg.Config):
    limit: int = Field(200, description="sessions one run takes at most; the rest wait for the next run")


def _report_stored(context: dg.OpExecutionContext, w: processing.Work) -> None:
    if w.error is None:
        context.log_event(dg.AssetMaterialization("stored_chunks", partition=w.sid, metadata=stored_metadata(w)))
    context.log_event(
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey("stored_chunks"), partition=w.sid, **chunks_check(w))
    )


def _report_sealed(context: dg.OpExecutionContext, s: processing.Sealed, vault: VaultResource) -> None:
    if s.doc:
        context.log_event(
            dg.AssetMaterialization("session_manifest", partition=s.work.sid, metadata=manifest_metadata(s, vault))
        )
    context.log_event(
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey("session_manifest"), partition=s.work.sid, **manifest_check(s))
    )


def _conclude(client: PipelineClient, sid: str, event: Event, reason: str) -> str | None:
    """Seal or fail a finalized session; None if the pipeline agreed, else why not."""
    try:
        client.transition(sid, event, reason=reason[:2000])
    except ServiceError as exc:
        if exc.status == 409 and exc.state in (State.SEALED, State.FAILED, State.DELETED):
            return None  # someone else concluded it first (a rerun, a delete): nothing to undo
        return str(exc)
    return None


def _ensure_partitions(context: dg.OpExecutionContext, sids: list[str]) -> None:
    missing = [sid for sid in sids if not context.instance.has_dynamic_partition(sessions.name, sid)]
    if missing:
        context.instance.add_dynamic_partitions(sessions.name, missing)


@dg.op(
    description="Process every session with work: store new chunks (one Iceberg commit and one registry "
    "call for the whole batch), sign checkpoints, check; seal finalized sessions. Reports a "
    "materialization and check per session touched."
)
def process_pending(
    context: dg.OpExecutionContext, config: BatchConfig, pipeline: PipelineResource, vault: VaultResource
) -> dg.Output:
    client, run = pipeline.client, context.run.run_id
    cpu0 = time.process_time()  # Lucid's own work in this run, reported beside Dagster's (bench/capacity.py)
    page = client.pending(limit=config.limit)
    works = [processing.Work(session=p.session, chunks=p.chunks) for p in page.items]
    final = {p.session.id for p in page.items if p.final}
    if not works:
        context.log.info("no session has work")
        return dg.Output(None, metadata={"sessions": 0, "chunks_stored": 0, "processing_cpu_s": 0.0})
    _ensure_partitions(context, [w.sid for w in works])
    processing.store(client, vault.vault, works)
    cpu = time.process_time() - cpu0
    failed: list[str] = []
    for w in works:
        if w.todo or w.error or w.problems:
            _report_stored(context, w)
        if not w.ok:
            failed.append(f"{w.sid}: {w.check_summary()}")
            if w.sid in final:
                _conclude(
                    client,
                    w.sid,
                    Event.FAIL,
                    f"run {run} failed: check chunks_readable_and_complete: {w.check_summary()}",
                )
    cpu1 = time.process_time()
    sealed = processing.seal(client, vault.vault, [w for w in works if w.sid in final and w.ok])
    cpu += time.process_time() - cpu1
    for s in sealed:
        _report_sealed(context, s, vault)
        event = Event.SEAL if s.ok else Event.FAIL
        why = f"run {run} sealed it" if s.ok else f"run {run} failed: check manifest_matches_storage: {s.summary()}"
        if (problem := _conclude(client, s.work.sid, event, why)) or not s.ok:
            failed.append(f"{s.work.sid}: {problem or s.summary()}")
    context.log.info(
        f"{len(works)} sessions, {sum(len(w.marks) for w in works)} chunks stored, "
        f"{len(final)} finalized; {len(failed)} failed" + (" (more wait)" if page.more else "")
    )
    meta = {
        "sessions": len(works),
        "chunks_stored": sum(len(w.marks) for w in works),
        "sealed": len(final),
        "failed_sessions": len(failed),
        "processing_cpu_s": round(cpu, 3),
    }
    if failed:
        raise dg.Failure(
            f"{len(failed)} of {len(works)} sessions failed (the others are done): " + "; ".join(failed[:5]),
            metadata=meta,
        )
    return dg.Output(None, metadata=meta)


@dg.job(
    tags={BATCH_TAG: "live", MAX_RUNTIME_TAG: str(BATCH_MAX_RUNTIME_S)},
    description="Live processing: one run for every session with work (see "
    "process_pending). Launched by the work-queue sensor; at most one runs at a time, one more waits and "
    "absorbs whatever arrives meanwhile.",
)
def process_sessions():
    process_pending()
