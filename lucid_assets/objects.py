"""Where sealed data is kept: a local directory (the embedded default) or any S3-compatible bucket.

The chunk store and the named credentials speak only this interface: keys are `/`-separated
relative names, values are whole objects. Both backends give the same guarantees:

- a reader never sees half an object: the directory writes a temporary file, fsyncs it and
  renames it (`files.atomic_write`); S3 makes a PUT visible only once it is complete and durable,
  and reads after a write are strongly consistent (AWS S3 since 2020; SeaweedFS's filer);
- "first writer wins" (a data key, a manifest version, a checkpoint) is `os.link` on disk and a
  conditional PUT (`If-None-Match: *`) on S3;
- a read-modify-write (a credential replaced while a rotation rewraps it) is compare-and-swap:
  under a lock file with a content hash as the tag on disk, `If-Match: <ETag>` on S3.

What S3 cannot do is rename: the two places that moved a directory (setting a checkpoint chain
aside) copy then delete, in an order that a crash at any point leaves the originals readable.
A crypto-shred on S3 deletes every version of the data key (a versioned bucket keeps old ones).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .files import atomic_write, fsync_dir, is_atomic_tmp

if TYPE_CHECKING:
    from .settings import Settings


class ObjectStoreError(Exception):
    """The object store refused or failed an operation (the message never carries a secret)."""


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    mtime: float  # seconds since the epoch


def check_key(key: str) -> str:
    """A relative key of non-empty "/"-separated names, none of them "." or ".." (string checks:
    every chunk read passes here, and a PurePosixPath per call was ~7% of an MP4 export's GIL time)."""
    if not key or key[0] == "/" or "\\" in key or "//" in key or any(p in ("..", ".") for p in key.split("/")):
        raise ValueError(f"not an object key: {key[:120]!r}")
    return key


class Objects(Protocol):
    def uri(self, key: str) -> str: ...
    def get(self, key: str) -> bytes | None: ...
    def get_tagged(self, key: str) -> tuple[bytes, str] | None: ...
    def read_range(self, key: str, start: int, length: int) -> bytes | None: ...
    def put(self, key: str, data: bytes, *, exclusive: bool = False, if_match: str | None = None) -> bool: ...
    def stat(self, key: str) -> Entry | None: ...
    def list(self, prefix: str) -> list[Entry]: ...
    def dirs(self, prefix: str) -> list[str]: ...
    def files(self, prefix: str) -> list[Entry]: ...
    def delete(self, key: str, *, scrub: bool = False) -> bool: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def move_prefix(self, src: str, dst: str) -> int: ...
    def local_path(self, key: str) -> Path | None: ...
    def check(self) -> tuple[bool, str]: ...


# --- a local directory ----------------------------------------------------------------------------
class LocalObjects:
    """Objects as files under `root` (mode 0600, written atomically and durably)."""

    kind = "local"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalObjects({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _dir(self, prefix: str) -> Path:
        """The directory a prefix names (the root for an empty one)."""
        return self.root / check_key(prefix.rstrip("/")) if prefix.strip("/") else self.root

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        data = self.get(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def read_range(self, key: str, start: int, length: int) -> bytes | None:
        """`length` bytes from `start`; a negative start counts from the end (the last -start bytes)."""
        try:
            with open(self.path(key), "rb", buffering=0) as f:
                f.seek(start, os.SEEK_END if start < 0 else os.SEEK_SET)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError:  # shorter than the tail asked for
            return None

    @contextmanager
    def _cas(self) -> Iterator[None]:
        """Conditional writers take turns (processes through a lock file, threads through a lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.root / ".cas.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def put(self, key: str, data: bytes, *, exclusive: bool = False, if_match: str | None = None) -> bool:
        path = self.path(key)
        if if_match is None:
            return atomic_write(path, bytes(data), exclusive=exclusive)
        with self._cas():
            now = self.get_tagged(key)
            if now is None or now[1] != if_match:
                return False
            return atomic_write(path, bytes(data))

    def stat(self, key: str) -> Entry | None:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Entry(key, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> list[Entry]:
        base = self._dir(prefix)
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if is_atomic_tmp(name) or name == ".cas.lock":
                    continue
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append(Entry(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e.key)

    def dirs(self, prefix: str) -> list[str]:
        base = self._dir(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def files(self, prefix: str) -> list[Entry]:
        """The objects directly under `prefix` (a "directory"), not those of its subdirectories."""
        base = self._dir(prefix)
        out = []
        try:
            children = list(base.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        for p in children:
            if is_atomic_tmp(p.name) or p.name == ".cas.lock":
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                out.append(Entry(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e.key)

    def delete(self, key: str, *, scrub: bool = False) -> bool:
        path = self.path(key)
        try:
            if scrub:  # overwrite before unlinking, for what that is worth on this disk
                with open(path, "r+b") as f:
                    f.write(os.urandom(max(1, os.fstat(f.fileno()).st_size)))
                    f.flush()
                    os.fsync(f.fileno())
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def delete_prefix(self, prefix: str) -> int:
        base = self.path(prefix.rstrip("/"))
        n = len(self.list(prefix))
        shutil.rmtree(base, ignore_errors=True)
        if base.parent.is_dir():
            fsync_dir(base.parent)
        return n

    def move_prefix(self, src: str, dst: str) -> int:
        a, b = self.path(src.rstrip("/")), self.path(dst.rstrip("/"))
        if not a.is_dir():
            return 0
        n = len(self.list(src))
        b.parent.mkdir(parents=True, exist_ok=True)
        a.rename(b)
        fsync_dir(a.parent)
        return n

    def check(self) -> tuple[bool, str]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return False, f"{self.root} is not writable: {exc.strerror}"
        return True, f"{self.root} writable"


# --- an S3-compatible bucket ----------------------------------------------------------------------
@dataclass(frozen=True)
class S3Config:
    endpoint: str | None  # None: AWS's own
    region: str
    access_key_id: str | None
    secret_access_key: str | None
    path_style: bool = True

    def __repr__(self) -> str:  # never the secret
        return f"S3Config(endpoint={self.endpoint!r}, region={self.region!r}, path_style={self.path_style})"


_clients: dict[S3Config, object] = {}
_clients_lock = threading.Lock()


def s3_client(cfg: S3Config):
    """One thread-safe botocore client per configuration (creating one costs ~0.1 s of CPU)."""
    with _clients_lock:
        if cfg not in _clients:
            import boto3  # only where S3 is configured: it costs ~0.3 s to import
            from botocore.config import Config

            _clients[cfg] = boto3.session.Session().client(
                "s3",
                endpoint_url=cfg.endpoint,
                region_name=cfg.region,
                aws_access_key_id=cfg.access_key_id,
                aws_secret_access_key=cfg.secret_access_key,
                config=Config(
                    s3={"addressing_style": "path" if cfg.path_style else "auto"},
                    retries={"mode": "standard", "max_attempts": 5},
                    max_pool_connections=32,
                    connect_timeout=5,
                    read_timeout=60,
                    # envelopes are authenticated and hashed already; S3-compatible servers differ in
                    # which of botocore's newer default checksums they accept
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return _clients[cfg]


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Objects:
    """Objects under `prefix` in `bucket`."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str, cfg: S3Config):
        self.bucket, self.prefix, self.cfg = bucket, prefix.strip("/") + "/" if prefix.strip("/") else "", cfg
        self.s3 = s3_client(cfg)

    def __repr__(self) -> str:
        return f"S3Objects('s3://{self.bucket}/{self.prefix}')"

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _p(self, prefix: str) -> str:
        p = prefix.strip("/")
        return self.prefix + (check_key(p) + "/" if p else "")

    def local_path(self, key: str) -> Path | None:
        return None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._k(key)}"

    def _call(self, what: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError:
            raise
        except BotoCoreError as exc:
            raise ObjectStoreError(f"{what} s3://{self.bucket}: {type(exc).__name__}: {exc}") from None

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            r = self._call("read", self.s3.get_object, Key=self._k(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise ObjectStoreError(f"read {self.uri(key)}: {_code(exc)}") from None
        with r["Body"] as body:
            return body.read(), r["ETag"]

    def get(self, key: str) -> bytes | None:
        got = self.get_tagged(key)
        return None if got is None else got[0]

    def read_range(self, key: str, start: int, length: int) -> bytes | None:
        from botocore.exceptions import ClientError

        rng = f"bytes={start}" if start < 0 else f"bytes={start}-{start + length - 1}"
        try:
            r = self._call("read", self.s3.get_object, Key=self._k(key), Range=rng)
        except ClientError as exc:
            if _code(exc) in _MISSING | {"InvalidRange"}:
                return None
            raise ObjectStoreError(f"read {self.uri(key)}: {_code(exc)}") from None
        with r["Body"] as body:
            data = body.read()
        if start < 0 and len(data) < -start:  # shorter than the tail asked for (S3 returns it all)
            return None
        return data[:length]

    def put(self, key: str, data: bytes, *, exclusive: bool = False, if_match: str | None = None) -> bool:
        from botocore.exceptions import ClientError

        kw = {"IfNoneMatch": "*"} if exclusive else {"IfMatch": if_match} if if_match is not None else {}
        try:
            self._call("write", self.s3.put_object, Key=self._k(key), Body=bytes(data), **kw)
        except ClientError as exc:
            if _code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"} and kw:
                return False
            raise ObjectStoreError(f"write {self.uri(key)}: {_code(exc)}") from None
        return True

    def stat(self, key: str) -> Entry | None:
        from botocore.exceptions import ClientError

        try:
            r = self._call("stat", self.s3.head_object, Key=self._k(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise ObjectStoreError(f"stat {self.uri(key)}: {_code(exc)}") from None
        return Entry(key, int(r["ContentLength"]), r["LastModified"].timestamp())

    def _pages(self, prefix: str, **kw):
        pager = self.s3.get_paginator("list_objects_v2")
        try:
            yield from pager.paginate(Bucket=self.bucket, Prefix=prefix, **kw)
        except Exception as exc:  # botocore's ClientError or a transport error, reported alike
            raise ObjectStoreError(f"list s3://{self.bucket}/{prefix}: {_code(exc) or type(exc).__name__}") from None

    def _entry(self, o: dict) -> Entry:
        """An object of a listing page, its key relative to this store's prefix."""
        return Entry(o["Key"][len(self.prefix) :], int(o["Size"]), o["LastModified"].timestamp())

    def list(self, prefix: str) -> list[Entry]:
        p, out = self._p(prefix), []
        for page in self._pages(p):
            out += [self._entry(o) for o in page.get("Contents", [])]
        return sorted(out, key=lambda e: e.key)

    def dirs(self, prefix: str) -> list[str]:
        p, out = self._p(prefix), []
        for page in self._pages(p, Delimiter="/"):
            out += [c["Prefix"][len(p) :].rstrip("/") for c in page.get("CommonPrefixes", [])]
        return sorted(out)

    def files(self, prefix: str) -> list[Entry]:
        p, out = self._p(prefix), []
        for page in self._pages(p, Delimiter="/"):
            out += [self._entry(o) for o in page.get("Contents", [])]
        return sorted(out, key=lambda e: e.key)

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            r = self._call("delete", self.s3.delete_objects, Delete={"Objects": batch, "Quiet": True})
            if r.get("Errors"):
                raise ObjectStoreError(f"delete in s3://{self.bucket}: {r['Errors'][0].get('Code')}")

    def delete(self, key: str, *, scrub: bool = False) -> bool:
        """With scrub, every stored version of the key goes (a versioned bucket keeps old ones)."""
        from botocore.exceptions import ClientError

        k = self._k(key)
        existed = self.stat(key) is not None
        if scrub:
            try:
                pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=k)
                for page in pages:
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                        if v["Key"] == k and v.get("VersionId") not in (None, "null"):
                            self._call("delete", self.s3.delete_object, Key=k, VersionId=v["VersionId"])
            except ClientError as exc:
                if _code(exc) not in {"NotImplemented", "501", "AccessDenied"}:
                    raise ObjectStoreError(f"delete {self.uri(key)}: {_code(exc)}") from None
        try:
            self._call("delete", self.s3.delete_object, Key=k)
        except ClientError as exc:
            raise ObjectStoreError(f"delete {self.uri(key)}: {_code(exc)}") from None
        return existed

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.prefix + e.key for e in self.list(prefix)]
        self._delete_keys(keys)
        return len(keys)

    def move_prefix(self, src: str, dst: str) -> int:
        """Copy every object, then delete the originals: a crash leaves the originals whole."""
        entries = self.list(src)
        s, d = src.strip("/") + "/", dst.strip("/") + "/"
        for e in entries:
            target = self._k(d + e.key[len(s) :])
            source = {"Bucket": self.bucket, "Key": self._k(e.key)}
            self._call("copy", self.s3.copy_object, Key=target, CopySource=source)
        self._delete_keys([self._k(e.key) for e in entries])
        return len(entries)

    def check(self) -> tuple[bool, str]:
        probe = f".probe/{os.getpid()}"
        try:
            self.put(probe, b"")
            self.delete(probe)
        except Exception as exc:  # any failure is "not ready", said plainly
            return False, f"s3://{self.bucket}/{self.prefix} is not writable: {str(exc)[:200]}"
        return True, f"s3://{self.bucket}/{self.prefix} writable"


def parse_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] address: {uri!r}")
    return parts.netloc, parts.path.strip("/")


def open_objects(location: str | Path, settings: Settings | None = None) -> Objects:
    """A local directory, or `s3://bucket[/prefix]` with the endpoint and keys from settings."""
    text = str(location)
    if not text.startswith("s3://"):
        return LocalObjects(Path(text.removeprefix("file://")))
    if settings is None:
        from .settings import get_settings

        settings = get_settings()
    bucket, prefix = parse_s3(text)
    return S3Objects(bucket, prefix, settings.s3_config)
