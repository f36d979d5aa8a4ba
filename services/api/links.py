"""Short-lived signed media links, so a <video> element (or hls.js) can fetch a session's playlist,
chunks and exports without the API key: token = b64url(payload) "." b64url(HMAC-SHA256(secret,
payload)), payload = {"s": session, "k": api key id, "e": expiry}, or {"s", "h": share id, "e"} for a link
made through a share. A link dies with its expiry, or with the API key or share that made it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from lucid_assets.core import keys as corekeys
from services.common.errors import ApiError

TTL_SECONDS = 15 * 60


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load_secret(path: Path) -> bytes:
    if not path.exists():
        try:
            corekeys.write_private_file(path, os.urandom(32))
        except FileExistsError:  # another worker made it first
            pass
    corekeys.check_private_file(path)
    return path.read_bytes()


def _sign(secret: bytes, body: dict) -> str:
    payload = json.dumps(body, separators=(",", ":")).encode()
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def sign(secret: bytes, session_id: str, key_id: str, ttl: int = TTL_SECONDS) -> tuple[str, int]:
    exp = int(time.time()) + ttl
    return _sign(secret, {"s": session_id, "k": key_id, "e": exp}), exp


def sign_share(secret: bytes, session_id: str, share_id: str, expires: int) -> tuple[str, int]:
    """A link made through a share: it dies at `expires` (unix) at the latest, and with the share."""
    exp = min(int(time.time()) + TTL_SECONDS, expires)
    return _sign(secret, {"s": session_id, "h": share_id, "e": exp}), exp


class Link(NamedTuple):
    key_id: str | None  # made with an API key ...
    share_id: str | None  # ... or through a share


def check(secret: bytes, token: str, session_id: str) -> Link:
    """Who made the link; 401 if the link is forged, expired or for another session."""
    bad = ApiError(401, "unauthorized", "the media link is invalid or has expired; ask for a new one")
    try:
        p, m = token.split(".", 1)
        payload, mac = _unb64(p), _unb64(m)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        raise bad from None
    if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), mac):
        raise bad
    try:  # signed by us, so well-formed unless the secret leaked: still never a 500
        body = json.loads(payload)
    except ValueError:
        raise bad from None
    if not isinstance(body, dict):
        raise bad
    key_id, share_id = body.get("k"), body.get("h")
    if not (isinstance(key_id, str) and share_id is None) and not (isinstance(share_id, str) and key_id is None):
        raise bad
    expiry = body.get("e")
    if body.get("s") != session_id or not isinstance(expiry, int) or isinstance(expiry, bool) or expiry < time.time():
        raise bad
    return Link(key_id, share_id)
