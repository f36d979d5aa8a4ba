"""Rebuild the Iceberg catalog from the chunk store alone: envelopes, wrapped data keys and signed
manifests determine every column except the two wall-clock times of a chunk row (recorded_at and
stored_at, taken from the envelope file's mtime) and a session row's deleted_at."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

from .core import catalog, envelope
from .core.states import Insight
from .insight.records import Records
from .insight.session import VERSIONS, open_index
from .insight.view import NoKey, SessionView, summary_row
from .keyring import Keyring
from .lake import Lake
from .store import ChunkStore

NOT_DETERMINED = {
    catalog.CHUNKS: {"recorded_at", "stored_at"},
    catalog.SESSIONS: {"deleted_at"},
    catalog.INSIGHT: {"derived_at"},
}


def _ts(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


# long: one pass over a session's files gives both tables' rows, side by side
def rows_for(store: ChunkStore, keyring: Keyring, sid: str) -> tuple[list[dict], list[dict]]:
    manifests = []
    for v in store.manifest_versions(sid):
        data = store.read_manifest(sid, v)
        if data is None:  # removed meanwhile
            continue
        manifests.append((v, data, json.loads(data)))
    listed = {c["seq"]: c for c in manifests[-1][2]["body"]["chunks"]} if manifests else {}
    dek = store.data_key(sid, keyring)
    chunks, stamps = [], {e.key: e.mtime for e in store.objects.list(f"{sid}/chunks")}
    for seq in store.stored_seqs(sid):
        data = store.read_envelope(sid, seq)
        if data is None:
            continue
        header = envelope.parse_header(data)
        entry = listed.get(seq)
        if entry is not None:
            raw_sha, duration = entry["raw_sha256"], entry["duration_ms"]
        elif dek is not None:  # not sealed yet: the plaintext hash needs the key
            raw_sha = hashlib.sha256(
                envelope.open_envelope(data, dek=dek, session_id=uuid.UUID(sid), seq=seq)[1]
            ).hexdigest()
            duration = 0
        else:
            continue
        mtime = datetime.fromtimestamp(stamps.get(store.envelope_key(sid, seq), 0.0), UTC)
        chunks.append(
            {
                "session_id": sid,
                "seq": seq,
                "raw_sha256": raw_sha,
                "envelope_sha256": hashlib.sha256(data).hexdigest(),
                "raw_size": header.raw_len,
                "stored_size": len(data),
                "compressed": header.compressed,
                "key_version": header.key_version,
                "envelope_uri": store.envelope_uri(sid, seq),
                "duration_ms": duration,
                "recorded_at": mtime,
                "stored_at": mtime,
            }
        )
    sessions = []
    for version, data, doc in manifests:
        body, head = doc["body"], doc["body"]["session"]
        sessions.append(
            {
                "session_id": sid,
                "name": head["name"],
                "manifest_version": version,
                "chunk_count": body["chunk_count"],
                "raw_bytes": body["raw_bytes"],
                "stored_bytes": body["stored_bytes"],
                "duration_ms": body["duration_ms"],
                "merkle_root": body["merkle"]["root"],
                "manifest_uri": store.manifest_uri(sid, version),
                "manifest_sha256": hashlib.sha256(data).hexdigest(),
                "signing_key_id": doc["signature"]["key_id"],
                "encoder": head.get("encoder"),
                "started_at": _ts(head.get("started_at")),
                "stopped_at": _ts(head.get("stopped_at")),
                "sealed_at": _ts(body["sealed_at"]),
                "deleted_at": None,
            }
        )
    return chunks, sessions


def rebuild(lake: Lake, store: ChunkStore, keyring: Keyring) -> dict:
    """Replace each session's rows in both tables by what its files say (one overwrite per session
    and table, so it can run over a damaged catalog or an empty one, and be repeated)."""
    lake.ensure_tables()
    counts = {"sessions": 0, catalog.CHUNKS: 0, catalog.SESSIONS: 0, catalog.INSIGHT: 0}
    text_index = open_index(store) if store.is_local else None  # a bucket's index is the storage service's
    try:
        for sid in store.sessions():
            chunk_rows, session_rows = rows_for(store, keyring, sid)
            tables = [(catalog.CHUNKS, chunk_rows), (catalog.SESSIONS, session_rows)]
            tables.append((catalog.INSIGHT, insight_rows(store, keyring, sid, text_index)))
            for name, rows in tables:
                lake.replace_rows(name, sid, rows)
                counts[name] += len(rows)
            counts["sessions"] += 1
    finally:
        if text_index is not None:
            text_index.close()
    return counts


def insight_rows(store: ChunkStore, keyring: Keyring, sid: str, text_index) -> list[dict]:
    """The session's lucid.session_insight row from its sealed insight records (none when it has
    none, or no data key any more)."""
    if not store.objects.dirs(store.derived_prefix(sid)):  # one directory per product; no listing of them all
        return []
    try:
        view = SessionView(store, keyring, sid)
    except NoKey:
        return []
    if text_index is not None:
        indexed = text_index.indexed_chunks(sid)
    else:  # from the bucket alone: the storage service indexes exactly the current text records
        indexed = Records(store, sid).current(Insight.TEXT, VERSIONS[Insight.TEXT])
    return [summary_row(view, len(indexed))]
