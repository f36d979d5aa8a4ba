"""Named remote-desktop credentials (issue 18), sealed the way a session's data is.

An admin stores a login once under a name; a `vnc` or `rdp` session source names it. The storage
service (it holds the KEK) keeps one file per credential:

    <chunk store>/credentials/<name>.json    (0600, in a 0700 directory, written atomically)

    {"v": 1, "id": <random uuid>, "name", "kind", "username", "domain",      <- clear, bound as AAD
     "created_at", "updated_at", "updated_by",                              <- clear, not bound
     "key": <a random 256-bit key wrapped under the KEK (core.keys.wrap_dek, bound to "id")>,
     "nonce": <base64 12 bytes>, "sealed": <base64 AES-256-GCM of {"password": ...}>}

The AAD is `lucid-credential\\x00` + the canonical JSON of v, id, name, kind, username and domain,
so a file renamed, or edited to claim another name, kind or login, does not open. The password is
never written anywhere in the clear. KEK rotation rewraps `key` only (`rewrap`); `kek_ids` tells
`keyring.prune_retired` which retired KEKs credentials still need."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .core import keys
from .core.states import CredentialKind
from .files import atomic_write, fsync_dir
from .models import CREDENTIAL_NAME

if TYPE_CHECKING:
    from .keyring import Keyring

VERSION = 1
_NAME = re.compile(CREDENTIAL_NAME)
_FIELDS = {"v", "id", "name", "kind", "username", "domain", "created_at", "updated_at", "updated_by"}
_FIELDS |= {"key", "nonce", "sealed"}


class CredentialError(Exception):
    """A credential is missing, already there, damaged or its key unavailable (never says the secret)."""


class CredentialNotFound(CredentialError):
    pass


class CredentialExists(CredentialError):
    pass


class CredentialDamaged(CredentialError):
    """The file is malformed, or does not open as the credential it claims to be (edited or renamed)."""


class CredentialKeyUnavailable(CredentialError):
    """The KEK that wrapped its key is not in the keyring."""


@dataclass(frozen=True)
class Opened:
    kind: CredentialKind
    username: str | None
    domain: str | None
    password: str = field(repr=False)


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _aad(doc: dict) -> bytes:
    bound = {k: doc[k] for k in ("v", "id", "name", "kind", "username", "domain")}
    return b"lucid-credential\x00" + _canonical(bound)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


class CredentialStore:
    def __init__(self, chunk_store_root: Path):
        self.dir = Path(chunk_store_root) / "credentials"

    def path(self, name: str) -> Path:
        if not valid_name(name):
            raise CredentialNotFound(f"no credential is named {name[:80]!r}: a name matches {CREDENTIAL_NAME}")
        return self.dir / f"{name}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Writers (the storage service, a rotation run) take turns: a rewrap never undoes a replace."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json") if valid_name(p.stem))

    def _load(self, name: str) -> dict:
        try:
            raw = self.path(name).read_bytes()
        except FileNotFoundError:
            raise CredentialNotFound(f"no credential is named {name!r}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or set(doc) != _FIELDS or doc["v"] != VERSION:
                raise ValueError("unexpected fields or version")
            if doc["name"] != name:
                raise ValueError("its name is not its file's")
            CredentialKind(doc["kind"])
            uuid.UUID(doc["id"])
            if not isinstance(doc["key"], dict) or not isinstance(doc["key"].get("kek_id"), str):
                raise ValueError("no wrapped key")
        except (ValueError, TypeError, KeyError):
            raise CredentialDamaged(f"the stored credential {name!r} is malformed") from None
        return doc

    @staticmethod
    def _info(doc: dict) -> dict:
        return {
            "name": doc["name"],
            "kind": CredentialKind(doc["kind"]),
            "username": doc["username"],
            "domain": doc["domain"],
            "kek_id": doc["key"]["kek_id"],
            "created_at": doc["created_at"],
            "updated_at": doc["updated_at"],
            "updated_by": doc["updated_by"],
        }

    def info(self, name: str) -> dict:
        """The metadata (never the password). A file that does not parse is CredentialDamaged."""
        return self._info(self._load(name))

    def infos(self) -> tuple[list[dict], list[str]]:
        """Every credential's metadata, and the names of files that are damaged."""
        good, damaged = [], []
        for name in self.names():
            try:
                good.append(self.info(name))
            except CredentialDamaged:
                damaged.append(name)
            except CredentialNotFound:  # deleted meanwhile
                continue
        return good, damaged

    def put(
        self,
        name: str,
        *,
        kind: CredentialKind,
        username: str | None,
        domain: str | None,
        password: str,
        keyring: Keyring,
        actor: str | None = None,
        exists: bool | None = None,
    ) -> dict:
        """Create or replace `name` (exists=False: create only; True: replace only). A fresh key and
        nonce every time; a replaced credential keeps its id and created_at."""
        path = self.path(name)
        if keyring.settings is not None:
            keyring.reload()  # a long-running service wraps under the KEK active now, not at its start
        with self._locked():
            try:
                old = self._load(name)
            except CredentialNotFound:
                old = None
            except CredentialDamaged:
                old = {}  # replaced by a good one (a new id)
            if exists is False and old is not None:
                raise CredentialExists(f"a credential named {name!r} exists; PUT replaces it")
            if exists is True and old is None:
                raise CredentialNotFound(f"no credential is named {name!r}")
            now = _now()
            doc = {
                "v": VERSION,
                "id": (old or {}).get("id") or str(uuid.uuid4()),
                "name": name,
                "kind": CredentialKind(kind).value,
                "username": username,
                "domain": domain,
                "created_at": (old or {}).get("created_at") or now,
                "updated_at": now,
                "updated_by": actor,
            }
            key, nonce = keys.new_dek(), os.urandom(12)
            sealed = AESGCM(key).encrypt(nonce, _canonical({"password": password}), _aad(doc))
            doc["key"] = json.loads(keyring.wrap(key, uuid.UUID(doc["id"])))
            doc["nonce"] = base64.b64encode(nonce).decode()
            doc["sealed"] = base64.b64encode(sealed).decode()
            atomic_write(path, _canonical(doc))
        return self._info(doc)

    def delete(self, name: str) -> dict:
        """Remove it (overwritten first, like a session's data key); returns what it was."""
        path = self.path(name)
        with self._locked():
            doc = self._load(name)
            with open(path, "r+b") as f:
                f.write(os.urandom(max(1, os.fstat(f.fileno()).st_size)))
                f.flush()
                os.fsync(f.fileno())
            path.unlink()
            fsync_dir(self.dir)
        return self._info(doc)

    def open(self, name: str, keyring: Keyring) -> Opened:
        """The secret, after checking the file is the credential it claims to be."""
        doc = self._load(name)
        try:
            key = keyring.unwrap(_canonical(doc["key"]), uuid.UUID(doc["id"]))
        except keys.KeyMaterialError as exc:
            if "not in the keyring" in str(exc):
                raise CredentialKeyUnavailable(
                    f"the credential {name!r} is wrapped by a KEK not in the keyring"
                ) from None
            raise CredentialDamaged(f"the stored credential {name!r} does not open: its key is not its own") from None
        try:
            plain = AESGCM(key).decrypt(base64.b64decode(doc["nonce"]), base64.b64decode(doc["sealed"]), _aad(doc))
            password = json.loads(plain)["password"]
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise CredentialDamaged(
                f"the stored credential {name!r} does not open as itself (edited, renamed or corrupt)"
            ) from None
        return Opened(CredentialKind(doc["kind"]), doc["username"], doc["domain"], password)

    # --- KEK rotation -------------------------------------------------------------------------
    def kek_ids(self) -> set[str]:
        """The KEKs the stored credentials' keys are wrapped under."""
        out = set()
        for name in self.names():
            try:
                out.add(self._load(name)["key"]["kek_id"])
            except CredentialError:
                continue
        return out

    def rewrap(self, keyring: Keyring) -> tuple[int, list[str]]:
        """Rewrap every credential's key under the active KEK (the sealed secret is unchanged).
        Returns how many were rewrapped and the names still under another KEK (damaged ones)."""
        done, left = 0, []
        for name in self.names():
            with self._locked():
                try:
                    doc = self._load(name)
                    if doc["key"]["kek_id"] == keyring.active.key_id:
                        continue
                    sid = uuid.UUID(doc["id"])
                    key = keyring.unwrap(_canonical(doc["key"]), sid)
                except CredentialNotFound:
                    continue
                except (CredentialError, keys.KeyMaterialError):
                    left.append(name)
                    continue
                doc["key"] = json.loads(keyring.wrap(key, sid))
                atomic_write(self.path(name), _canonical(doc))
                done += 1
        return done, left
