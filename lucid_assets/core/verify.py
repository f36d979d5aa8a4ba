"""Verification of a stored session: re-reads everything and reports what is wrong, chunk by chunk.

Inputs are plain values and callables so the same code runs in the storage service, the CLI and
the Dagster checks."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import audit, merkle
from .envelope import EnvelopeError, open_envelope
from .manifest import verify_signature


@dataclass
class Report:
    session_id: str
    checks: list[dict] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    status: str = "verified"  # verified | failed | shredded

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"name": name, "ok": ok, "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return self.status == "verified" and all(c["ok"] for c in self.checks) and all(
            c["ok"] for c in self.chunks)

    def as_dict(self) -> dict:
        problems = [f"{c['name']}: {c['detail']}" for c in self.checks if not c["ok"]] + [
            f"chunk {c['seq']}: {p}" for c in self.chunks for p in c["problems"]]
        status = self.status if self.status != "verified" or self.ok else "failed"
        return {"session_id": self.session_id, "ok": self.ok, "status": status, "problems": problems,
                "checks": self.checks, "chunks": self.chunks}


def verify_session(
    *, session_id: str, manifest_doc: dict | None, public_key: Ed25519PublicKey,
    stored_seqs: list[int], read_envelope: Callable[[int], bytes | None], dek: bytes | None,
    audit_rows: list[dict] | None = None,
) -> Report:
    rep = Report(session_id=session_id)
    sid = uuid.UUID(session_id)
    if manifest_doc is None:
        rep.check("manifest", False, "no signed manifest is stored for this session")
        return rep
    ok, detail = verify_signature(manifest_doc, public_key)
    rep.check("signature", ok, detail)
    body = manifest_doc.get("body", {})
    entries = body.get("chunks", [])
    rep.check("manifest_session", body.get("session", {}).get("id") == session_id,
              f"manifest names session {body.get('session', {}).get('id')}")
    seqs = [c.get("seq") for c in entries]
    dense = seqs == list(range(len(seqs)))
    rep.check("sequence", dense and body.get("chunk_count") == len(seqs),
              "chunks 0..%d present in order" % (len(seqs) - 1) if dense else f"manifest seqs are not dense from 0: {seqs}")
    extra = sorted(set(stored_seqs) - set(seqs))
    missing_in_store = sorted(set(seqs) - set(stored_seqs))
    rep.check("store_listing", not extra and not missing_in_store,
              "store holds exactly the manifest's chunks" if not extra and not missing_in_store else
              f"store has extra chunks {extra} and lacks {missing_in_store}")
    if dek is None:
        rep.status = "shredded"
        rep.check("data_key", True, "the session's data key was destroyed (crypto-shredded); "
                  "contents are unrecoverable by design, storage hashes still checked")
    leaves: list[bytes] = []
    for entry in entries:
        seq = entry.get("seq")
        problems: list[str] = []
        data = read_envelope(seq) if isinstance(seq, int) else None
        if data is None:
            problems.append("envelope missing from the store")
            leaves.append(bytes.fromhex(entry.get("envelope_sha256", "00" * 32)))
        else:
            digest = hashlib.sha256(data).digest()
            leaves.append(digest)
            if digest.hex() != entry.get("envelope_sha256"):
                problems.append("envelope hash differs from the manifest (envelope altered or replaced)")
            if len(data) != entry.get("stored_size"):
                problems.append(f"envelope is {len(data)} bytes, manifest says {entry.get('stored_size')}")
            if dek is not None:
                try:
                    _, raw = open_envelope(data, dek=dek, session_id=sid, seq=seq)
                    if hashlib.sha256(raw).hexdigest() != entry.get("raw_sha256"):
                        problems.append("plaintext hash differs from the manifest")
                except EnvelopeError as exc:
                    problems.append(f"envelope does not open: {exc}")
        rep.chunks.append({"seq": seq, "ok": not problems, "problems": problems})
    root_hex = merkle.root(leaves).hex()
    claimed = body.get("merkle", {}).get("root")
    rep.check("merkle_root", root_hex == claimed,
              f"root {root_hex} matches the manifest" if root_hex == claimed else
              f"recomputed root {root_hex} != manifest root {claimed}")
    if audit_rows is not None:
        problems = audit.verify_chain(audit_rows)
        rep.check("audit_chain", not problems, "; ".join(problems) or f"{len(audit_rows)} entries chained")
    return rep
