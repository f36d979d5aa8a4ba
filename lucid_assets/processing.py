"""Processing sessions, many at a time: the work behind the `stored_chunks` and `session_manifest`
assets, with no Dagster in it. A batch is a list of `Work` items, one per session; each phase does
its per-session part for every session, then its shared part once for the whole batch (one Iceberg
commit per table, one registry call for every stored mark), so the cost of a batch grows with the
chunks in it, not with the sessions. A failure in one session (a staging file gone, a damaged
envelope, a key that does not open) is recorded on that session's `Work` and the others go on.

Phases: `store` (envelope new chunks, catalogue them, mark them stored, drop staging, sign a
checkpoint, check what was written), then for finalized sessions `seal` (sign or reuse the
manifest, catalogue it, record it with the registry, verify it against the store)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import playback
from .clients import PipelineClient
from .core import catalog, checkpoint, envelope, merkle
from .core.manifest import build_manifest, canonical_json, sign, verify_signature
from .core.states import ChunkState
from .core.verify import Report
from .keyring import Keyring
from .lake import Lake
from .models import AuditEntry, ManifestSummary, RegisteredChunk, Session, StoredMark
from .store import STAGED, ChunkStore
from .verification import verify_stored

log = logging.getLogger("lucid.processing")


class ProcessingError(Exception):
    """Why one session could not be processed (said to the operator as it is)."""


@dataclass
class Vault:
    """Where sealed data lives: the keys, the chunk store and the Iceberg catalog."""

    keyring: Keyring
    store: ChunkStore
    lake: Lake
    workers: int = 2


@dataclass
class Work:
    """One session's share of a batch, and what became of it."""

    session: Session
    chunks: list[RegisteredChunk]  # every registered chunk, in seq order
    force: bool = False  # re-envelope everything (a forced reprocess)
    todo: list[RegisteredChunk] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # catalog rows of the chunks enveloped now
    marks: list[StoredMark] = field(default_factory=list)  # stored marks sent to the registry
    appended: int = 0  # catalog rows this batch added for the session
    checkpoint: dict | None = None  # the checkpoint body signed now, if the stored prefix grew
    problems: list[str] = field(default_factory=list)  # the chunk check's findings
    error: str | None = None  # processing stopped for this session: why
    dek: bytes | None = field(default=None, repr=False)

    @property
    def sid(self) -> str:
        return self.session.id

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    def totals(self) -> list[dict]:
        """Every chunk's row as far as this batch knows: the fresh ones, else what the registry says."""
        fresh = {r["seq"]: r for r in self.rows}
        return [fresh.get(c.seq) or _known_row(c) for c in self.chunks]

    def metadata(self) -> dict:
        stored = self.totals()
        raw, size = sum(r["raw_size"] for r in stored), sum(r["stored_size"] or 0 for r in stored)
        return {
            "chunk_count": len(stored),
            "newly_stored": len(self.marks),
            "catalog_rows_appended": self.appended,
            "checkpoint_tree_size": self.checkpoint["tree_size"] if self.checkpoint else None,
            "checkpoint_root": self.checkpoint["root"] if self.checkpoint else None,
            "raw_bytes": raw,
            "stored_bytes": size,
            "compression_ratio": round(size / raw, 4) if raw else 1.0,
            "compressed_chunks": sum(bool(r["compressed"]) for r in stored),
        }

    def check_summary(self) -> str:
        if self.error:
            return self.error
        if self.problems:
            more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            return "; ".join(self.problems[:5]) + more
        return f"{len(self.todo)} written chunks readable; {len(self.chunks)} catalogued once each"


def _known_row(c: RegisteredChunk) -> dict:
    return {
        "seq": c.seq,
        "envelope_sha256": c.envelope_sha256,
        "raw_size": c.size,
        "stored_size": c.stored_size,
        "compressed": c.compressed,
    }


