"""The hash-chained audit log: each entry's hash covers the previous entry's hash and its own
canonical JSON, so an edited, removed or reordered entry breaks the chain."""

from __future__ import annotations

import hashlib

from .manifest import canonical_json

GENESIS = "0" * 64


def entry_hash(prev_hash: str, entry: dict) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(entry)).hexdigest()


def verify_chain(entries: list[dict]) -> list[str]:
    """Problems found in a chain of {"entry": {...}, "prev_hash", "hash"} rows, in order."""
    problems, prev = [], GENESIS
    for i, row in enumerate(entries):
        if row["prev_hash"] != prev:
            problems.append(f"audit entry {i} does not link to the entry before it")
        if entry_hash(row["prev_hash"], row["entry"]) != row["hash"]:
            problems.append(f"audit entry {i} was altered (hash mismatch)")
        prev = row["hash"]
    return problems
