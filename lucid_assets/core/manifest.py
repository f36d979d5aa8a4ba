"""Canonical JSON and the signed session manifest.

Canonical JSON: UTF-8, object keys sorted, no insignificant whitespace, integers and strings only
(no floats), so that the same manifest always has the same bytes and the same signature.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import keys

MANIFEST_FORMAT = "lucid-manifest/1"


def no_floats(obj: Any) -> None:
    """ValueError unless `obj` fits canonical JSON (no floats, string keys)."""
    if isinstance(obj, float):
        raise ValueError("canonical JSON forbids floats; use integers (ms, bytes)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError("canonical JSON keys must be strings")
            no_floats(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            no_floats(v)


def canonical_json(obj: Any) -> bytes:
    no_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: dict, key: Ed25519PrivateKey) -> dict:
    """A signed document: {"body": ..., "signature": {"alg", "key_id", "value"}}."""
    sig = key.sign(canonical_json(body))
    return {
        "body": body,
        "signature": {
            "alg": "Ed25519",
            "key_id": keys.public_key_id(key.public_key()),
            "value": base64.b64encode(sig).decode(),
        },
    }


def verify_signature(doc: dict, public_key: Ed25519PublicKey) -> tuple[bool, str]:
    try:
        sig = doc["signature"]
        if sig.get("alg") != "Ed25519":
            return False, f"unsupported signature algorithm {sig.get('alg')!r}"
        if sig.get("key_id") != keys.public_key_id(public_key):
            return (
                False,
                f"signed by key {sig.get('key_id')}, not by this platform's key {keys.public_key_id(public_key)}",
            )
        public_key.verify(base64.b64decode(sig["value"], validate=True), canonical_json(doc["body"]))
        return True, "signature valid"
    except InvalidSignature:
        return False, "signature does not match the manifest body"
    except (KeyError, TypeError, ValueError) as exc:
        return False, f"signature block malformed: {exc}"


def build_manifest(
    *,
    session: dict,
    chunks: list[dict],
    merkle_root_hex: str,
    sealed_at: str,
    version: int = 1,
    checkpoint: dict | None = None,
    audit: dict | None = None,
) -> dict:
    """The manifest body. `chunks` are dicts with seq, envelope_sha256, raw_sha256, raw_size,
    stored_size, duration_ms, compressed; `checkpoint` links the last published checkpoint to the
    sealed tree (core.checkpoint.link); `audit` is {"entries": n, "head": hash of entry n-1}."""
    return {
        "checkpoint": checkpoint,
        "audit": audit,
        "format": MANIFEST_FORMAT,
        "version": version,
        "session": session,
        "chunk_count": len(chunks),
        "chunks": chunks,
        "raw_bytes": sum(c["raw_size"] for c in chunks),
        "stored_bytes": sum(c["stored_size"] for c in chunks),
        "duration_ms": sum(c["duration_ms"] for c in chunks),
        "merkle": {"alg": "RFC6962-SHA256", "leaves": "sha256(envelope)", "size": len(chunks), "root": merkle_root_hex},
        "formats": {"envelope": "LUCE/1", "chunk": "video/mp2t", "compression": "zstd"},
        "sealed_at": sealed_at,
    }
