"""Signed checkpoints: while a session records, every processing batch publishes (tree size, root,
time) signed with the manifest key, with an RFC 6962 consistency proof from the previous
checkpoint, so whoever holds an earlier checkpoint can prove the first N chunks were never
rewritten. The sealed manifest carries the same link to the last checkpoint."""

from __future__ import annotations

import json
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


def file_name(tree_size: int) -> str:
    """The chunk store's name for a checkpoint file (tree size zero-padded to 8 digits)."""
    return f"{tree_size:08d}.json"


def _read(name: str, data: bytes, session_id: str, public_key: Ed25519PublicKey, n: int) -> tuple[dict | None, str]:
    """A stored checkpoint file's body, or None and why it is not a checkpoint of this session."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None, "not valid JSON (damaged)"
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
        return None, "not a signed checkpoint"
    ok, why = verify_signature(doc, public_key)
    body = doc["body"]
    size = body.get("tree_size")
    if not ok:
        return None, why
    if body.get("format") != FORMAT or body.get("session_id") != session_id:
        return None, "not a checkpoint of this session"
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= n:
        return None, f"tree size {size!r} outside the sealed tree of {n}"
    if name != file_name(size):
        return None, f"holds checkpoint {size} under another name (renamed or moved)"
    return body, ""


# long: one walk of the signed chain, each link checked where it is followed
def verify_linked(
    session_id: str,
    files: dict[str, bytes],
    manifest_link: dict | None,
    public_key: Ed25519PublicKey,
    leaves: Sequence[bytes],
) -> tuple[list[str], int]:
    """Problems with a sealed session's checkpoints and the length of their signed chain.

    The chain is what the signed manifest claims: its `checkpoint` link names a checkpoint (tree
    size and root) with a consistency proof to the sealed tree; that checkpoint's `previous` names
    the one before, and so on back to the first, whose `previous` is null. Every named checkpoint
    must exist, be signed, match the link that names it and the first `tree_size` sealed chunks.
    `files` maps every file of the live checkpoint directory to its bytes: a file that is not part
    of the chain is a problem too (the manifest did not sign it)."""
    problems: list[str] = []
    n = len(leaves)
    bodies: dict[str, dict] = {}
    for name, data in sorted(files.items()):
        body, why = _read(name, data, session_id, public_key, n)
        if body is None:
            problems.append(f"checkpoint file {name}: {why}")
        else:
            bodies[name] = body
    link, who, child_size, child_root = manifest_link, "the manifest", n, merkle.root(leaves).hex()
    chain: list[str] = []
    while link is not None:
        size = link.get("tree_size") if isinstance(link, dict) else None
        limit = child_size - 1 if chain else child_size  # sizes strictly decrease along the chain
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= limit:
            problems.append(f"{who} links checkpoint {size!r}, which cannot precede a tree of {child_size}")
            break
        name = file_name(size)
        body = bodies.get(name)
        if body is None:
            if name not in files:
                problems.append(f"checkpoint {size}, which {who} links, is missing")
            break
        if body.get("root") != link.get("root"):
            problems.append(f"checkpoint {size} is not the one {who} links (its root differs)")
            break
        if not link_ok(link, child_size, child_root):
            problems.append(f"{who}'s consistency proof from checkpoint {size} does not verify")
        if merkle.root(leaves[:size]).hex() != body["root"]:
            problems.append(f"checkpoint {size}: the first {size} sealed chunks no longer match its root (rewritten)")
        chain.append(name)
        link, who, child_size, child_root = body.get("previous"), f"checkpoint {size}", size, body["root"]
    for name in sorted(set(bodies) - set(chain)):
        problems.append(f"checkpoint file {name} is not part of the chain the manifest signs")
    return problems, len(chain)
