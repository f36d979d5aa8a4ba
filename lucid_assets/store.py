"""The chunk store: envelopes, wrapped data keys and signed manifests, as objects (`objects.py`) in
a local directory (the embedded default) or an S3-compatible bucket.

    <session>/dek.json            wrapped data key (deleting it crypto-shreds the session)
    <session>/chunks/<seq>.luce   envelopes, seq zero-padded to 8 digits
    <session>/manifest.v<N>.json  signed manifests, one per version
    <session>/checkpoints/<size>.json  signed checkpoints, size zero-padded to 8 digits
    <session>/mp4/<seq>.plan      MP4 export plans (derived; sealed under the data key)
    <session>/derived/<product>/<seq>.<version>.bin  insight records (issue 15; sealed likewise)
    <session>/staging/<seq>.seg   a recorder's uploaded segment until it is stored (issue 17: hosts
                                  share no filesystem; sealed under the data key, kind `stag`)
    credentials/<name>.json       named remote-desktop credentials (credentials.py)

A reader never sees half an object, and first-writer-wins writes (data key, manifest version,
checkpoint) are exclusive on both backends (objects.py says how).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .core import envelope
from .core import keys as corekeys
from .files import is_atomic_tmp, is_uuid
from .keyring import Keyring
from .objects import LocalObjects, Objects, open_objects

if TYPE_CHECKING:
    from .settings import Settings

_MANIFEST = re.compile(r"manifest\.v(\d+)\.json$")
# a registered chunk's `path` that names its staged object in the chunk store, not a local file
STAGED = "chunk-store:"
_STAGED_KIND = b"stag"


class EnvelopeReader:
    """Reads many envelopes through one buffer (a streaming reader's envelopes are consumed one at
    a time: no fresh allocation, no page faults per chunk). A returned view stays valid until the
    next read. A bucket's envelopes come whole from each GET."""

    def __init__(self, store: ChunkStore):
        self.store, self.buf = store, bytearray(0)

    def read(self, session_id: str, seq: int) -> memoryview | None:
        path = self.store.objects.local_path(self.store.envelope_key(session_id, seq))
        if path is None:
            data = self.store.read_envelope(session_id, seq)
            return None if data is None else memoryview(data)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            if len(self.buf) <= size:  # a new buffer, not a resize: an earlier view may still be held
                self.buf = bytearray(size + size // 4 + 1)
            view, n = memoryview(self.buf), 0
            while n < len(view):
                got = f.readinto(view[n:])
                if not got:
                    break
                n += got
            if n == len(view):  # the file is larger than it was when stat'ed
                return memoryview(bytes(view) + f.read())
            return view[:n]


def in_parallel(fn, items: Iterable, workers: int = 16) -> list:
    """fn over items with up to `workers` in flight, results in order (a bucket's small reads are
    network round trips: one after another, a 30-minute session's 180 header reads took 1.5-2 s)."""
    items = list(items)
    if len(items) < 2 or workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


class ChunkStore:
    def __init__(self, root: Path | str | Objects, *, index_path: Path | None = None):
        self.objects: Objects = root if hasattr(root, "put") else LocalObjects(Path(root))
        local = self.objects.root if isinstance(self.objects, LocalObjects) else None
        self._index_path = index_path or (local / ".insight" / "text-index.sqlite" if local else None)

    @classmethod
    def from_settings(cls, s: Settings) -> ChunkStore:
        return cls(open_objects(s.chunk_store_location, s), index_path=s.insight_index_path)

    @property
    def location(self) -> str:
        """Where it is (a directory's URI or s3://bucket/prefix/): for logs, caches and metadata."""
        return self.objects.uri("x")[:-1]

    @property
    def root(self) -> Path:
        """The directory of a local store (tests and the stale-temporary-file sweep work on it)."""
        if not isinstance(self.objects, LocalObjects):
            raise AttributeError(f"{self.location} is a bucket, not a directory")
        return self.objects.root

    @property
    def is_local(self) -> bool:
        return isinstance(self.objects, LocalObjects)

    @property
    def index_path(self) -> Path:
        if self._index_path is None:
            raise ValueError("a chunk store in a bucket needs an explicit insight index path (settings.insight_index)")
        return self._index_path

    @staticmethod
    @functools.lru_cache(maxsize=1024)  # every key of every chunk read names its session
    def _sid(session_id: str) -> str:
        return str(uuid.UUID(session_id))

    def session_dir(self, session_id: str) -> Path:
        """A local store's session directory (tests tamper with files through it)."""
        return self.root / self._sid(session_id)

    # --- envelopes ----------------------------------------------------------------------------
    def envelope_key(self, session_id: str, seq: int) -> str:
        return f"{self._sid(session_id)}/chunks/{seq:08d}.luce"

    def envelope_path(self, session_id: str, seq: int) -> Path:
        return self.root / self.envelope_key(session_id, seq)

    def envelope_uri(self, session_id: str, seq: int) -> str:
        return self.objects.uri(self.envelope_key(session_id, seq))

    def write_envelope(self, session_id: str, seq: int, data: bytes) -> None:
        self.objects.put(self.envelope_key(session_id, seq), data)

    def read_envelope(self, session_id: str, seq: int) -> bytes | None:
        return self.objects.get(self.envelope_key(session_id, seq))

    def read_envelope_tail(self, session_id: str, seq: int, size: int) -> bytes | None:
        """The last `size` bytes of an envelope (its GCM tag), without reading the rest."""
        return self.objects.read_range(self.envelope_key(session_id, seq), -size, size)

    def read_envelope_head(self, session_id: str, seq: int, size: int) -> bytes | None:
        """The first `size` bytes of an envelope (its header), without reading the rest."""
        return self.objects.read_range(self.envelope_key(session_id, seq), 0, size)

    def read_ahead(self, session_id: str, seqs: Iterable[int], depth: int = 3) -> Iterator[tuple[int, bytes | None]]:
        """(seq, envelope or None) in order with up to `depth` reads in flight: a bucket's next
        envelopes arrive while the current one is decrypted and sent. Memory: `depth` envelopes."""
        pending: deque = deque()
        rest = iter(seqs)
        with ThreadPoolExecutor(max_workers=depth) as pool:
            for seq in itertools.islice(rest, depth):
                pending.append((seq, pool.submit(self.read_envelope, session_id, seq)))
            while pending:
                seq, got = pending.popleft()
                if (following := next(rest, None)) is not None:
                    pending.append((following, pool.submit(self.read_envelope, session_id, following)))
                yield seq, got.result()

    def stored_seqs(self, session_id: str) -> list[int]:
        out = []
        for e in self.objects.list(f"{self._sid(session_id)}/chunks"):
            name = e.key.rsplit("/", 1)[1]
            if name.endswith(".luce") and name[:-5].isdigit():
                out.append(int(name[:-5]))
        return sorted(out)

    def last_write(self, session_id: str) -> float | None:
        """When the newest envelope was stored (seconds since the epoch), or None without any. A
        directory's mtime says it in one stat; a bucket is listed."""
        if (d := self.objects.local_path(f"{self._sid(session_id)}/chunks")) is not None:
            try:
                return d.stat().st_mtime
            except FileNotFoundError:
                return None
        return max((e.mtime for e in self.objects.list(f"{self._sid(session_id)}/chunks")), default=None)

    # --- staged segments (uploaded by a recorder on another host; dropped once stored) -----------
    def staging_key(self, session_id: str, seq: int) -> str:
        return f"{self._sid(session_id)}/staging/{seq:08d}.seg"

    def staged_ref(self, session_id: str, seq: int) -> str:
        return STAGED + self.staging_key(session_id, seq)

    def write_staged(self, session_id: str, seq: int, raw: bytes, *, dek: bytes) -> bool:
        """Seal and place the segment unless one is there (first writer wins: False)."""
        blob = envelope.seal_sidecar(raw, dek=dek, kind=_STAGED_KIND, session_id=uuid.UUID(session_id), seq=seq)
        return self.objects.put(self.staging_key(session_id, seq), blob, exclusive=True)

    def read_staged(self, session_id: str, seq: int, *, dek: bytes) -> bytes | None:
        """The staged segment's bytes; None when there is none. A damaged one raises EnvelopeError."""
        blob = self.objects.get(self.staging_key(session_id, seq))
        if blob is None:
            return None
        return envelope.open_sidecar(blob, dek=dek, kind=_STAGED_KIND, session_id=uuid.UUID(session_id), seq=seq)

    def drop_staged(self, session_id: str, seq: int) -> None:
        self.objects.delete(self.staging_key(session_id, seq))

    # --- MP4 export plans (derived from the plaintext, sealed under the session's data key) ---------
    def mp4_index_key(self, session_id: str, seq: int) -> str:
        return f"{self._sid(session_id)}/mp4/{seq:08d}.plan"

    def read_mp4_index(self, session_id: str, seq: int) -> bytes | None:
        return self.objects.get(self.mp4_index_key(session_id, seq))

    def write_mp4_index(self, session_id: str, seq: int, blob: bytes) -> None:
        self.objects.put(self.mp4_index_key(session_id, seq), blob)

    def drop_mp4_index(self, session_id: str, seq: int) -> None:
        self.objects.delete(self.mp4_index_key(session_id, seq))

    def drop_legacy_mp4_indexes(self, session_id: str) -> int:
        """Remove the plain-JSON MP4 indexes an earlier release kept (`mp4/<seq>.json`)."""
        old = [e.key for e in self.objects.list(f"{self._sid(session_id)}/mp4") if e.key.endswith(".json")]
        for key in old:
            self.objects.delete(key)
        return len(old)

    # --- derived records (insight) ------------------------------------------------------------
    def derived_prefix(self, session_id: str, product: str | None = None) -> str:
        return f"{self._sid(session_id)}/derived" + (f"/{product}" if product else "")

    # --- data keys --------------------------------------------------------------------------
    def dek_key(self, session_id: str) -> str:
        return f"{self._sid(session_id)}/dek.json"

    def has_data_key(self, session_id: str) -> bool:
        return self.objects.stat(self.dek_key(session_id)) is not None

    def sessions(self) -> list[str]:
        return [name for name in self.objects.dirs("") if is_uuid(name)]

    def dek_kek_id(self, session_id: str) -> str | None:
        raw = self.objects.get(self.dek_key(session_id))
        try:
            return json.loads(raw).get("kek_id") if raw is not None else None
        except (ValueError, AttributeError):
            return None

    def rewrap(self, session_id: str, keyring: Keyring) -> bool:
        """Rewrap the session's DEK under the active KEK; False if it already was (or has none)."""
        kek_id = self.dek_kek_id(session_id)
        if kek_id is None or kek_id == keyring.active.key_id:
            return False
        dek = self.data_key(session_id, keyring)
        self.objects.put(self.dek_key(session_id), keyring.wrap(dek, uuid.UUID(session_id)))
        return True

    def shred(self, session_id: str) -> dict:
        """Crypto-shred: destroy the DEK first (the contents are unrecoverable from that moment),
        then remove the envelopes, export plans and insight records. Manifests and checkpoints stay:
        they hold hashes only and let verify say "shredded" rather than "corrupt"."""
        sid = self._sid(session_id)
        had_key = self.objects.delete(self.dek_key(sid), scrub=True)
        n = len(self.stored_seqs(sid))
        # derived: insight records (issue 15); staging: uploaded segments (issue 17); all sealed, now unreadable
        for part in ("chunks", "mp4", "derived", "staging"):
            self.objects.delete_prefix(f"{sid}/{part}")
        return {"data_key_destroyed": had_key, "envelopes_removed": n}

    def data_key(self, session_id: str, keyring: Keyring, *, create: bool = False) -> bytes | None:
        """The session's DEK; with create, makes one if none exists (first writer wins)."""
        sid = uuid.UUID(session_id)
        key = self.dek_key(session_id)
        wrapped = self.objects.get(key)
        if wrapped is None and create:
            self.objects.put(key, keyring.wrap(corekeys.new_dek(), sid), exclusive=True)
            wrapped = self.objects.get(key)
        if wrapped is None:
            return None
        return keyring.unwrap(wrapped, sid)

    # --- manifests --------------------------------------------------------------------------
    def manifest_versions(self, session_id: str) -> list[int]:
        sid = self._sid(session_id)
        out = []
        for e in self.objects.files(sid):
            if m := _MANIFEST.match(e.key[len(sid) + 1 :]):
                out.append(int(m.group(1)))
        return sorted(out)

    def manifest_key(self, session_id: str, version: int) -> str:
        return f"{self._sid(session_id)}/manifest.v{version}.json"

    def manifest_uri(self, session_id: str, version: int) -> str:
        return self.objects.uri(self.manifest_key(session_id, version))

    def manifest_path(self, session_id: str, version: int) -> Path:
        return self.root / self.manifest_key(session_id, version)

    def read_manifest(self, session_id: str, version: int) -> bytes | None:
        return self.objects.get(self.manifest_key(session_id, version))

    def write_manifest(self, session_id: str, version: int, data: bytes) -> bool:
        return self.objects.put(self.manifest_key(session_id, version), data, exclusive=True)

    def latest_manifest(self, session_id: str) -> tuple[int, bytes] | None:
        versions = self.manifest_versions(session_id)
        if not versions:
            return None
        data = self.read_manifest(session_id, versions[-1])
        return None if data is None else (versions[-1], data)

    def latest_manifest_doc(self, session_id: str) -> dict | None:
        found = self.latest_manifest(session_id)
        if found is None:
            return None
        try:
            return json.loads(found[1])
        except ValueError:
            return {"body": {}, "signature": {}, "_error": "manifest is not valid JSON"}

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint_key(self, session_id: str, tree_size: int) -> str:
        return f"{self._sid(session_id)}/checkpoints/{tree_size:08d}.json"

    def checkpoint_path(self, session_id: str, tree_size: int) -> Path:
        return self.root / self.checkpoint_key(session_id, tree_size)

    def write_checkpoint(self, session_id: str, tree_size: int, data: bytes) -> bool:
        return self.objects.put(self.checkpoint_key(session_id, tree_size), data, exclusive=True)

    def supersede_checkpoints(self, session_id: str, label: str) -> str | None:
        """Set the current checkpoint chain aside (kept as a record) so a forced reprocess starts a
        new one. Returns where it went."""
        sid = self._sid(session_id)
        if not self.objects.move_prefix(f"{sid}/checkpoints", f"{sid}/checkpoints.superseded-{label}"):
            return None
        return self.objects.uri(f"{sid}/checkpoints.superseded-{label}")

    def checkpoint_files(self, session_id: str) -> dict[str, bytes]:
        """Every object of the live checkpoint chain by name (superseded chains are a record, not
        part of it), except atomic_write's temporary files, which nothing reads."""
        out = {}
        for e in self.objects.files(f"{self._sid(session_id)}/checkpoints"):
            name = e.key.rsplit("/", 1)[1]
            if not is_atomic_tmp(name) and (data := self.objects.get(e.key)) is not None:
                out[name] = data
        return out

    def checkpoints(self, session_id: str) -> list[dict]:
        """Every checkpoint, oldest first; an unreadable one is returned as an error entry."""
        out = []
        for name, data in self.checkpoint_files(session_id).items():
            if not name.endswith(".json"):
                continue
            try:
                out.append(json.loads(data))
            except ValueError:
                out.append({"body": {"tree_size": int(name[:-5])}, "signature": {}, "_error": "not valid JSON"})
        return out
