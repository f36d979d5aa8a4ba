"""Verification of a stored session: re-reads everything and reports what is wrong, chunk by chunk.

Inputs are plain values and callables so the same code runs in the storage service, the CLI, the
Dagster checks and the tests. Checks: manifest readable and signed by this platform's key, for this
session, and the one the registry recorded; the stored manifest versions 1..N each signed, for
this session, under their own number; sequence dense and complete; the store holds exactly the
manifest's chunks; per chunk the envelope hash and size, the GCM tag (which also binds session and
seq), and the plaintext hash; the Merkle root; the checkpoint chain the manifest signs, walked from
its link back to the first checkpoint (each named checkpoint present, signed, matching its link,
consistent, its root over the sealed chunks), and no checkpoint file outside that chain; the audit
chain and its head as signed in the manifest. A session that is not sealed (or deleted) yet is
`pending`: nothing final exists to verify."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import audit, checkpoint, merkle
from .envelope import EnvelopeError, open_envelope
from .manifest import MANIFEST_FORMAT, verify_signature
from .states import State, VerifyStatus

# states whose stored data is final: verify checks them; any other state is pending
VERIFIABLE = frozenset({State.SEALED, State.DELETED})


@dataclass
class Report:
    session_id: str
    checks: list[dict] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    shredded: bool = False
    pending: bool = False

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"name": name, "ok": ok, "detail": detail})
        return ok

    @property
    def problems(self) -> list[str]:
        if self.pending:  # its one check says why; a session not sealed yet has no problems to name
            return []
        return [f"{c['name']}: {c['detail']}" for c in self.checks if not c["ok"]] + [
            f"chunk {c['seq']}: {p}" for c in self.chunks for p in c["problems"]
        ]

    @property
    def status(self) -> VerifyStatus:
        if self.pending:
            return VerifyStatus.PENDING
        if self.problems:
            return VerifyStatus.FAILED
        return VerifyStatus.SHREDDED if self.shredded else VerifyStatus.VERIFIED

    @property
    def ok(self) -> bool:
        return self.status == VerifyStatus.VERIFIED

    def as_dict(self) -> dict:
        return {
            "session_id": self.session_id,
            "ok": self.ok,
            "status": self.status,
            "problems": self.problems,
            "checks": self.checks,
            "chunks": self.chunks,
        }


def pending_report(session_id: str, state: State) -> Report:
    """The report for a session whose recording or processing has not ended in a seal."""
    rep = Report(session_id=session_id, pending=True)
    rep.check(
        "sealed",
        False,
        f"pending: the session is {State(state)}, not sealed; its chunks, manifest and checkpoints are not "
        "final, so there is nothing to verify yet (verify again once it is sealed)",
    )
    return rep


def _versions(
    session_id: str, version: int, older: dict[int, bytes], body: dict, public_key: Ed25519PublicKey
) -> list[str]:
    """Problems with the stored manifest versions: 1..N present, each signed under its own number."""
    problems = []
    if body.get("version", version) != version:
        problems.append(f"manifest.v{version} holds signed version {body.get('version')!r} (renamed or replaced)")
    stored = {*older, version}
    missing = [v for v in range(1, version) if v not in stored]
    problems += [f"manifest.v{v} is missing (versions 1..{version} were signed)" for v in missing]
    problems += [f"manifest.v{v} is not a version of this manifest" for v in sorted(stored) if not 0 < v <= version]
    for v, data in sorted(older.items()):
        doc, why = _parse(data)
        if doc is None:
            problems.append(f"manifest.v{v}: {why}")
            continue
        ok, why = verify_signature(doc, public_key)
        b = doc["body"]
        if not ok:
            problems.append(f"manifest.v{v}: {why}")
        elif (b.get("session") or {}).get("id") != session_id or b.get("version", v) != v:
            problems.append(f"manifest.v{v} is not version {v} of this session's manifest (moved or replaced)")
    return problems


def _parse(manifest_bytes: bytes | None) -> tuple[dict | None, str | None]:
    if manifest_bytes is None:
        return None, "no signed manifest is stored for this session"
    try:
        doc = json.loads(manifest_bytes)
        if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
            return None, "manifest has no body"
        return doc, None
    except (ValueError, UnicodeDecodeError):
        return None, "manifest is not valid JSON (damaged)"


# long: the verification checklist, one check after another in the order the design lists them
def verify_session(
    *,
    session_id: str,
    manifest_bytes: bytes | None,
    public_key: Ed25519PublicKey,
    stored_seqs: list[int],
    read_envelope: Callable[[int], bytes | None],
    dek: bytes | None,
    dek_error: str | None = None,
    audit_rows: list[dict] | None = None,
    checkpoints: dict[str, bytes] | None = None,
    registry_manifest_sha256: str | None = None,
    manifest_version: int | None = None,
    older_manifests: dict[int, bytes] | None = None,
) -> Report:
    """`checkpoints` maps every file of the live checkpoint directory to its bytes; with
    `manifest_version` (the latest file's number) the `older_manifests` {version: bytes} are checked."""
    rep = Report(session_id=session_id)
    sid = uuid.UUID(session_id)
    doc, why = _parse(manifest_bytes)
    if doc is None:
        rep.check("manifest", False, why)
        return rep
    ok, detail = verify_signature(doc, public_key)
    rep.check("signature", ok, detail)
    body = doc["body"]
    rep.check("manifest_format", body.get("format") == MANIFEST_FORMAT, f"format {body.get('format')!r}")
    named = (body.get("session") or {}).get("id")
    rep.check("manifest_session", named == session_id, f"manifest names session {named}")
    if registry_manifest_sha256 is not None:
        sha = hashlib.sha256(manifest_bytes).hexdigest()
        rep.check(
            "manifest_registry",
            sha == registry_manifest_sha256,
            "manifest is the version the registry recorded"
            if sha == registry_manifest_sha256
            else f"manifest sha256 {sha[:16]}… is not the recorded {registry_manifest_sha256[:16]}…",
        )
    if manifest_version is not None:
        problems = _versions(session_id, manifest_version, older_manifests or {}, body, public_key)
        rep.check(
            "manifest_versions",
            not problems,
            "; ".join(problems) or f"manifest versions 1..{manifest_version} stored, each signed for this session",
        )

    deleted = any(r["entry"].get("to") == State.DELETED for r in audit_rows or [])
    entries = body.get("chunks") if isinstance(body.get("chunks"), list) else []
    seqs = [c.get("seq") for c in entries if isinstance(c, dict)]
    dense = seqs == list(range(len(entries)))
    rep.check(
        "sequence",
        dense and body.get("chunk_count") == len(entries),
        f"chunks 0..{len(seqs) - 1} listed in order" if dense else f"manifest seqs are not dense from 0: {seqs}",
    )

    if dek is None and dek_error is None and deleted:
        rep.shredded = True
        rep.check(
            "data_key",
            True,
            "crypto-shredded: the data key was destroyed when the session was deleted; "
            "the contents are unrecoverable by design",
        )
    elif dek is None:
        rep.check(
            "data_key", False, dek_error or "the session's data key is missing, and the audit log records no deletion"
        )
    if not rep.shredded:
        extra = sorted(set(stored_seqs) - set(seqs))
        lacking = sorted(set(seqs) - set(stored_seqs))
        rep.check(
            "store_listing",
            not extra and not lacking,
            "the store holds exactly the manifest's chunks"
            if not extra and not lacking
            else f"store has unlisted chunks {extra}" * bool(extra)
            + " and " * bool(extra and lacking)
            + f"lacks chunks {lacking}" * bool(lacking),
        )

    leaves: list[bytes] = []
    for entry in entries:
        seq = entry.get("seq")
        try:
            leaves.append(bytes.fromhex(entry.get("envelope_sha256", "")))
        except (TypeError, ValueError):
            leaves.append(b"")
        if rep.shredded:
            continue
        problems: list[str] = []
        data = read_envelope(seq) if isinstance(seq, int) and seq >= 0 else None
        if data is None:
            problems.append("envelope missing from the store")
        else:
            if hashlib.sha256(data).hexdigest() != entry.get("envelope_sha256"):
                problems.append("envelope hash differs from the manifest (altered, replaced or moved)")
            if len(data) != entry.get("stored_size"):
                problems.append(f"envelope is {len(data)} bytes, the manifest says {entry.get('stored_size')}")
            if dek is not None:
                try:
                    _, raw = open_envelope(data, dek=dek, session_id=sid, seq=seq)
                    if hashlib.sha256(raw).hexdigest() != entry.get("raw_sha256"):
                        problems.append("plaintext hash differs from the manifest")
                except EnvelopeError as exc:
                    problems.append(f"envelope does not open: {exc}")
        rep.chunks.append({"seq": seq, "ok": not problems, "problems": problems})

    mk = body.get("merkle") or {}
    root_hex = merkle.root(leaves).hex()
    rep.check(
        "merkle_root",
        root_hex == mk.get("root") and mk.get("size") == len(leaves),
        f"root {root_hex} over {len(leaves)} envelopes matches the manifest"
        if root_hex == mk.get("root")
        else f"recomputed root {root_hex} differs from the manifest's {mk.get('root')}",
    )

    if checkpoints is not None:
        problems, n = checkpoint.verify_linked(session_id, checkpoints, body.get("checkpoint"), public_key, leaves)
        rep.check(
            "checkpoints",
            not problems,
            "; ".join(problems)
            or (
                f"{n} checkpoints chained from the manifest back to the first, consistent with the sealed tree"
                if n
                else "the manifest links no checkpoint and none is stored"
            ),
        )

    if audit_rows is not None:
        problems = audit.verify_chain(audit_rows)
        head = body.get("audit") or {}
        n = head.get("entries")
        if isinstance(n, int) and (n > len(audit_rows) or (n and audit_rows[n - 1]["hash"] != head.get("head"))):
            problems.append(f"the first {n} audit entries are not the ones the manifest signed")
        rep.check(
            "audit_chain",
            not problems,
            "; ".join(problems)
            or f"{len(audit_rows)} entries chained" + (f", the first {n} as signed in the manifest" if n else ""),
        )
    return rep
