"""Key hierarchy: a key-encryption key (KEK) from a secret file wraps one random data key (DEK)
per session; an Ed25519 key signs manifests. Key material never appears in reprs or errors."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_LEN = 32
WRAP_VERSION = 1


class KeyMaterialError(Exception):
    """A key file is missing, unsafe or unusable, or a wrapped key does not open."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def check_private_file(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXO | stat.S_IRWXG):
        raise KeyMaterialError(f"{path} is readable by group or others (mode {oct(mode & 0o777)}); chmod 600 it")


def write_private_file(path: Path, data: bytes) -> None:
    """Create a new 0600 file atomically; never overwrites an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Kek:
    key: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"lucid-kek-id\x00" + self.key).hexdigest()[:16]


def load_kek(path: Path) -> Kek:
    path = Path(path)
    if not path.exists():
        raise KeyMaterialError(f"master key file {path} does not exist")
    check_private_file(path)
    try:
        key = _unb64(path.read_text().strip())
    except ValueError:
        raise KeyMaterialError(f"master key file {path} is not base64") from None
    if len(key) != KEY_LEN:
        raise KeyMaterialError(f"master key in {path} must be {KEY_LEN} bytes")
    return Kek(key)


def create_kek(path: Path) -> Kek:
    key = os.urandom(KEY_LEN)
    write_private_file(Path(path), (_b64(key) + "\n").encode())
    return Kek(key)


def new_dek() -> bytes:
    return os.urandom(KEY_LEN)


def _wrap_aad(session_id: uuid.UUID, kek_id: str) -> bytes:
    return b"lucid-dek\x00" + session_id.bytes + kek_id.encode()


def wrap_dek(kek: Kek, dek: bytes, session_id: uuid.UUID, *, nonce: bytes | None = None) -> bytes:
    """The wrapped DEK as canonical JSON bytes: AES-256-GCM under the KEK, bound to the session."""
    nonce = nonce if nonce is not None else os.urandom(12)
    ct = AESGCM(kek.key).encrypt(nonce, dek, _wrap_aad(session_id, kek.key_id))
    doc = {
        "v": WRAP_VERSION,
        "alg": "A256GCM",
        "kek_id": kek.key_id,
        "session_id": str(session_id),
        "nonce": _b64(nonce),
        "wrapped": _b64(ct),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def unwrap_dek(keks: dict[str, Kek], wrapped: bytes, session_id: uuid.UUID) -> bytes:
    try:
        doc = json.loads(wrapped)
        if json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() != wrapped:
            raise ValueError("not canonical")
        if set(doc) != {"v", "alg", "kek_id", "session_id", "nonce", "wrapped"}:
            raise ValueError("unexpected fields")
        if doc["v"] != WRAP_VERSION or doc["alg"] != "A256GCM":
            raise ValueError("unsupported version or algorithm")
        kek_id, nonce, ct = doc["kek_id"], _unb64(doc["nonce"]), _unb64(doc["wrapped"])
    except (ValueError, KeyError, TypeError):
        raise KeyMaterialError("wrapped data key is malformed") from None
    if doc.get("session_id") != str(session_id):
        raise KeyMaterialError("wrapped data key belongs to another session")
    kek = keks.get(kek_id)
    if kek is None:
        raise KeyMaterialError(f"key-encryption key {kek_id} is not in the keyring")
    try:
        return AESGCM(kek.key).decrypt(nonce, ct, _wrap_aad(session_id, kek_id))
    except InvalidTag:
        raise KeyMaterialError("wrapped data key does not open under its key-encryption key") from None


# --- manifest signing -------------------------------------------------------------------------


def create_signing_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private_file(Path(path), pem)
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """The manifest signing key's public half (PEM), for services that only verify."""
    path = Path(path)
    if not path.exists():
        raise KeyMaterialError(f"signing public key file {path} does not exist")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError:
        raise KeyMaterialError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 public key")
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.exists():
        raise KeyMaterialError(f"signing key file {path} does not exist")
    check_private_file(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 private key")
    return key


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]
