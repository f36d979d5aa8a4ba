"""Verify a session from the chunk store: the one place that gathers what core.verify needs."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .core import keys
from .core.states import State
from .core.verify import VERIFIABLE, Report, pending_report, verify_session
from .keyring import Keyring
from .store import ChunkStore


def verify_stored(
    store: ChunkStore,
    keyring: Keyring,
    public_key: Ed25519PublicKey,
    session_id: str,
    *,
    audit_rows: list[dict] | None,
    registry_manifest_sha256: str | None = None,
    state: State | None = None,
) -> Report:
    """The full report; with the session's registry `state`, a session that is not sealed (or
    deleted) yet is reported `pending` without reading anything."""
    if state is not None and state not in VERIFIABLE:
        return pending_report(session_id, state)
    versions = store.manifest_versions(session_id)
    latest = versions[-1] if versions else None
    try:
        dek, dek_error = store.data_key(session_id, keyring), None
    except keys.KeyMaterialError as exc:
        dek, dek_error = None, f"the session's data key does not open: {exc}"
    return verify_session(
        session_id=session_id,
        manifest_bytes=store.read_manifest(session_id, latest) if latest else None,
        public_key=public_key,
        stored_seqs=store.stored_seqs(session_id),
        read_envelope=lambda seq: store.read_envelope(session_id, seq),
        dek=dek,
        dek_error=dek_error,
        audit_rows=audit_rows,
        checkpoints=store.checkpoint_files(session_id),
        registry_manifest_sha256=registry_manifest_sha256,
        manifest_version=latest,
        older_manifests={v: m for v in versions[:-1] if (m := store.read_manifest(session_id, v)) is not None},
    )
