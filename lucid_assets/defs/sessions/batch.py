"""Live processing in batches: one run claims every session with work (new chunks, or finalized and
not sealed) that no other run holds, does the same work as the assets for each, and reports, per
session it touched, the materializations and checks the assets would have (partition = session). A
session that fails is reported and left; the others go on. Finalized sessions are sealed (or
failed) by the run itself.

Claims (issue 17) let several processing workers (concurrent batch runs, on one host or many) split
the queue instead of each taking all of it: a run holds what it claimed for a lease it renews while
it works and releases when it ends. A run that dies stops renewing and its sessions are free again
within one lease. The claim is a division of labour, not the safety net: every step stays idempotent,
so a run that outlives its lease and meets another on the same session does the same work twice and
nothing else."""

import threading
import time

import dagster as dg
from pydantic import Field

from lucid_assets import processing
from lucid_assets.clients import PipelineClient, ServiceError
from lucid_assets.core.states import Event, State
from lucid_assets.models import PendingPage
from lucid_assets.settings import get_settings

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


class Claimed:
    """The sessions one run claimed: renewed every third of the lease while it works, released when
    it ends (however it ends, short of dying; then the lease lapses)."""

    def __init__(self, client: PipelineClient, holder: str, lease_seconds: int, log):
        self.client, self.holder, self.lease, self.log = client, holder, lease_seconds, log
        self._done = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="claim-renewer", daemon=True)

    def take(self, limit: int) -> PendingPage:
        page = self.client.claim(self.holder, limit=limit, lease_seconds=self.lease)
        if page.items:
            self._renewer.start()
        return page

    def _renew(self) -> None:
        while not self._done.wait(self.lease / 3):
            try:
                self.client.renew_claims(self.holder, lease_seconds=self.lease)
            except (ServiceError, OSError) as exc:  # a lapsed lease costs repeated work, never wrong work
                self.log.warning(f"could not renew this run's claims: {exc}")

    def __enter__(self) -> "Claimed":
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._renewer.is_alive():
            self._renewer.join()
        try:
            self.client.release_claims(self.holder)
        except (ServiceError, OSError) as err:
            self.log.warning(f"could not release this run's claims (they lapse in {self.lease} s): {err}")


def _ensure_partitions(context: dg.OpExecutionContext, sids: list[str]) -> None:
    missing = [sid for sid in sids if not context.instance.has_dynamic_partition(sessions.name, sid)]
    if missing:
        context.instance.add_dynamic_partitions(sessions.name, missing)


@dg.op(
    description="Process every session with work that no other run holds (claimed for this run, renewed "
    "while it works, released when it ends): store new chunks (one Iceberg commit and one registry "
    "call for the whole batch), sign checkpoints, check; seal finalized sessions. Reports a "
    "materialization and check per session touched."
)
def process_pending(
    context: dg.OpExecutionContext, config: BatchConfig, pipeline: PipelineResource, vault: VaultResource
) -> dg.Output:
    client, run = pipeline.client, context.run.run_id
    with Claimed(client, run, get_settings().claim_lease_seconds, context.log) as claimed:
        return _process(context, config, client, vault, claimed)


# long: store, report, seal, conclude and summarize one claimed page, each step per session
def _process(
    context: dg.OpExecutionContext, config: BatchConfig, client: PipelineClient, vault: VaultResource, claimed: Claimed
) -> dg.Output:
    run = context.run.run_id
    cpu0 = time.process_time()  # Lucid's own work in this run, reported beside Dagster's (bench/capacity.py)
    page = claimed.take(config.limit)
    works = [processing.Work(session=p.session, chunks=p.chunks) for p in page.items]
    final = {p.session.id for p in page.items if p.final}
    if not works:
        context.log.info("no session has work that another run does not hold")
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
