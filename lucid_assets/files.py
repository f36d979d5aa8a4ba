"""Crash-safe files, the one implementation: a reader never sees half a file, and what a function
returns after has reached the disk (data, name and directory entry)."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a link, an unlink) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def publish(tmp: Path, final: Path, *, exclusive: bool = False) -> bool:
    """Move a written temporary file to its final name, durably. With exclusive, an existing file
    wins and False is returned (the temporary file is left to the caller)."""
    fsync_file(tmp)
    return _place(tmp, final, exclusive)


def _place(tmp: Path, final: Path, exclusive: bool) -> bool:
    if exclusive:
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        tmp.unlink()
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return True


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Durably write `data` at `path` (mode 0600). With exclusive, an existing file wins (returns False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        return _place(tmp, path, exclusive)
    finally:
        tmp.unlink(missing_ok=True)


_ATOMIC_TMP = re.compile(r"\.[^/]+\.[0-9a-f]{32}\.tmp")


def is_atomic_tmp(name: str) -> bool:
    """A temporary file of atomic_write (`.<name>.<uuid4 hex>.tmp`), exactly."""
    return _ATOMIC_TMP.fullmatch(name) is not None


def clean_stale_tmp(root: Path, *, older_than: float = 600.0) -> list[Path]:
    """Remove atomic_write temporary files under `root` last modified more than `older_than`
    seconds ago: what a process killed mid-write leaves behind (a live write renames or removes
    its file within moments). Returns what was removed."""
    if not root.is_dir():
        return []
    cutoff, removed = time.time() - older_than, []
    for path in root.rglob(".*.tmp"):
        try:
            if is_atomic_tmp(path.name) and path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # finished or removed meanwhile
            continue
    return removed


def is_uuid(name: str) -> bool:
    """A session directory's name: a UUID in canonical form."""
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False
