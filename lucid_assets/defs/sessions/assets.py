"""The session asset graph: recorded_chunks (external) -> stored_chunks -> session_manifest.

The work itself is `lucid_assets.processing` (no Dagster). These assets run it for one session
partition (a rerun or a backfill from the UI); live processing runs the same work for many sessions
in one run (`batch.py`) and reports the same materializations and checks per session."""

import dagster as dg
from pydantic import Field

from lucid_assets import processing
from lucid_assets.core.states import Note, State
from lucid_assets.models import AuditNote

from ..resources import PipelineResource, VaultResource
from .partitions import sessions

GROUP = "sessions"
OWNERS = ["team:lucid"]

recorded_chunks = dg.AssetSpec(
    "recorded_chunks",
    partitions_def=sessions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mpegts"},
    description="Keyframe-aligned MPEG-TS segments written by lucid-session-recorder to the recordings "
    "volume and registered with the pipeline. Produced outside Dagster.",
)

CHUNKS_CHECK = dg.AssetCheckSpec(
    "chunks_readable_and_complete",
    asset="stored_chunks",
    blocking=True,
    description="Re-reads every envelope this run wrote from the store: it exists, opens under the session's data "
    "key and its plaintext has the registered SHA-256; lucid.chunks has exactly one row per registered "
    "chunk; once the session is finalized the seqs are 0..n-1. Blocks the manifest when it fails (the "
    "manifest's own check then re-reads every envelope of the session).",
)
MANIFEST_CHECK = dg.AssetCheckSpec(
    "manifest_matches_storage",
    asset="session_manifest",
    blocking=True,
    description="Runs the full verification (signature, Merkle root, every envelope's hash, tag and plaintext, "
    "checkpoints, audit chain) of the manifest just written against the store.",
)


class ProcessConfig(dg.Config):
    force: bool = Field(
        False,
        description="forced reprocess: re-encrypt every chunk into new envelopes and write "
        "a new manifest version; the old manifest and checkpoints are kept as a record",
    )


def stored_metadata(w: processing.Work) -> dict:
    meta = w.metadata()
    meta["compression_ratio"] = dg.MetadataValue.float(meta["compression_ratio"])
    return meta


def chunks_check(w: processing.Work) -> dict:
    """The chunk check's outcome, as an AssetCheckResult's or AssetCheckEvaluation's fields."""
    return {
        "check_name": CHUNKS_CHECK.name,
        "passed": w.ok,
        "description": w.check_summary(),
        "metadata": {"chunks_reread": len(w.todo), "chunks_registered": len(w.chunks), "problems": len(w.problems)},
    }


def manifest_metadata(s: processing.Sealed, vault: VaultResource) -> dict:
    body, sid = s.doc["body"], s.work.sid
    return {
        "chunk_count": len(body["chunks"]),
        "merkle_root": body["merkle"]["root"],
        "manifest_version": s.version,
        "manifest_reused": s.reused,
        "raw_bytes": body["raw_bytes"],
        "stored_bytes": body["stored_bytes"],
        "duration_ms": body["duration_ms"],
        "encoder": s.work.session.encoder or "",
        "signing_key_id": s.doc["signature"]["key_id"],
        "manifest": dg.MetadataValue.path(vault.store.manifest_uri(sid, s.version)),
        "session_view": dg.MetadataValue.url(f"{vault.api_url}/viewer/#{sid}"),
    }


def manifest_check(s: processing.Sealed) -> dict:
    report = s.report
    return {
        "check_name": MANIFEST_CHECK.name,
        "passed": s.ok,
        "description": s.summary(),
        "metadata": {
            "status": str(report.status) if report else "not verified",
            "problems": len(report.problems) if report else 1,
        },
    }


def _work(context: dg.AssetExecutionContext, pipeline: PipelineResource, force: bool) -> processing.Work:
    sid, client = context.partition_key, pipeline.client
    session = client.session(sid)
    if session.state in (State.DELETED, State.CREATED):
        raise dg.Failure(f"session {sid} is {session.state}: nothing to store")
    return processing.Work(session=session, chunks=client.chunks(sid), force=force)


@dg.asset(
    partitions_def=sessions,
    deps=[recorded_chunks],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "iceberg"},
    check_specs=[CHUNKS_CHECK],
    description="Every registered chunk of the session compressed (zstd when it pays), encrypted into an "
    "AES-256-GCM envelope under the session's data key, written durably to the chunk store and "
    "catalogued as one row of lucid.chunks. Idempotent: a rerun reuses durable envelopes and "
    "appends only missing rows.",
)
def stored_chunks(
    context: dg.AssetExecutionContext, config: ProcessConfig, pipeline: PipelineResource, vault: VaultResource
) -> dg.MaterializeResult:
    w = _work(context, pipeline, config.force)
    if config.force:
        pipeline.client.audit_note(
            w.sid,
            AuditNote(event=Note.REPROCESS, detail={"run_id": context.run.run_id, "chunks": len(w.chunks)}),
        )
        vault.store.supersede_checkpoints(w.sid, context.run.run_id[:8])
    processing.store(pipeline.client, vault.vault, [w])
    if w.error:
        raise dg.Failure(f"session {w.sid}: {w.error}")
    context.log.info(
        f"{len(w.chunks)} chunks durable; {len(w.marks)} newly stored, {w.appended} catalog rows appended"
        + (f"; checkpoint {w.checkpoint['tree_size']} published" if w.checkpoint else "")
    )
    return dg.MaterializeResult(metadata=stored_metadata(w), check_results=[dg.AssetCheckResult(**chunks_check(w))])


@dg.asset(
    partitions_def=sessions,
    deps=[stored_chunks],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "iceberg"},
    check_specs=[MANIFEST_CHECK],
    description="The session's RFC 6962 Merkle root over the SHA-256 of its envelopes, in a canonical-JSON "
    "manifest signed with Ed25519, stored beside the envelopes and catalogued in lucid.sessions. "
    "A rerun over unchanged chunks keeps the existing manifest byte for byte.",
)
def session_manifest(
    context: dg.AssetExecutionContext, config: ProcessConfig, pipeline: PipelineResource, vault: VaultResource
) -> dg.MaterializeResult:
    w = _work(context, pipeline, config.force)
    if w.session.expected_chunks is None:
        raise dg.Failure(f"session {w.sid} is {w.session.state} and not finalized: no manifest yet")
    [s] = processing.seal(pipeline.client, vault.vault, [w])
    if s.error and not s.doc:
        raise dg.Failure(f"session {w.sid}: {s.error}")
    return dg.MaterializeResult(
        metadata=manifest_metadata(s, vault), check_results=[dg.AssetCheckResult(**manifest_check(s))]
    )
