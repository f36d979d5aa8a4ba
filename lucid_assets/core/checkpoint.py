"""Signed checkpoints: while a session records, every processing batch publishes (tree size, root,
time) signed with the manifest key, with an RFC 6962 consistency proof from the previous
checkpoint, so whoever holds an earlier checkpoint can prove the first N chunks were never
rewritten. The sealed manifest carries the same link to the last checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import merkle
from .manifest import sign, verify_signature

FORMAT = "lucid-checkpoint/1"


def link(previous: dict | None, leaves: Sequence[bytes]) -> dict | None:
    """{tree_size, root, consistency} proving `previous` (a checkpoint body) is a prefix of `leaves`."""
    if previous is None:
        return None
    m = previous["tree_size"]
    return {
        "tree_size": m,
        "root": previous["root"],
        "consistency": [p.hex() for p in merkle.consistency_proof(m, leaves)],
    }


def build(session_id: str, leaves: Sequence[bytes], time_iso: str, previous: dict | None) -> dict:
    return {
        "format": FORMAT,
        "session_id": session_id,
        "tree_size": len(leaves),
        "root": merkle.root(leaves).hex(),
        "time": time_iso,
        "previous": link(previous, leaves),
    }


def publish(
    session_id: str, leaves: Sequence[bytes], time_iso: str, previous: dict | None, key: Ed25519PrivateKey
) -> dict:
    return sign(build(session_id, leaves, time_iso, previous), key)


def link_ok(prev_link: dict | None, size: int, root_hex: str) -> bool:
    if prev_link is None:
        return True
    try:
        proof = [bytes.fromhex(p) for p in prev_link["consistency"]]
        return merkle.verify_consistency(
            prev_link["tree_size"], size, proof, bytes.fromhex(prev_link["root"]), bytes.fromhex(root_hex)
        )
    except (KeyError, TypeError, ValueError):
        return False


def verify_chain(
    session_id: str, docs: Sequence[dict], public_key: Ed25519PublicKey, leaves: Sequence[bytes]
) -> list[str]:
    """Problems with a session's checkpoints, oldest first, against the final leaves."""
    problems: list[str] = []
    prev: dict | None = None
    for doc in docs:
        body = doc.get("body", {}) if isinstance(doc, dict) else {}
        size = body.get("tree_size")
        name = f"checkpoint {size}"
        ok, why = verify_signature(doc, public_key) if isinstance(doc, dict) else (False, "unreadable")
        if not ok:
            problems.append(f"{name}: {why}")
            continue
        if body.get("format") != FORMAT or body.get("session_id") != session_id:
            problems.append(f"{name}: not a checkpoint of this session")
            continue
        if not isinstance(size, int) or not 0 < size <= len(leaves):
            problems.append(f"{name}: tree size outside the sealed tree of {len(leaves)}")
            continue
        if prev is None and body.get("previous") is not None:
            problems.append(f"{name}: links checkpoint {body['previous'].get('tree_size')}, which is missing")
        if prev is not None:
            want = {"tree_size": prev["tree_size"], "root": prev["root"]}
            got = body.get("previous") or {}
            if {k: got.get(k) for k in want} != want or not link_ok(got, size, body["root"]):
                problems.append(f"{name}: consistency proof from checkpoint {prev['tree_size']} does not verify")
        if merkle.root(leaves[:size]).hex() != body.get("root"):
            problems.append(f"{name}: the first {size} stored chunks no longer match its root (rewritten)")
        prev = body
    return problems
