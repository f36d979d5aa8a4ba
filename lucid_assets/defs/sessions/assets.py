"""The session asset graph: recorded_chunks (external) -> stored_chunks -> session_manifest."""

import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from lucid_assets import playback
from lucid_assets.core import catalog, checkpoint, envelope, merkle
from lucid_assets.core.manifest import build_manifest, canonical_json, sign, verify_signature
from lucid_assets.core.states import ChunkState, Note, State
from lucid_assets.models import AuditEntry, AuditNote, ChunkStored, ManifestSummary, RegisteredChunk, Session
from lucid_assets.verification import verify_stored

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


def _ts(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


class ProcessConfig(dg.Config):
    force: bool = Field(
        False,
        description="forced reprocess: re-encrypt every chunk into new envelopes and write "
        "a new manifest version; the old manifest and checkpoints are kept as a record",
    )


def _plan_export(vault: VaultResource, sid: str, seq: int, raw: bytes, dek: bytes, data: bytes) -> None:
    """The chunk's sealed MP4 plan, so exports never parse a chunk. Derived data: storage makes it
    again when missing; a chunk that is not H.264 in MPEG-TS simply has none."""
    try:
        playback.write_chunk_plan(vault.store, sid, seq, raw, dek=dek, tag=bytes(data[-envelope.TAG_LEN :]))
    except playback.NotExportable:
        pass


def _store_one(vault: VaultResource, sid: str, dek: bytes, chunk: RegisteredChunk, force: bool = False) -> dict:
    """Envelope one registered chunk (or reuse its durable envelope) and return its catalog row."""
    seq = chunk.seq
    existing = vault.store.read_envelope(sid, seq)
    data = raw = None
    if existing is not None:
        try:
            _, plain = envelope.open_envelope(existing, dek=dek, session_id=uuid.UUID(sid), seq=seq)
            if hashlib.sha256(plain).hexdigest() == chunk.sha256:
                data, raw = existing, plain  # already durable from an earlier run: never rewritten unless forced
        except envelope.EnvelopeError:
            pass
    if data is None:
        staging = Path(chunk.path)
        try:
            raw = staging.read_bytes()
        except FileNotFoundError:
            raise dg.Failure(f"chunk {seq}: staging file {staging} is gone and no valid envelope exists") from None
        if hashlib.sha256(raw).hexdigest() != chunk.sha256:
            raise dg.Failure(f"chunk {seq}: staging file {staging} does not match its registered SHA-256")
    if data is None or force:
        data = envelope.seal(raw, dek=dek, session_id=uuid.UUID(sid), seq=seq)
        vault.store.write_envelope(sid, seq, data)
        _plan_export(vault, sid, seq, raw, dek, data)
    header = envelope.parse_header(data)
    return {
        "session_id": sid,
        "seq": seq,
        "raw_sha256": chunk.sha256,
        "envelope_sha256": hashlib.sha256(data).hexdigest(),
        "raw_size": header.raw_len,
        "stored_size": len(data),
        "compressed": header.compressed,
        "key_version": header.key_version,
        "envelope_uri": vault.store.envelope_uri(sid, seq),
        "duration_ms": chunk.duration_ms,
        "recorded_at": _ts(chunk.registered_at),
        "stored_at": datetime.now(UTC),
    }


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


def _check_chunks(
    vault: VaultResource,
    sid: str,
    dek: bytes,
    chunks: list[RegisteredChunk],
    written: list[RegisteredChunk],
    session: Session,
) -> dg.AssetCheckResult:
    problems = []
    for c in written:
        data = vault.store.read_envelope(sid, c.seq)
        if data is None:
            problems.append(f"chunk {c.seq}: envelope missing")
            continue
        try:
            _, raw = envelope.open_envelope(data, dek=dek, session_id=uuid.UUID(sid), seq=c.seq)
            if hashlib.sha256(raw).hexdigest() != c.sha256:
                problems.append(f"chunk {c.seq}: plaintext differs from the registered SHA-256")
        except envelope.EnvelopeError as exc:
            problems.append(f"chunk {c.seq}: {exc}")
    rows = [r["seq"] for r in vault.lake.rows(catalog.CHUNKS, sid)]
    registered = sorted(c.seq for c in chunks)
    if rows != registered:
        problems.append(f"lucid.chunks holds seqs {rows}, the registry {registered}")
    n = session.expected_chunks
    if n is not None and registered != list(range(n)):
        problems.append(f"finalized with {n} chunks but the registry holds {registered}")
    return dg.AssetCheckResult(
        check_name=CHUNKS_CHECK.name,
        passed=not problems,
        description="; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        if problems
        else f"{len(written)} written chunks readable; {len(chunks)} catalogued once each",
        metadata={"chunks_reread": len(written), "chunks_registered": len(chunks), "problems": len(problems)},
    )


def _store_batch(
    client, vault: VaultResource, sid: str, dek: bytes, todo: list[RegisteredChunk], force: bool
) -> tuple[list[dict], int, list[ChunkStored]]:
    """Envelope `todo` in parallel, catalogue the rows, then tell the registry in one call: (rows,
    catalog rows appended, stored marks sent)."""
    with ThreadPoolExecutor(max_workers=max(1, vault.workers)) as pool:
        rows = list(pool.map(lambda c: _store_one(vault, sid, dek, c, force), todo))
    if force:
        vault.lake.replace_rows(catalog.CHUNKS, sid, rows)
        appended = len(rows)
    else:
        appended = vault.lake.append_missing(catalog.CHUNKS, sid, rows, key="seq")
    marks = [
        ChunkStored(
            seq=r["seq"], envelope_sha256=r["envelope_sha256"], stored_size=r["stored_size"], compressed=r["compressed"]
        )
        for chunk, r in zip(todo, rows)
        if chunk.state != ChunkState.STORED or chunk.envelope_sha256 != r["envelope_sha256"]
    ]
    if marks:
        client.mark_stored(sid, marks)  # one call, one transaction for the whole batch
    return rows, appended, marks


def _row_of_stored(c: RegisteredChunk) -> dict:
    """What a chunk stored by an earlier batch contributes to this batch's totals and checkpoint."""
    return {
        "seq": c.seq,
        "envelope_sha256": c.envelope_sha256,
        "raw_size": c.size,
        "stored_size": c.stored_size,
        "compressed": c.compressed,
    }


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
    sid, client = context.partition_key, pipeline.client
    session = client.session(sid)
    if session.state in (State.DELETED, State.CREATED):
        raise dg.Failure(f"session {sid} is {session.state}: nothing to store")
    chunks = client.chunks(sid)
    dek = vault.store.data_key(sid, vault.keyring, create=True)
    if config.force:
        client.audit_note(
            sid,
            AuditNote(
                event=Note.REPROCESS, actor="dagster", detail={"run_id": context.run.run_id, "chunks": len(chunks)}
            ),
        )
        vault.store.supersede_checkpoints(sid, context.run.run_id[:8])
    # A chunk the registry already records as stored was enveloped and catalogued by an earlier batch
    # (the catalog row is appended before the registry is told): only the others are read here, so
    # live batches stay proportional to what is new, not to the whole session.
    todo = chunks if config.force else [c for c in chunks if c.state != ChunkState.STORED]
    rows, appended, marks = _store_batch(client, vault, sid, dek, todo, config.force)
    for chunk in chunks:
        Path(chunk.path).unlink(missing_ok=True)  # durable and catalogued: staging can go
    fresh = {r["seq"]: r for r in rows}
    stored = [fresh.get(c.seq) or _row_of_stored(c) for c in chunks]
    published = _publish_checkpoint(vault, sid, stored)
    check = _check_chunks(vault, sid, dek, chunks, todo, session)
    raw, size = sum(r["raw_size"] for r in stored), sum(r["stored_size"] for r in stored)
    context.log.info(
        f"{len(stored)} chunks durable; {len(marks)} newly stored, {appended} catalog rows appended"
        + (f"; checkpoint {published['tree_size']} published" if published else "")
    )
    return dg.MaterializeResult(
        metadata={
            "chunk_count": len(stored),
            "newly_stored": len(marks),
            "catalog_rows_appended": appended,
            "checkpoint_tree_size": published["tree_size"] if published else None,
            "checkpoint_root": published["root"] if published else None,
            "raw_bytes": raw,
            "stored_bytes": size,
            "compression_ratio": dg.MetadataValue.float(round(size / raw, 4) if raw else 1.0),
            "compressed_chunks": sum(bool(r["compressed"]) for r in stored),
        },
        check_results=[check],
    )


def _publish_checkpoint(vault: VaultResource, sid: str, rows: list[dict]) -> dict | None:
    """Sign a checkpoint over the dense stored prefix when it grew since the last one."""
    leaves = []
    for i, r in enumerate(sorted(rows, key=lambda r: r["seq"])):
        if r["seq"] != i:
            break
        leaves.append(bytes.fromhex(r["envelope_sha256"]))
    existing = vault.store.checkpoints(sid)
    previous = existing[-1]["body"] if existing else None
    if not leaves or (previous and previous["tree_size"] >= len(leaves)):
        return None
    doc = checkpoint.publish(sid, leaves, datetime.now(UTC).isoformat(), previous, vault.keyring.signing)
    vault.store.write_checkpoint(sid, len(leaves), canonical_json(doc))
    return doc["body"]


def _session_header(session: Session) -> dict:
    return {
        "id": session.id,
        "name": session.name,
        "labels": session.labels,
        "source": session.source.get("kind"),
        "video": session.video,
        "encoder": session.encoder,
        "chunk_seconds": session.chunk_seconds,
        "created_at": session.created_at,
        "started_at": session.started_at,
        "stopped_at": session.stopped_at,
    }


def _manifest_entries(vault: VaultResource, sid: str, expected: int) -> list[dict]:
    rows = vault.lake.rows(catalog.CHUNKS, sid)
    seqs = [r["seq"] for r in rows]
    if seqs != list(range(expected)):
        raise dg.Failure(f"lucid.chunks holds seqs {seqs} for {sid}, expected 0..{expected - 1}")
    return [
        {
            "seq": r["seq"],
            "envelope_sha256": r["envelope_sha256"],
            "raw_sha256": r["raw_sha256"],
            "raw_size": r["raw_size"],
            "stored_size": r["stored_size"],
            "duration_ms": r["duration_ms"],
            "compressed": r["compressed"],
        }
        for r in rows
    ]


def _signed_manifest(
    vault: VaultResource, session: Session, entries: list[dict], root_hex: str, events: list[AuditEntry], force: bool
) -> tuple[int, bytes, dict, bool]:
    """The latest manifest when it already signs exactly these chunks (a rerun keeps it byte for
    byte), else a new version: (version, bytes, document, reused)."""
    sid, signer = session.id, vault.keyring.signing
    latest = vault.store.latest_manifest(sid)
    version = 1
    if latest is not None:
        version, data = latest
        doc = json.loads(data)
        if (
            not force
            and doc["body"].get("chunks") == entries
            and doc["body"]["merkle"]["root"] == root_hex
            and verify_signature(doc, signer.public_key())[0]
        ):
            return version, data, doc, True
        version += 1
    leaves = [bytes.fromhex(e["envelope_sha256"]) for e in entries]
    cps = vault.store.checkpoints(sid)
    body = build_manifest(
        session=_session_header(session),
        chunks=entries,
        merkle_root_hex=root_hex,
        sealed_at=datetime.now(UTC).isoformat(),
        version=version,
        checkpoint=checkpoint.link(cps[-1]["body"] if cps else None, leaves),
        audit={"entries": len(events), "head": events[-1].hash if events else None},
    )
    doc = sign(body, signer)
    data = canonical_json(doc)
    if not vault.store.write_manifest(sid, version, data):
        raise dg.Failure(f"manifest v{version} of {sid} was written concurrently; rerun")
    return version, data, doc, False


def _catalog_session(vault: VaultResource, session: Session, version: int, data: bytes, doc: dict) -> str:
    body, sid = doc["body"], session.id
    manifest_sha = hashlib.sha256(data).hexdigest()
    vault.lake.append_missing(
        catalog.SESSIONS,
        sid,
        [
            {
                "session_id": sid,
                "name": session.name,
                "manifest_version": version,
                "chunk_count": len(body["chunks"]),
                "raw_bytes": body["raw_bytes"],
                "stored_bytes": body["stored_bytes"],
                "duration_ms": body["duration_ms"],
                "merkle_root": body["merkle"]["root"],
                "manifest_uri": vault.store.manifest_path(sid, version).as_uri(),
                "manifest_sha256": manifest_sha,
                "signing_key_id": doc["signature"]["key_id"],
                "encoder": session.encoder,
                "started_at": _ts(session.started_at),
                "stopped_at": _ts(session.stopped_at),
                "sealed_at": _ts(body["sealed_at"]),
            }
        ],
        key="manifest_version",
    )
    return manifest_sha


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
    sid, client = context.partition_key, pipeline.client
    session = client.session(sid)
    if session.expected_chunks is None:
        raise dg.Failure(f"session {sid} is {session.state} and not finalized: no manifest yet")
    entries = _manifest_entries(vault, sid, session.expected_chunks)
    root_hex = merkle.root([bytes.fromhex(e["envelope_sha256"]) for e in entries]).hex()
    events = client.events(sid)  # once: the manifest signs its head, the check verifies the chain to it
    version, data, doc, reused = _signed_manifest(vault, session, entries, root_hex, events, config.force)
    manifest_sha = _catalog_session(vault, session, version, data, doc)
    client.record_manifest(sid, ManifestSummary(version=version, merkle_root=root_hex, manifest_sha256=manifest_sha))
    report = verify_stored(
        vault.store,
        vault.keyring,
        vault.keyring.signing.public_key(),
        sid,
        audit_rows=[e.model_dump() for e in events],
        registry_manifest_sha256=manifest_sha,
    )
    check = dg.AssetCheckResult(
        check_name=MANIFEST_CHECK.name,
        passed=report.ok,
        description="; ".join(report.problems[:5]) if report.problems else "verified against the store",
        metadata={"status": str(report.status), "problems": len(report.problems)},
    )
    body = doc["body"]
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "chunk_count": len(entries),
            "merkle_root": root_hex,
            "manifest_version": version,
            "manifest_reused": reused,
            "raw_bytes": body["raw_bytes"],
            "stored_bytes": body["stored_bytes"],
            "duration_ms": body["duration_ms"],
            "encoder": session.encoder or "",
            "signing_key_id": doc["signature"]["key_id"],
            "manifest": dg.MetadataValue.path(str(vault.store.manifest_path(sid, version))),
            "session_view": dg.MetadataValue.url(f"{vault.api_url}/viewer/#{sid}"),
        },
    )
