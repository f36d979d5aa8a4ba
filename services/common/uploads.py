"""An uploaded chunk's declared facts, checked before a byte of its body is read or written: the
recorder's push ingest and the storage service's staging both take uploads this way."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi import Request

from .errors import ApiError
from .ids import MAX_CHUNK_DURATION_MS, MAX_SEQ


def declared(request: Request, seq: int, limit: int) -> tuple[str, int]:
    """The upload's declared SHA-256 and duration, every header checked before a byte is read or
    written."""
    want = request.headers.get("x-content-sha256", "").lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ApiError(422, "invalid_request", "header X-Content-SHA256 must be the chunk's SHA-256 in hex")
    if seq < 0 or seq > MAX_SEQ:
        raise ApiError(422, "invalid_request", f"seq must be between 0 and {MAX_SEQ}")
    try:
        duration_ms = int(request.headers.get("x-chunk-duration-ms", "0"))
        length = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise ApiError(422, "invalid_request", "X-Chunk-Duration-Ms and Content-Length must be integers") from None
    if not 0 <= duration_ms <= MAX_CHUNK_DURATION_MS:
        raise ApiError(422, "invalid_request", f"X-Chunk-Duration-Ms must be between 0 and {MAX_CHUNK_DURATION_MS}")
    if length < 0:
        raise ApiError(422, "invalid_request", "Content-Length must not be negative")
    if length > limit:
        raise ApiError(413, "chunk_too_large", f"chunk is {length} bytes; the limit is {limit}")
    return want, duration_ms


async def receive_checked(request: Request, limit: int, want: str, sink: Callable[[bytes], object]) -> int:
    """Stream the body into `sink`, hashing it: 413 once it passes `limit`, 422 if it does not hash to
    the declared SHA-256 (the caller discards what the sink took). Returns its size."""
    digest, size = hashlib.sha256(), 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, "chunk_too_large", f"chunk exceeds the limit of {limit} bytes")
        digest.update(part)
        sink(part)
    if digest.hexdigest() != want:
        raise ApiError(422, "sha256_mismatch", f"the body hashes to {digest.hexdigest()}, not {want}")
    return size
