"""Loads (and in the embedded default, creates) the master and signing keys named by the settings.

The keyring is the active KEK (`LUCID_MASTER_KEY_FILE`) plus every older KEK in
`LUCID_KEYRING_DIR`; a wrapped DEK names the KEK that wrapped it. Rotation makes a new active KEK,
keeps the old one readable, and rewraps every DEK; afterwards retired KEKs no DEK names can go."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .core import keys
from .credentials import CredentialStore
from .objects import open_objects
from .settings import Settings

log = logging.getLogger("lucid.keys")


def ensure_keys(settings: Settings) -> list[str]:
    """Create missing key files (0600). Returns what was created, for the operator to hear."""
    created = []
    if not settings.master_key_path.exists():
        keys.create_kek(settings.master_key_path)
        created.append(f"master key (KEK) {settings.master_key_path}")
    if not settings.signing_key_path.exists():
        keys.create_signing_key(settings.signing_key_path)
        created.append(f"manifest signing key {settings.signing_key_path}")
    return created


def retired_keks(settings: Settings) -> dict[str, keys.Kek]:
    out = {}
    d = settings.keyring_path
    if d.is_dir():
        for path in sorted(d.glob("*.key")):
            kek = keys.load_kek(path)
            out[kek.key_id] = kek
    return out


@dataclass
class Keyring:
    keks: dict[str, keys.Kek] = field(repr=False)
    active: keys.Kek = field(repr=False)
    signing: Ed25519PrivateKey | None = field(default=None, repr=False)
    settings: Settings | None = field(default=None, repr=False)

    @classmethod
    def load(cls, settings: Settings, *, with_signing: bool = True) -> Keyring:
        if settings.generate_keys:
            for what in ensure_keys(settings):
                log.warning("generated a new %s (mode 0600): back it up; losing it loses the recordings", what)
        active = keys.load_kek(settings.master_key_path)
        keks = {**retired_keks(settings), active.key_id: active}
        return cls(keks, active, keys.load_signing_key(settings.signing_key_path) if with_signing else None, settings)

    @classmethod
    def public_key(cls, settings: Settings) -> Ed25519PublicKey:
        if settings.signing_public_key_file is not None:
            return keys.load_verify_key(settings.signing_public_key_file)
        if settings.generate_keys:
            ensure_keys(settings)
        return keys.load_signing_key(settings.signing_key_path).public_key()

    def wrap(self, dek: bytes, session_id: uuid.UUID) -> bytes:
        return keys.wrap_dek(self.active, dek, session_id)

    def unwrap(self, wrapped: bytes, session_id: uuid.UUID) -> bytes:
        try:
            return keys.unwrap_dek(self.keks, wrapped, session_id)
        except keys.KeyMaterialError as exc:
            if "not in the keyring" not in str(exc) or self.settings is None:
                raise
        self.reload()  # the keys were rotated since this process loaded them
        return keys.unwrap_dek(self.keks, wrapped, session_id)

    def reload(self) -> None:
        fresh = Keyring.load(self.settings, with_signing=False)
        self.keks, self.active = fresh.keks, fresh.active


def rotate_kek(settings: Settings) -> tuple[str, str]:
    """Make a new active KEK; the old one moves to the keyring directory and stays readable.
    Every step leaves all keys on disk, so a crash midway loses nothing."""
    old = keys.load_kek(settings.master_key_path)
    retired = settings.keyring_path
    retired.mkdir(parents=True, exist_ok=True)
    os.chmod(retired, 0o700)
    archived = retired / f"{old.key_id}.key"
    if not archived.exists():
        keys.write_private_file(archived, settings.master_key_path.read_bytes())
    # staged beside the active key: a rename is atomic only within one filesystem (in compose the
    # keyring is a volume and the master key a secrets directory)
    staged = settings.master_key_path.parent / f".next-{uuid.uuid4().hex}.tmp"
    new = keys.create_kek(staged)
    os.replace(staged, settings.master_key_path)
    return old.key_id, new.key_id


def prune_retired(settings: Settings, in_use: set[str]) -> list[Path]:
    """Delete retired KEK files that no wrapped DEK (`in_use`) and no stored credential names any more."""
    in_use = set(in_use) | CredentialStore(open_objects(settings.chunk_store_location, settings)).kek_ids()
    removed = []
    if settings.keyring_path.is_dir():
        for path in sorted(settings.keyring_path.glob("*.key")):
            if keys.load_kek(path).key_id not in in_use:
                path.unlink()
                removed.append(path)
    return removed
