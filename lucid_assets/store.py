"""The chunk store: envelopes, wrapped data keys and signed manifests under one root.

    <root>/<session>/dek.json            wrapped data key (deleting it crypto-shreds the session)
    <root>/<session>/chunks/<seq>.luce   envelopes, seq zero-padded to 8 digits
    <root>/<session>/manifest.v<N>.json  signed manifests, one per version

Every write goes to a temporary name, is fsynced, then renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from .core import keys as corekeys
from .keyring import Keyring

_MANIFEST = re.compile(r"manifest\.v(\d+)\.json$")


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Durably write `data` at `path`. With exclusive, an existing file wins (returns False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


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

    def stored_seqs(self, session_id: str) -> list[int]:
        d = self.session_dir(session_id) / "chunks"
        if not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.luce") if p.stem.isdigit())

    # --- data keys --------------------------------------------------------------------------
    def data_key(self, session_id: str, keyring: Keyring, *, create: bool = False) -> bytes | None:
        """The session's DEK; with create, makes one if none exists (first writer wins)."""
        sid = uuid.UUID(session_id)
        path = self.session_dir(session_id) / "dek.json"
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
