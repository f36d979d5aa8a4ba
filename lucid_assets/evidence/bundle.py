"""The evidence bundle (docs/FORMAT.md §10): one deterministic ustar file proving a sealed session,
or a contiguous run of its chunks, to someone with no Lucid and no account.

Sizes of every member are known before the first byte goes out (small members are built in
memory; chunk sizes are the signed `raw_size`s; the MP4's size comes from its layout), so the
bundle has a Content-Length and streams with one chunk in memory at a time, like the exports."""

from __future__ import annotations

import hashlib
import json
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..core import keys, merkle
from ..core.manifest import canonical_json
from ..keyring import Keyring
from ..playback import DamagedChunk, Mp4Export, coalesce, plain_chunks, sealed_cache_key
from ..store import ChunkStore

FORMAT = "lucid-evidence/1"
HERE = Path(__file__).resolve().parent
SHIPPED = ("VERIFY.md", "verify.py")  # the auditor's instructions and the standalone verifier
BLOCK, RECORD = 512, 10240  # tar's block and record sizes (what tarfile and GNU tar write)


class NotSealed(Exception):
    """No sealed manifest: there is nothing final to prove yet."""


class OutOfScope(ValueError):
    """`first`/`last` do not name a run of the sealed chunks."""


@dataclass
class Member:
    name: str
    size: int
    parts: Callable[[], Iterable[bytes | memoryview]]  # the member's bytes, produced when streamed


def _pad(n: int) -> int:
    return -n % BLOCK


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header with nothing in it that varies from one machine or run to the next."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def tar_size(members: list[Member]) -> int:
    body = sum(BLOCK + m.size + _pad(m.size) for m in members) + 2 * BLOCK
    return body + -body % RECORD


def tar_stream(members: list[Member], mtime: int) -> Iterator[bytes | memoryview]:
    """The tar: each member's header, its parts (checked to add up to its size), its padding."""
    total = 0
    for m in members:
        yield tar_header(m.name, m.size, mtime)
        n = 0
        for part in m.parts():
            n += len(part)
            yield part
        if n != m.size:
            raise DamagedChunk(f"{m.name}: {n} bytes where {m.size} were announced")
        if _pad(m.size):
            yield bytes(_pad(m.size))
        total += BLOCK + m.size + _pad(m.size)
    end = 2 * BLOCK + -(total + 2 * BLOCK) % RECORD
    yield bytes(end)


def _fixed(data: bytes) -> Callable[[], list[bytes]]:
    return lambda: [data]


def _small(name: str, data: bytes) -> Member:
    return Member(name, len(data), _fixed(data))


