"""The chunk store: envelopes, wrapped data keys and signed manifests under one root.

    <root>/<session>/dek.json            wrapped data key (deleting it crypto-shreds the session)
    <root>/<session>/chunks/<seq>.luce   envelopes, seq zero-padded to 8 digits
    <root>/<session>/manifest.v<N>.json  signed manifests, one per version
    <root>/<session>/checkpoints/<size>.json  signed checkpoints, size zero-padded to 8 digits
    <root>/<session>/mp4/<seq>.plan      MP4 export plans (derived; sealed under the data key)
    <root>/<session>/derived/<product>/<seq>.<version>.bin  insight records (issue 15; sealed likewise)

Every write goes to a temporary name, is fsynced, then renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from .core import keys as corekeys
from .files import atomic_write, fsync_dir, is_atomic_tmp, is_uuid
from .keyring import Keyring

_MANIFEST = re.compile(r"manifest\.v(\d+)\.json$")


class EnvelopeReader:
    """Reads many envelopes through one buffer (a streaming reader's envelopes are consumed one at
    a time: no fresh allocation, no page faults per chunk). A returned view stays valid until the
    next read."""

    def __init__(self, store: ChunkStore):
        self.store, self.buf = store, bytearray(0)

    def read(self, session_id: str, seq: int) -> memoryview | None:
        try:
            f = open(self.store.envelope_path(session_id, seq), "rb", buffering=0)  # noqa: SIM115 - closed below
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


class ChunkStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def session_dir(self, session_id: str) -> Path:
        return self.root / str(uuid.UUID(session_id))

    def envelope_path(self, session_id: str, seq: int) -> Path:
        return self.session_dir(session_id) / "chunks" / f"{seq:08d}.luce"

    def envelope_uri(self, session_id: str, seq: int) -> str:
        return self.envelope_path(session_id, seq).as_uri()

    def write_envelope(self, session_id: str, seq: int, data: bytes) -> None:
        atomic_write(self.envelope_path(session_id, seq), data)

    def read_envelope(self, session_id: str, seq: int) -> bytes | None:
        try:
            return self.envelope_path(session_id, seq).read_bytes()
        except FileNotFoundError:
            return None

    def read_envelope_tail(self, session_id: str, seq: int, size: int) -> bytes | None:
        """The last `size` bytes of an envelope (its GCM tag), without reading the rest."""
        try:
            with open(self.envelope_path(session_id, seq), "rb", buffering=0) as f:
                f.seek(-size, os.SEEK_END)
                return f.read(size)
        except OSError:  # missing, or shorter than a tag
            return None

    def read_envelope_head(self, session_id: str, seq: int, size: int) -> bytes | None:
        """The first `size` bytes of an envelope (its header), without reading the rest."""
        try:
            with open(self.envelope_path(session_id, seq), "rb", buffering=0) as f:
                return f.read(size)
        except FileNotFoundError:
            return None

    def stored_seqs(self, session_id: str) -> list[int]:
        d = self.session_dir(session_id) / "chunks"
        if not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.luce") if p.stem.isdigit())

    # --- MP4 export plans (derived from the plaintext, sealed under the session's data key) ---------
    def mp4_index_path(self, session_id: str, seq: int) -> Path:
        return self.session_dir(session_id) / "mp4" / f"{seq:08d}.plan"

    def read_mp4_index(self, session_id: str, seq: int) -> bytes | None:
        try:
            return self.mp4_index_path(session_id, seq).read_bytes()
        except FileNotFoundError:
            return None

    def write_mp4_index(self, session_id: str, seq: int, blob: bytes) -> None:
        atomic_write(self.mp4_index_path(session_id, seq), blob)

    def drop_mp4_index(self, session_id: str, seq: int) -> None:
        self.mp4_index_path(session_id, seq).unlink(missing_ok=True)

    def drop_legacy_mp4_indexes(self, session_id: str) -> int:
        """Remove the plain-JSON MP4 indexes an earlier release kept (`mp4/<seq>.json`)."""
        old = list((self.session_dir(session_id) / "mp4").glob("*.json"))
        for path in old:
            path.unlink(missing_ok=True)
        return len(old)

    # --- data keys --------------------------------------------------------------------------
    def dek_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / "dek.json"

    def sessions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_uuid(p.name))

    def dek_kek_id(self, session_id: str) -> str | None:
        try:
            return json.loads(self.dek_path(session_id).read_bytes()).get("kek_id")
        except (FileNotFoundError, ValueError, AttributeError):
            return None

    def rewrap(self, session_id: str, keyring: Keyring) -> bool:
        """Rewrap the session's DEK under the active KEK; False if it already was (or has none)."""
        kek_id = self.dek_kek_id(session_id)
        if kek_id is None or kek_id == keyring.active.key_id:
            return False
        dek = self.data_key(session_id, keyring)
        atomic_write(self.dek_path(session_id), keyring.wrap(dek, uuid.UUID(session_id)))
        return True

    def shred(self, session_id: str) -> dict:
        """Crypto-shred: destroy the DEK first (the contents are unrecoverable from that moment),
        then remove the envelopes. Manifests and checkpoints stay: they hold hashes only and let
        verify say "shredded" rather than "corrupt"."""
        d = self.session_dir(session_id)
        dek = self.dek_path(session_id)
        had_key = dek.exists()
        if had_key:
            with open(dek, "r+b") as f:  # overwrite before unlinking, for what that is worth on this disk
                f.write(os.urandom(max(1, os.fstat(f.fileno()).st_size)))
                f.flush()
                os.fsync(f.fileno())
            dek.unlink()
        n = len(self.stored_seqs(session_id))
        shutil.rmtree(d / "chunks", ignore_errors=True)
        shutil.rmtree(d / "mp4", ignore_errors=True)
        shutil.rmtree(d / "derived", ignore_errors=True)  # insight records (issue 15): sealed, and now unreadable
        if d.exists():
            fsync_dir(d)
        return {"data_key_destroyed": had_key, "envelopes_removed": n}

    def data_key(self, session_id: str, keyring: Keyring, *, create: bool = False) -> bytes | None:
        """The session's DEK; with create, makes one if none exists (first writer wins)."""
        sid = uuid.UUID(session_id)
        path = self.dek_path(session_id)
        if create and not path.exists():
            atomic_write(path, keyring.wrap(corekeys.new_dek(), sid), exclusive=True)
        try:
            wrapped = path.read_bytes()
        except FileNotFoundError:
            return None
        return keyring.unwrap(wrapped, sid)

    # --- manifests --------------------------------------------------------------------------
    def manifest_versions(self, session_id: str) -> list[int]:
        d = self.session_dir(session_id)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _MANIFEST.match(p.name)))

    def manifest_path(self, session_id: str, version: int) -> Path:
        return self.session_dir(session_id) / f"manifest.v{version}.json"

    def write_manifest(self, session_id: str, version: int, data: bytes) -> bool:
        return atomic_write(self.manifest_path(session_id, version), data, exclusive=True)

    def latest_manifest(self, session_id: str) -> tuple[int, bytes] | None:
        versions = self.manifest_versions(session_id)
        if not versions:
            return None
        return versions[-1], self.manifest_path(session_id, versions[-1]).read_bytes()

    def latest_manifest_doc(self, session_id: str) -> dict | None:
        found = self.latest_manifest(session_id)
        if found is None:
            return None
        try:
            return json.loads(found[1])
        except ValueError:
            return {"body": {}, "signature": {}, "_error": "manifest is not valid JSON"}

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, session_id: str, tree_size: int) -> Path:
        return self.session_dir(session_id) / "checkpoints" / f"{tree_size:08d}.json"

    def write_checkpoint(self, session_id: str, tree_size: int, data: bytes) -> bool:
        return atomic_write(self.checkpoint_path(session_id, tree_size), data, exclusive=True)

    def supersede_checkpoints(self, session_id: str, label: str) -> Path | None:
        """Set the current checkpoint chain aside (kept as a record) so a forced reprocess starts a
        new one."""
        d = self.session_dir(session_id) / "checkpoints"
        if not d.is_dir():
            return None
        target = d.with_name(f"checkpoints.superseded-{label}")
        d.rename(target)
        fsync_dir(d.parent)
        return target

    def checkpoint_files(self, session_id: str) -> dict[str, bytes]:
        """Every file of the live checkpoint directory by name (superseded chains are a record, not
        part of it), except atomic_write's temporary files, which nothing reads."""
        d = self.checkpoint_path(session_id, 0).parent
        if not d.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and not is_atomic_tmp(p.name)}

    def checkpoints(self, session_id: str) -> list[dict]:
        """Every checkpoint, oldest first; an unreadable file is returned as an error entry."""
        d = self.session_dir(session_id) / "checkpoints"
        out = []
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            try:
                out.append(json.loads(p.read_bytes()))
            except ValueError:
                out.append({"body": {"tree_size": int(p.stem)}, "signature": {}, "_error": "not valid JSON"})
        return out
