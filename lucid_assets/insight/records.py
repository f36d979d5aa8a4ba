"""Derived records on disk: one sealed file per product per chunk, named by the version that made it.

    <chunk store>/<session>/derived/<product>/<seq>.<version>.bin

A record is an LSC1 sidecar (core/envelope.py) under the session's data key: AES-256-GCM with the
product's kind, the session and the seq in its AAD, so a record cannot be read without the key nor
moved to another chunk or product. Its version (a short hash of the derivation's code version) is in
the file name, so "which chunks are missing or stale" is a directory listing, no decryption."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..core import envelope
from ..core.states import Insight
from ..files import atomic_write
from ..store import ChunkStore

KINDS = {Insight.ACTIVITY: b"actv", Insight.THUMBNAILS: b"thmb", Insight.TEXT: b"text", Insight.STATE: b"stat"}
_NAME = re.compile(r"(\d{8})\.([0-9a-f]{12})\.bin$")


def version_tag(code_version: str) -> str:
    """The file-name form of a code version."""
    return hashlib.sha256(code_version.encode()).hexdigest()[:12]


def pack(head: dict, blobs: list[bytes] = ()) -> bytes:
    """A JSON head and binary blobs (thumbnail JPEGs, a small frame) in one record."""
    h = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    parts = [struct.pack("<II", len(h), len(blobs)), h]
    for b in blobs:
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def unpack(data: bytes) -> tuple[dict, list[bytes]]:
    hlen, n = struct.unpack_from("<II", data, 0)
    at = 8 + hlen
    head, blobs = json.loads(data[8:at]), []
    for _ in range(n):
        (size,) = struct.unpack_from("<I", data, at)
        blobs.append(bytes(data[at + 4 : at + 4 + size]))
        at += 4 + size
    if at != len(data):
        raise ValueError("record has trailing bytes")
    return head, blobs


@dataclass(frozen=True)
class Records:
    """The derived records of one session."""

    store: ChunkStore
    session_id: str

    def dir(self, product: Insight) -> Path:
        return self.store.session_dir(self.session_id) / "derived" / product.value

    def path(self, product: Insight, seq: int, version: str) -> Path:
        return self.dir(product) / f"{seq:08d}.{version_tag(version)}.bin"

    def versions(self, product: Insight) -> dict[int, set[str]]:
        """seq -> the version tags present."""
        out: dict[int, set[str]] = {}
        d = self.dir(product)
        if d.is_dir():
            for p in d.iterdir():
                if m := _NAME.match(p.name):
                    out.setdefault(int(m.group(1)), set()).add(m.group(2))
        return out

    def current(self, product: Insight, version: str) -> set[int]:
        tag = version_tag(version)
        return {seq for seq, tags in self.versions(product).items() if tag in tags}

    def write(self, product: Insight, seq: int, version: str, data: bytes, *, dek: bytes) -> None:
        blob = envelope.seal_sidecar(data, dek=dek, kind=KINDS[product], session_id=uuid.UUID(self.session_id), seq=seq)
        atomic_write(self.path(product, seq, version), blob)
        keep = self.path(product, seq, version).name
        for old in self.dir(product).glob(f"{seq:08d}.*.bin"):
            if old.name != keep:  # the record another version made: superseded
                old.unlink(missing_ok=True)

    def _open(self, product: Insight, seq: int, path: Path, dek: bytes) -> bytes | None:
        try:
            blob = path.read_bytes()
            return envelope.open_sidecar(
                blob, dek=dek, kind=KINDS[product], session_id=uuid.UUID(self.session_id), seq=seq
            )
        except (FileNotFoundError, envelope.EnvelopeError):
            return None

    def read(self, product: Insight, seq: int, version: str, *, dek: bytes) -> bytes | None:
        """The record's plaintext; None when missing or it does not open (derived data: made again)."""
        return self._open(product, seq, self.path(product, seq, version), dek)

    def read_latest(self, product: Insight, seq: int, version: str, *, dek: bytes) -> bytes | None:
        """The record of `version`, else the one an older derivation left (until the backfill
        replaces it, what a reader shows: a new OCR model must not blank every older session)."""
        if (found := self.read(product, seq, version, dek=dek)) is not None:
            return found
        for path in sorted(self.dir(product).glob(f"{seq:08d}.*.bin")):
            if (found := self._open(product, seq, path, dek)) is not None:
                return found
        return None

    def drop(self) -> int:
        """Remove every derived record of the session (crypto-shred; the key is already gone)."""
        root = self.store.session_dir(self.session_id) / "derived"
        n = sum(1 for _ in root.rglob("*.bin")) if root.is_dir() else 0
        shutil.rmtree(root, ignore_errors=True)
        return n
