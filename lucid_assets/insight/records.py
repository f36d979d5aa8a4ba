"""Derived records in the chunk store: one sealed object per product per chunk, named by the version
that made it.

    <chunk store>/<session>/derived/<product>/<seq>.<version>.bin

A record is an LSC1 sidecar (core/envelope.py) under the session's data key: AES-256-GCM with the
product's kind, the session and the seq in its AAD, so a record cannot be read without the key nor
moved to another chunk or product. Its version (a short hash of the derivation's code version) is in
the file name, so "which chunks are missing or stale" is a listing, no decryption."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..core import envelope
from ..core.states import Insight
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

    def prefix(self, product: Insight) -> str:
        return self.store.derived_prefix(self.session_id, product.value)

    def key(self, product: Insight, seq: int, version: str) -> str:
        return f"{self.prefix(product)}/{seq:08d}.{version_tag(version)}.bin"

    def dir(self, product: Insight) -> Path:
        """A local store's directory of the product (tests edit records through it)."""
        return self.store.root / self.prefix(product)

    def path(self, product: Insight, seq: int, version: str) -> Path:
        return self.store.root / self.key(product, seq, version)

    def _keys(self, product: Insight, seq: int | None = None) -> list[str]:
        start = f"{seq:08d}." if seq is not None else ""
        keys = (e.key for e in self.store.objects.list(self.prefix(product)))
        return [k for k in keys if k.rsplit("/", 1)[1].startswith(start)]

    def versions(self, product: Insight) -> dict[int, set[str]]:
        """seq -> the version tags present."""
        out: dict[int, set[str]] = {}
        for key in self._keys(product):
            if m := _NAME.match(key.rsplit("/", 1)[1]):
                out.setdefault(int(m.group(1)), set()).add(m.group(2))
        return out

    def current(self, product: Insight, version: str) -> set[int]:
        tag = version_tag(version)
        return {seq for seq, tags in self.versions(product).items() if tag in tags}

    def write(self, product: Insight, seq: int, version: str, data: bytes, *, dek: bytes) -> None:
        blob = envelope.seal_sidecar(data, dek=dek, kind=KINDS[product], session_id=uuid.UUID(self.session_id), seq=seq)
        keep = self.key(product, seq, version)
        self.store.objects.put(keep, blob)
        for old in self._keys(product, seq):
            if old != keep and _NAME.match(old.rsplit("/", 1)[1]):  # the record another version made: superseded
                self.store.objects.delete(old)

    def _open(self, product: Insight, seq: int, key: str, dek: bytes) -> bytes | None:
        blob = self.store.objects.get(key)
        if blob is None:
            return None
        try:
            return envelope.open_sidecar(
                blob, dek=dek, kind=KINDS[product], session_id=uuid.UUID(self.session_id), seq=seq
            )
        except envelope.EnvelopeError:
            return None

    def read(self, product: Insight, seq: int, version: str, *, dek: bytes) -> bytes | None:
        """The record's plaintext; None when missing or it does not open (derived data: made again)."""
        return self._open(product, seq, self.key(product, seq, version), dek)

    def read_latest(self, product: Insight, seq: int, version: str, *, dek: bytes) -> bytes | None:
        """The record of `version`, else the one an older derivation left (until the backfill
        replaces it, what a reader shows: a new OCR model must not blank every older session)."""
        if (found := self.read(product, seq, version, dek=dek)) is not None:
            return found
        for key in self._keys(product, seq):
            if (found := self._open(product, seq, key, dek)) is not None:
                return found
        return None

    def drop(self) -> int:
        """Remove every derived record of the session (crypto-shred; the key is already gone)."""
        return self.store.objects.delete_prefix(self.store.derived_prefix(self.session_id))
