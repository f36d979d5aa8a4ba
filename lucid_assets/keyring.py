"""Loads (and in the embedded default, creates) the master and signing keys named by the settings."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .core import keys
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


@dataclass
class Keyring:
    keks: dict[str, keys.Kek] = field(repr=False)
    active: keys.Kek = field(repr=False)
    signing: Ed25519PrivateKey | None = field(default=None, repr=False)

    @classmethod
    def load(cls, settings: Settings, *, with_signing: bool = True) -> "Keyring":
        if settings.generate_keys:
            for what in ensure_keys(settings):
                log.warning("generated a new %s (mode 0600): back it up; losing it loses the recordings", what)
        kek = keys.load_kek(settings.master_key_path)
        return cls({kek.key_id: kek}, kek,
                   keys.load_signing_key(settings.signing_key_path) if with_signing else None)

    @classmethod
    def public_key(cls, settings: Settings) -> Ed25519PublicKey:
        if settings.generate_keys:
            ensure_keys(settings)
        return keys.load_signing_key(settings.signing_key_path).public_key()

    def wrap(self, dek: bytes, session_id: uuid.UUID) -> bytes:
        return keys.wrap_dek(self.active, dek, session_id)

    def unwrap(self, wrapped: bytes, session_id: uuid.UUID) -> bytes:
        return keys.unwrap_dek(self.keks, wrapped, session_id)
