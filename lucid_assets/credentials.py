"""Named remote-desktop credentials (issue 18), sealed the way a session's data is.

An admin stores a login once under a name; a `vnc` or `rdp` session source names it. The storage
service (it holds the KEK) keeps one object per credential in the chunk store's backend (objects.py):

    credentials/<name>.json    (on disk: 0600, in a 0700 directory, written atomically)

    {"v": 1, "id": <random uuid>, "name", "kind", "username", "domain",      <- clear, bound as AAD
     "created_at", "updated_at", "updated_by",                              <- clear, not bound
     "key": <a random 256-bit key wrapped under the KEK (core.keys.wrap_dek, bound to "id")>,
     "nonce": <base64 12 bytes>, "sealed": <base64 AES-256-GCM of {"password": ...}>}

The AAD is `lucid-credential\\x00` + the canonical JSON of v, id, name, kind, username and domain,
so a file renamed, or edited to claim another name, kind or login, does not open. The password is
never written anywhere in the clear. KEK rotation rewraps `key` only (`rewrap`); `kek_ids` tells
`keyring.prune_retired` which retired KEKs credentials still need. Writers (the storage service, a
rotation run) compare-and-swap each object, so a rewrap never undoes a replace."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .core import keys
from .core.states import CredentialKind
from .models import CREDENTIAL_NAME
from .objects import LocalObjects, Objects

if TYPE_CHECKING:
    from .keyring import Keyring

VERSION = 1
PREFIX = "credentials"
_TRIES = 20  # compare-and-swap attempts before a write gives up (only a storm of writers gets there)
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

    def __init__(self, message: str, tag: str | None = None):
        super().__init__(message)
        self.tag = tag  # the damaged object's tag: a replacement swaps exactly it


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
    def __init__(self, objects: Objects | Path):
        self.objects: Objects = objects if hasattr(objects, "put") else LocalObjects(Path(objects))
        if (d := self.objects.local_path(PREFIX)) is not None:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def key(self, name: str) -> str:
        if not valid_name(name):
            raise CredentialNotFound(f"no credential is named {name[:80]!r}: a name matches {CREDENTIAL_NAME}")
        return f"{PREFIX}/{name}.json"

    def names(self) -> list[str]:
        names = (e.key.rsplit("/", 1)[1] for e in self.objects.list(PREFIX))
        return sorted(n[:-5] for n in names if n.endswith(".json") and valid_name(n[:-5]))

    def _load(self, name: str) -> dict:
        return self._load_tagged(name)[0]

    def _load_tagged(self, name: str) -> tuple[dict, str]:
        """The parsed document and its tag (for a compare-and-swap write)."""
        got = self.objects.get_tagged(self.key(name))
        if got is None:
            raise CredentialNotFound(f"no credential is named {name!r}")
        raw, tag = got
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
            raise CredentialDamaged(f"the stored credential {name!r} is malformed", tag) from None
        return doc, tag

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
        key = self.key(name)
        if keyring.settings is not None:
            keyring.reload()  # a long-running service wraps under the KEK active now, not at its start
        for _ in range(_TRIES):
            try:
                old, tag = self._load_tagged(name)
            except CredentialNotFound:
                old, tag = None, None
            except CredentialDamaged as exc:
                old, tag = {}, exc.tag  # replaced by a good one (a new id)
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
            secret, nonce = keys.new_dek(), os.urandom(12)
            sealed = AESGCM(secret).encrypt(nonce, _canonical({"password": password}), _aad(doc))
            doc["key"] = json.loads(keyring.wrap(secret, uuid.UUID(doc["id"])))
            doc["nonce"] = base64.b64encode(nonce).decode()
            doc["sealed"] = base64.b64encode(sealed).decode()
            if self.objects.put(key, _canonical(doc), exclusive=tag is None, if_match=tag):
                return self._info(doc)
        raise CredentialError(f"the credential {name!r} kept changing while it was written; try again")

    def delete(self, name: str) -> dict:
        """Remove it (overwritten first on disk, every version in a bucket, like a session's data key);
        returns what it was."""
        doc = self._load(name)
        self.objects.delete(self.key(name), scrub=True)
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
            for _ in range(_TRIES):
                try:
                    doc, tag = self._load_tagged(name)
                    if doc["key"]["kek_id"] == keyring.active.key_id:
                        break
                    sid = uuid.UUID(doc["id"])
                    secret = keyring.unwrap(_canonical(doc["key"]), sid)
                except CredentialNotFound:
                    break
                except (CredentialError, keys.KeyMaterialError):
                    left.append(name)
                    break
                doc["key"] = json.loads(keyring.wrap(secret, sid))
                if self.objects.put(self.key(name), _canonical(doc), if_match=tag):
                    done += 1
                    break
            else:
                left.append(name)
        return done, left
