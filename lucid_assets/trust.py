"""Service-to-service credentials: every internal hop carries `Authorization: Bearer <token>`.

Each calling component has its own random token (`lucid-svc.<caller>.<43 chars>`), held only by
that component. The services that are called hold the token table: the SHA-256 of each caller's
token, which authenticates a caller without letting its holder impersonate anyone. So a
compromised recorder cannot act as the gateway, and the pipeline can refuse the recorder a seal.

Embedded default: `<data>/keys/service/<caller>.token` and `tokens.json`, made once (0600 in a
0700 directory) by `ensure_tokens`. Compose: the same files from `lucid secrets`, given to each
container as secrets (`LUCID_SERVICE_TOKEN_FILE`, `LUCID_SERVICE_TOKENS_FILE`).

Many recorders (issue 17): each further recorder has a token of its own, `recorder-<id>`
(`add_recorder`); its role is `recorder`, its identity is the token's name. The pipeline records which
recorder owns a session from that identity, never from anything the recorder says."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .core import keys
from .files import atomic_write
from .settings import Settings

# who calls an internal service: the gateway, the recorder (to the pipeline), the storage service
# (to the pipeline) and Dagster's code (sensors, runs: to the pipeline and storage)
API, RECORDER, STORAGE, DAGSTER = "api", "recorder", "storage", "dagster"
CALLERS = (API, RECORDER, STORAGE, DAGSTER)
PREFIX = "lucid-svc"
_TOKEN = re.compile(rf"^{PREFIX}\.([a-z]+(?:-[a-z0-9]{{1,32}})?)\.[A-Za-z0-9_-]{{43}}$")
RECORDER_ID = re.compile(r"[a-z0-9]{1,32}")


def _named(name: str) -> bool:
    """A caller identity a token may carry (`api`, `recorder-b`)."""
    return _TOKEN.match(f"{PREFIX}.{name}.{'A' * 43}") is not None


def role_of(name: str) -> str:
    """The role of a caller's identity: `recorder-b` is a recorder."""
    return name.split("-", 1)[0]


def recorder_name(recorder_id: str | None) -> str:
    """The identity of the recorder with this id (none: the first recorder, `recorder`)."""
    if not recorder_id:
        return RECORDER
    if not RECORDER_ID.fullmatch(recorder_id):
        raise TrustError(f"a recorder id is 1-32 lower-case letters and digits, not {recorder_id[:40]!r}")
    return f"{RECORDER}-{recorder_id}"


class TrustError(Exception):
    """The credentials a process needs are missing or unreadable."""


def new_token(caller: str) -> str:
    return f"{PREFIX}.{caller}.{base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('=')}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_token_files(directory: Path) -> list[str]:
    """Every caller's token file and the table of their digests, made if missing. Returns the
    names of the files created."""
    # every file 0600, complete or absent for any reader (files.atomic_write), in a 0700 directory
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    created = []
    for caller in CALLERS:
        path = directory / f"{caller}.token"
        # exclusive: a concurrent maker's token wins and ours is dropped
        if not path.exists() and atomic_write(path, (new_token(caller) + "\n").encode(), exclusive=True):
            created.append(path.name)
    table = directory / "tokens.json"
    names = list(CALLERS) + sorted(p.stem for p in directory.glob(f"{RECORDER}-*.token") if _named(p.stem))
    want = {c: digest(read_token(directory / f"{c}.token")) for c in names}
    if not table.exists() or TokenTable.read(table).digests != want:
        atomic_write(table, json.dumps(want, indent=2, sort_keys=True).encode())  # replaced in one rename
        created.append(table.name)
    return created


def add_recorder(directory: Path, recorder_id: str) -> Path:
    """A further recorder's own token (`recorder-<id>.token`), in the table the services check (they
    read it when they start). Returns the token file to hand that recorder's host."""
    name = recorder_name(recorder_id)
    path = directory / f"{name}.token"
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        atomic_write(path, (new_token(name) + "\n").encode(), exclusive=True)
    make_token_files(directory)
    return path


def ensure_tokens(settings: Settings) -> list[str]:
    """The embedded default's token files under the data directory, made once."""
    return make_token_files(settings.service_keys_path) if settings.generate_keys else []


def read_token(path: Path) -> str:
    try:
        keys.check_private_file(path)
        token = path.read_text().strip()
    except (OSError, keys.KeyMaterialError) as exc:
        raise TrustError(f"service token {path}: {exc}") from None
    if not _TOKEN.match(token):
        raise TrustError(f"service token {path} is not a Lucid service token")
    return token


def token_path(settings: Settings, caller: str) -> Path:
    if caller == RECORDER:
        caller = recorder_name(settings.recorder_id)
    return settings.service_token_file or settings.service_keys_path / f"{caller}.token"


def own_token(settings: Settings, caller: str) -> str:
    """The token this process presents when it calls another service as `caller`."""
    ensure_tokens(settings)
    return read_token(token_path(settings, caller))


def auth_header(settings: Settings, caller: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {own_token(settings, caller)}"}


@dataclass(frozen=True)
class TokenTable:
    digests: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> TokenTable:
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise TrustError(f"service token table {path}: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise TrustError(f"service token table {path} is not a {{caller: sha256}} object")
        return cls({k: v for k, v in raw.items() if role_of(k) in CALLERS and _named(k)})

    @classmethod
    def load(cls, settings: Settings) -> TokenTable:
        ensure_tokens(settings)
        return cls.read(settings.service_tokens_path)

    def caller(self, authorization: str | None) -> str | None:
        """The caller's identity an `Authorization` header authenticates (`api`, `recorder-b`), or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        m = _TOKEN.match(token.strip()) if scheme.lower() == "bearer" else None
        if m is None:
            return None
        want = self.digests.get(m.group(1))
        return m.group(1) if want is not None and hmac.compare_digest(want, digest(token.strip())) else None