def _ts(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _going(works: Iterable[Work]) -> list[Work]:
    """The sessions of the batch that have not failed so far."""
    return [w for w in works if w.error is None]


def _fail(w: Work, exc: BaseException, what: str) -> None:
    w.error = f"{what}: {exc}" if isinstance(exc, ProcessingError) else f"{what}: {type(exc).__name__}: {exc}"
    log.error("session %s: %s", w.sid, w.error)


# --- store ----------------------------------------------------------------------------------------
def envelope_chunk(vault: Vault, sid: str, dek: bytes, chunk: RegisteredChunk, force: bool = False) -> dict:
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
        raw = read_staging(vault, sid, dek, chunk)
        if hashlib.sha256(raw).hexdigest() != chunk.sha256:
            raise ProcessingError(f"chunk {seq}: staging file {chunk.path} does not match its registered SHA-256")
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


def read_staging(vault: Vault, sid: str, dek: bytes, chunk: RegisteredChunk) -> bytes:
    """The registered segment's bytes: a file on a filesystem this host shares with the recorder, or
    the sealed object a recorder on another host uploaded to the chunk store (store.STAGED)."""
    if not chunk.path.startswith(STAGED):
        try:
            return Path(chunk.path).read_bytes()
        except FileNotFoundError:
            raise ProcessingError(
                f"chunk {chunk.seq}: staging file {chunk.path} is gone and no valid envelope exists"
            ) from None
    try:
        raw = vault.store.read_staged(sid, chunk.seq, dek=dek)
    except envelope.EnvelopeError:
        raise ProcessingError(f"chunk {chunk.seq}: the staged upload does not open under the session's key") from None
    if raw is None:
        raise ProcessingError(f"chunk {chunk.seq}: staging file {chunk.path} is gone and no valid envelope exists")
    return raw


def drop_staging(vault: Vault, sid: str, chunk: RegisteredChunk) -> None:
    if chunk.path.startswith(STAGED):
        vault.store.drop_staged(sid, chunk.seq)
    else:
        Path(chunk.path).unlink(missing_ok=True)


def _plan_export(vault: Vault, sid: str, seq: int, raw: bytes, dek: bytes, data: bytes) -> None:
    """The chunk's sealed MP4 plan, so exports never parse a chunk. Derived data: storage makes it
    again when missing; a chunk that is not H.264 in MPEG-TS simply has none."""
    try:
        playback.write_chunk_plan(vault.store, sid, seq, raw, dek=dek, tag=bytes(data[-envelope.TAG_LEN :]))
    except playback.NotExportable:
        pass


def _envelope_all(vault: Vault, works: list[Work]) -> None:
    """Every new chunk of every session, in parallel (zstd, AES and file writes release the GIL)."""
    jobs = []
    for w in _going(works):
        w.todo = w.chunks if w.force else [c for c in w.chunks if c.state != ChunkState.STORED]
        if not w.todo:
            continue
        try:
            w.dek = vault.store.data_key(w.sid, vault.keyring, create=True)
        except Exception as exc:  # one session's key problem is that session's failure
            _fail(w, exc, "data key")
            continue
        jobs += [(w, c) for c in w.todo]
    with ThreadPoolExecutor(max_workers=max(1, vault.workers)) as pool:
        results = list(pool.map(lambda job: _try_envelope(vault, *job), jobs))
    for (w, _), result in zip(jobs, results):
        if isinstance(result, BaseException):
            if w.error is None:
                _fail(w, result, "envelope")
        else:
            w.rows.append(result)


def _try_envelope(vault: Vault, w: Work, c: RegisteredChunk) -> dict | BaseException:
    try:
        return envelope_chunk(vault, w.sid, w.dek, c, w.force)
    except Exception as exc:  # reported on the session, the batch goes on
        return exc


def _catalogue(vault: Vault, works: list[Work]) -> None:
    """One commit for the whole batch (a forced reprocess replaces that session's rows instead)."""
    forced = [w for w in _going(works) if w.force and w.rows]
    for w in forced:
        vault.lake.replace_rows(catalog.CHUNKS, w.sid, w.rows)
        w.appended = len(w.rows)
    live = [w for w in _going(works) if not w.force and w.rows]
    if live:
        added = vault.lake.append_missing_many(catalog.CHUNKS, [r for w in live for r in w.rows], key="seq")
        for w in live:
            w.appended = added.get(w.sid, 0)


def _mark_stored(vault: Vault, client: PipelineClient, works: list[Work]) -> None:
    """Tell the registry in one call (one transaction) which chunks are now durable and catalogued."""
    for w in _going(works):
        known = {c.seq: c for c in w.todo}
        w.marks = [
            StoredMark(
                session_id=w.sid,
                seq=r["seq"],
                envelope_sha256=r["envelope_sha256"],
                stored_size=r["stored_size"],
                compressed=r["compressed"],
            )
            for r in w.rows
            if known[r["seq"]].state != ChunkState.STORED or known[r["seq"]].envelope_sha256 != r["envelope_sha256"]
        ]
    marks = [m for w in _going(works) for m in w.marks]
    if marks:
        client.mark_stored(marks)
    for w in _going(works):
        for c in w.chunks:
            drop_staging(vault, w.sid, c)  # durable and catalogued: staging can go


def publish_checkpoint(vault: Vault, sid: str, rows: list[dict]) -> dict | None:
    """Sign a checkpoint over the dense stored prefix when it grew since the last one."""
    leaves = []
    for i, r in enumerate(sorted(rows, key=lambda r: r["seq"])):
        if r["seq"] != i or not r["envelope_sha256"]:
            break
        leaves.append(bytes.fromhex(r["envelope_sha256"]))
    existing = vault.store.checkpoints(sid)
    previous = existing[-1]["body"] if existing else None
    if not leaves or (previous and previous["tree_size"] >= len(leaves)):
        return None
    doc = checkpoint.publish(sid, leaves, datetime.now(UTC).isoformat(), previous, vault.keyring.signing)
    vault.store.write_checkpoint(sid, len(leaves), canonical_json(doc))
    return doc["body"]


def _check(vault: Vault, works: list[Work]) -> None:
    """Re-read what was written; the catalog holds each registered chunk once (one scan for all)."""
    going = list(_going(works))
    catalogued = vault.lake.keys_by_session(catalog.CHUNKS, [w.sid for w in going], "seq")
    for w in going:
        for c in w.todo:
            w.problems += _reread(vault, w, c)
        rows = sorted(catalogued.get(w.sid, []))
        registered = [c.seq for c in w.chunks]
        if rows != registered:
            w.problems.append(f"lucid.chunks holds seqs {rows}, the registry {registered}")
        n = w.session.expected_chunks
        if n is not None and registered != list(range(n)):
            w.problems.append(f"finalized with {n} chunks but the registry holds {registered}")


def _reread(vault: Vault, w: Work, c: RegisteredChunk) -> list[str]:
    data = vault.store.read_envelope(w.sid, c.seq)
    if data is None:
        return [f"chunk {c.seq}: envelope missing"]
    try:
        _, raw = envelope.open_envelope(data, dek=w.dek, session_id=uuid.UUID(w.sid), seq=c.seq)
    except envelope.EnvelopeError as exc:
        return [f"chunk {c.seq}: {exc}"]
    return [] if hashlib.sha256(raw).hexdigest() == c.sha256 else [f"chunk {c.seq}: plaintext differs"]


def store(client: PipelineClient, vault: Vault, works: list[Work]) -> list[Work]:
    """The `stored_chunks` work for every session of the batch; returns the works."""
    _envelope_all(vault, works)
    _catalogue(vault, works)
    _mark_stored(vault, client, works)
    for w in _going(works):
        try:
            w.checkpoint = publish_checkpoint(vault, w.sid, w.totals())
        except Exception as exc:
            _fail(w, exc, "checkpoint")
    _check(vault, works)
    return works


# --- seal -----------------------------------------------------------------------------------------
@dataclass
class Sealed:
    """A session's manifest as this batch left it."""

    work: Work
    version: int = 0
    data: bytes = b""
    doc: dict = field(default_factory=dict)
    reused: bool = False
    report: Report | None = None
    events: list[AuditEntry] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.report is not None and self.report.ok

    def summary(self) -> str:
        if self.error:
            return self.error
        return "; ".join(self.report.problems[:5]) if self.report.problems else "verified against the store"


def session_header(session: Session) -> dict:
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


def manifest_entries(rows: list[dict], expected: int) -> list[dict]:
    seqs = [r["seq"] for r in rows]
    if seqs != list(range(expected)):
        raise ProcessingError(f"lucid.chunks holds seqs {seqs}, expected 0..{expected - 1}")
    keep = ("seq", "envelope_sha256", "raw_sha256", "raw_size", "stored_size", "duration_ms", "compressed")
    return [{k: r[k] for k in keep} for r in rows]


def signed_manifest(
    vault: Vault, session: Session, entries: list[dict], events: list[AuditEntry], force: bool
) -> tuple[int, bytes, dict, bool]:
    """The latest manifest when it already signs exactly these chunks (a rerun keeps it byte for
    byte), else a new version: (version, bytes, document, reused)."""
    sid, signer = session.id, vault.keyring.signing
    root_hex = merkle.root([bytes.fromhex(e["envelope_sha256"]) for e in entries]).hex()
    latest = vault.store.latest_manifest(sid)
    version = 1
    if latest is not None:
        version, data = latest
        doc = json.loads(data)
        body = doc["body"]
        if (
            not force
            and body.get("chunks") == entries
            and body["merkle"]["root"] == root_hex
            and verify_signature(doc, signer.public_key())[0]
        ):
            return version, data, doc, True
        version += 1
    leaves = [bytes.fromhex(e["envelope_sha256"]) for e in entries]
    cps = vault.store.checkpoints(sid)
    body = build_manifest(
        session=session_header(session),
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
        raise ProcessingError(f"manifest v{version} was written concurrently; rerun")
    return version, data, doc, False


def session_row(vault: Vault, s: Sealed) -> dict:
    body, session = s.doc["body"], s.work.session
    return {
        "session_id": session.id,
        "name": session.name,
        "manifest_version": s.version,
        "chunk_count": len(body["chunks"]),
        "raw_bytes": body["raw_bytes"],
        "stored_bytes": body["stored_bytes"],
        "duration_ms": body["duration_ms"],
        "merkle_root": body["merkle"]["root"],
        "manifest_uri": vault.store.manifest_uri(session.id, s.version),
        "manifest_sha256": hashlib.sha256(s.data).hexdigest(),
        "signing_key_id": s.doc["signature"]["key_id"],
        "encoder": session.encoder,
        "started_at": _ts(session.started_at),
        "stopped_at": _ts(session.stopped_at),
        "sealed_at": _ts(body["sealed_at"]),
    }


def _sign_one(client: PipelineClient, vault: Vault, w: Work, rows: list[dict]) -> Sealed:
    s = Sealed(w)
    try:
        if w.session.expected_chunks is None:
            raise ProcessingError(f"session is {w.session.state} and not finalized: no manifest yet")
        entries = manifest_entries(rows, w.session.expected_chunks)
        events = client.events(w.sid)  # once: the manifest signs its head, the check verifies the chain to it
        s.version, s.data, s.doc, s.reused = signed_manifest(vault, w.session, entries, events, w.force)
        s.events = events
    except Exception as exc:  # one session's failure, the batch goes on
        s.error = f"manifest: {exc}" if isinstance(exc, ProcessingError) else f"manifest: {type(exc).__name__}: {exc}"
    return s


def seal(client: PipelineClient, vault: Vault, works: list[Work]) -> list[Sealed]:
    """The `session_manifest` work for every finalized session whose chunks are in order."""
    going = [w for w in works if w.ok]
    rows = vault.lake.rows_by_session(catalog.CHUNKS, [w.sid for w in going])
    sealed = [_sign_one(client, vault, w, rows.get(w.sid, [])) for w in going]
    good = [s for s in sealed if s.error is None]
    if good:
        vault.lake.append_missing_many(catalog.SESSIONS, [session_row(vault, s) for s in good], key="manifest_version")
    public = vault.keyring.signing.public_key()
    for s in good:
        sha = hashlib.sha256(s.data).hexdigest()
        try:
            client.record_manifest(
                s.work.sid,
                ManifestSummary(version=s.version, merkle_root=s.doc["body"]["merkle"]["root"], manifest_sha256=sha),
            )
            s.report = verify_stored(
                vault.store,
                vault.keyring,
                public,
                s.work.sid,
                audit_rows=[e.model_dump() for e in s.events],
                registry_manifest_sha256=sha,
            )
        except Exception as exc:
            s.error = f"record: {type(exc).__name__}: {exc}"
    return sealed
