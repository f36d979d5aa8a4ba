"""The insight assets: session_activity, session_thumbnails and screen_text, one partition per
session, downstream of stored_chunks. One multi-asset, because one decode pass feeds all three; it
can be subset (a new OCR model re-derives screen_text only). Each has a code_version: when it
changes, the backfill schedule re-derives the sealed sessions whose records are of an older one.

A run takes many sessions (BackfillPolicy.multi_run): a 1,000-session backfill is 1,000 / N runs,
not 1,000 process starts. Every run carries the `lucid/insight` tag, limited to one at a time
(dagster.yaml), with a lower priority than live processing, so the batch slot is never taken.
Failures are per session: one session that cannot be derived fails its check, not the others, and
never touches the session's state (a recording is sealed whatever its insight does)."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg

from lucid_assets.clients import ServiceError
from lucid_assets.core import catalog
from lucid_assets.core.states import Insight, State
from lucid_assets.insight import session as insight
from lucid_assets.insight.view import NoKey, SessionView, summary_row
from lucid_assets.settings import get_settings

from ..resources import PipelineResource, StorageServiceResource, VaultResource
from ..sessions.assets import OWNERS
from ..sessions.partitions import sessions

GROUP = "insight"
INSIGHT_TAG = "lucid/insight"
# queued behind live processing (the run queue dequeues higher priority first)
PRIORITY = {"dagster/priority": "-1"}
KEYS = {
    Insight.ACTIVITY: dg.AssetKey("session_activity"),
    Insight.THUMBNAILS: dg.AssetKey("session_thumbnails"),
    Insight.TEXT: dg.AssetKey("screen_text"),
}
PRODUCT_OF = {k: p for p, k in KEYS.items()}
DESCRIPTIONS = {
    Insight.ACTIVITY: "A change score per 250 ms sample (share of the screen's 32 px blocks that changed), from "
    "which the per-second score, idle spans and scene changes are read. Sealed per chunk under the session's "
    "data key.",
    Insight.THUMBNAILS: "A 160 px JPEG every 5 s of recording, for seek previews (WebVTT track and sprite "
    "sheets built in memory when asked). Sealed per chunk under the session's data key.",
    Insight.TEXT: "Screen text: rapidocr (models inside the wheel, offline) over the rows of the screen that "
    "changed, each line with its time, box, confidence and words, sealed per chunk under the session's data "
    "key; its words go into the keyed-token search index (no plaintext). Lines are recorded when they appear.",
}


def _specs() -> list[dg.AssetSpec]:
    # built here, not as a module-level list: the defs loader would take a list of specs for more assets
    return [
        dg.AssetSpec(
            KEYS[p],
            deps=["stored_chunks"],
            partitions_def=sessions,
            group_name=GROUP,
            owners=OWNERS,
            kinds={"python"},
            code_version=insight.VERSIONS[p],
            description=DESCRIPTIONS[p],
            skippable=True,
        )
        for p in insight.PRODUCTS
    ]


COVERAGE = dg.AssetCheckSpec(
    "screen_text_coverage",
    asset=KEYS[Insight.TEXT],
    description="Warns when a session's chunks could not all be decoded, or when it was active for a minute or "
    "more and no text at all was found on its screen (a blank or image-only desktop is legitimate; a broken "
    "OCR is not). Metadata: active minutes, minutes in which text appeared, their ratio. No screen content.",
)


def coverage(rep: insight.Report) -> dg.AssetCheckResult:
    active_min, text_min = rep.active_seconds / 60, rep.text_seconds / 60
    ok = rep.error is None and rep.undecodable == 0 and (active_min < 1 or rep.lines > 0)
    why = (
        rep.error
        or (f"{rep.undecodable} chunks could not be decoded" if rep.undecodable else None)
        or (None if ok else f"{active_min:.1f} active minutes and no text found")
    )
    return dg.AssetCheckResult(
        check_name=COVERAGE.name,
        asset_key=KEYS[Insight.TEXT],
        passed=ok,
        severity=dg.AssetCheckSeverity.WARN,
        description=why or f"text appeared in {text_min:.1f} of {active_min:.1f} active minutes",
        metadata={
            "active_minutes": round(active_min, 2),
            "text_minutes": round(text_min, 2),
            "coverage": round(text_min / active_min, 3) if active_min else 1.0,
            "undecodable_chunks": rep.undecodable,
        },
    )


def _lower_priority() -> None:
    os.nice(NICENESS)  # on Linux a thread's own: only the derivation thread yields to live processing


# the derivation runs on one thread niced by NICENESS: whatever else this process or machine runs
# (the live batch, the services) gets the CPU first; OCR takes what is left
NICENESS = 10
_NICE = ThreadPoolExecutor(1, thread_name_prefix="insight", initializer=_lower_priority)


def derive(
    vault: VaultResource,
    storage: StorageServiceResource,
    sid: str,
    products: set[Insight],
    seqs: list[int] | None = None,
    deadline=None,
):
    """Derive one session (all its stored chunks, or `seqs`) on the niced thread; a Report whatever happens."""
    return _NICE.submit(_derive, vault, storage, sid, products, seqs, deadline).result()


def _derive(vault: VaultResource, storage: StorageServiceResource, sid, products, seqs, deadline):
    # a local store: this host's index file, written as each chunk's text is; a bucket: the storage
    # service indexes the records this run wrote, so one index serves every processing host (issue 17)
    store = vault.store
    text_index = insight.open_index(store) if Insight.TEXT in products and store.is_local else None
    try:
        todo = seqs if seqs is not None else store.stored_seqs(sid)
        rep = insight.SessionDeriver(store, vault.keyring, sid, text_index).run(products, todo, deadline=deadline)
    except Exception as exc:  # one session's failure is reported, never the run's
        rep = insight.Report(sid)
        rep.error = f"{type(exc).__name__}: {exc}"
        return rep
    finally:
        if text_index is not None:
            text_index.close()
    if rep.text_seqs and not store.is_local:
        try:
            storage.client.index_text(sid, rep.text_seqs)
        except ServiceError as exc:  # derived and sealed, not searchable yet: the next call catches up
            rep.error = rep.error or f"search index: {exc}"
    return rep


def indexed_chunks(vault: VaultResource, storage: StorageServiceResource, sid: str) -> int:
    """How many of the session's chunks the search index holds (asking storage, the index's writer,
    when the store is a bucket: that call also indexes any record not indexed yet)."""
    if not vault.store.is_local:
        return storage.client.index_text(sid, []).chunks_indexed
    text_index = insight.open_index(vault.store)
    try:
        return len(text_index.indexed_chunks(sid))
    finally:
        text_index.close()


def catalogue(vault: VaultResource, storage: StorageServiceResource, sid: str) -> bool:
    """Write the session's lucid.session_insight row once every stored chunk has every product
    (called for sealed sessions: a live one would commit a snapshot per follower run)."""
    if insight.todo(vault.store, sid):
        return False
    try:
        row = summary_row(SessionView(vault.store, vault.keyring, sid), indexed_chunks(vault, storage, sid))
    except (NoKey, ServiceError):
        return False
    vault.lake.replace_rows(catalog.INSIGHT, sid, [row])
    return True


@dg.multi_asset(
    specs=_specs(),
    check_specs=[COVERAGE],
    can_subset=True,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=get_settings().insight_sessions_per_run),
    op_tags={INSIGHT_TAG: "asset"},
)
def session_insight(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    vault: VaultResource,
    storage: StorageServiceResource,
):
    products = {PRODUCT_OF[k] for k in context.selected_asset_keys}
    reports, skipped = [], []
    cpu0 = time.process_time()
    for sid in context.partition_keys:
        state = pipeline.client.session(sid).state
        if state in (State.DELETED, State.CREATED):
            skipped.append(f"{sid} is {state}")
            continue
        rep = derive(vault, storage, sid, products)
        reports.append(rep)
        if state == State.SEALED and rep.error is None:
            catalogue(vault, storage, sid)
        context.log.info(
            f"{sid}: {rep.chunks} chunks, {rep.lines} lines, {rep.thumbnails} thumbnails"
            + (f"; {rep.error}" if rep.error else "")
        )
    total = insight.Report("all")
    for rep in reports:
        total.merge(rep)
    for p in sorted(products):
        meta = {**total.metadata(p), "sessions": len(reports), "run_cpu_s": round(time.process_time() - cpu0, 3)}
        yield dg.MaterializeResult(asset_key=KEYS[p], metadata=meta)
    if Insight.TEXT in products and COVERAGE.key in context.selected_asset_check_keys:
        yield coverage(total)
    failed = [r for r in reports if r.error]
    if failed or skipped:
        context.log.warning(
            f"{len(failed)} sessions failed, {len(skipped)} skipped: "
            + "; ".join([*(f"{r.session_id}: {r.error}" for r in failed[:5]), *skipped[:5]])
        )