class EvidenceBundle:
    """The bundle of a sealed session: `.size`, `.name` (the file name), `.stream()`.

    `audit_rows` are the session's audit log rows ({"entry", "prev_hash", "hash"}, in order, as
    the pipeline serves them); only the first `audit.entries` of them (what the manifest signs) go
    in. `first`/`last` limit the chunks (and the MP4) to a contiguous run of seqs; `window_ms` is
    the share window they were chosen for (recorded in bundle.json, not checked here)."""

    # long: the bundle's members in FORMAT.md §10's order, each sized before the first byte goes out
    def __init__(
        self,
        store: ChunkStore,
        keyring: Keyring,
        public_key: Ed25519PublicKey,
        session_id: str,
        audit_rows: list[dict],
        first: int | None = None,
        last: int | None = None,
        window_ms: tuple[int, int] | None = None,
    ):
        uuid.UUID(session_id)  # the name of a path component and of the file: only ever a UUID
        found = store.latest_manifest(session_id)
        if found is None:
            raise NotSealed(f"session {session_id} has no signed manifest (not sealed)")
        version, manifest_bytes = found
        doc = json.loads(manifest_bytes)
        body = doc["body"]
        chunks = body["chunks"]
        n = len(chunks)
        first = 0 if first is None else first
        last = n - 1 if last is None else last
        if not 0 <= first <= last < n:
            raise OutOfScope(f"chunks {first}..{last} are not within the session's {n} chunks (0..{n - 1})")
        self.sid, self.scope = session_id, chunks[first : last + 1]
        seqs = [c["seq"] for c in self.scope]
        self.whole = first == 0 and last == n - 1
        signed_entries = body["audit"]["entries"]
        if len(audit_rows) < signed_entries:
            raise DamagedChunk(f"the audit log has {len(audit_rows)} entries; the manifest signs {signed_entries}")
        self.mtime = int(datetime.fromisoformat(body["sealed_at"]).timestamp())
        # before any byte: the MP4's layout (every chunk's plan) and the data key
        # the whole session's layout facts are those the MP4 export caches (one read of every plan)
        mp4 = Mp4Export(store, keyring, session_id, seqs, cache_key=sealed_cache_key(chunks) if self.whole else None)
        tree = merkle.Tree([bytes.fromhex(c["envelope_sha256"]) for c in chunks])
        raw = keys.public_key_bytes(public_key)
        top = f"lucid-evidence-{session_id}/"
        table = {
            "format": FORMAT,
            "session_id": session_id,
            "scope": {
                "first_seq": first,
                "last_seq": last,
                "chunk_count": n,
                "window_ms": list(window_ms) if window_ms else None,
            },
            "key_id": keys.public_key_id(public_key),
            "key_fingerprint": hashlib.sha256(raw).hexdigest(),
            "audit": body["audit"],
            "mp4_size": mp4.size,
        }
        pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        members = [_small(top + name, (HERE / name).read_bytes()) for name in SHIPPED]
        members += [
            _small(top + "bundle.json", canonical_json(table)),
            _small(top + "signing-key.pem", pem),
            _small(top + "manifest.json", manifest_bytes),
        ]
        for v in range(1, version):
            if (older := store.read_manifest(session_id, v)) is not None:
                members.append(_small(f"{top}manifests/v{v}.json", older))
        for name, data in store.checkpoint_files(session_id).items():
            members.append(_small(f"{top}checkpoints/{name}", data))
        audit = b"".join(canonical_json(r) + b"\n" for r in audit_rows[:signed_entries])
        members.append(_small(top + "audit.jsonl", audit))
        root = tree.root.hex()
        for c in self.scope:
            proof = {
                "seq": c["seq"],
                "leaf": c["envelope_sha256"],
                "tree_size": n,
                "root": root,
                "path": [h.hex() for h in tree.path(c["seq"])],
            }
            members.append(_small(f"{top}proofs/{c['seq']:08d}.json", canonical_json(proof)))
        members += self._chunk_members(store, keyring, top)
        members.append(Member(top + "recording.mp4", mp4.size, lambda: mp4.byte_range(0, mp4.size - 1)))
        self.members = members
        self.size = tar_size(members)
        suffix = "" if self.whole else f"-{first}-{last}"
        self.name = f"lucid-evidence-{session_id}{suffix}.tar"

    def _chunk_members(self, store: ChunkStore, keyring: Keyring, top: str) -> list[Member]:
        """One member per chunk, its bytes decrypted when streamed; all from one decrypting pass.
        Each envelope's GCM tag is checked as it opens (a chunk that is not the one sealed under
        this session's key for this seq stops the stream); its signed SHA-256 is the verifier's to
        check: hashing here was about a quarter of the bundle's production time (SHA-256 runs at
        1.8 GB/s here, half the bundle's bytes are chunks, the whole bundle is produced at ~1.3 GB/s)."""
        source = plain_chunks(store, keyring, self.sid, [c["seq"] for c in self.scope])
        return [Member(f"{top}chunks/{c['seq']:08d}.ts", c["raw_size"], lambda: [next(source)]) for c in self.scope]

    def stream(self) -> Iterator[bytes | memoryview]:
        return coalesce(tar_stream(self.members, self.mtime))
