"""Chunk envelope, format version 1 (byte layout in docs/FORMAT.md).

    header (64 bytes, big-endian)            AES-256-GCM(DEK, nonce, payload, AAD=header)
    +------+---+-----+-----+---------+-----+-------+---------+-----------+-------+
    | LUCE | v | flg | hl  | session | seq | keyv  | raw_len | payld_len | nonce | ciphertext || tag(16)
    |  4   | 1 |  1  |  2  |   16    |  8  |   4   |    8    |     8     |  12   |
    +------+---+-----+-----+---------+-----+-------+---------+-----------+-------+

The whole header is the AAD, so an envelope cannot be moved to another session or position, nor
have its flags or sizes changed, without the tag failing. An envelope plus its session's DEK is
enough to recover the chunk and its position.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"LUCE"
VERSION = 1
FLAG_ZSTD = 0x01
KNOWN_FLAGS = FLAG_ZSTD
_HEADER = struct.Struct(">4sBBH16sQIQQ12s")
HEADER_LEN = _HEADER.size  # 64
TAG_LEN = 16
NONCE_LEN = 12
ZSTD_LEVEL = 1
# Compression must save at least this share of the bytes to be kept (video does not).
MIN_SAVING = 0.05
# Larger chunks are probed first: two 64 KiB samples decide whether compressing the rest can pay,
# so incompressible data (video) costs ~1.5 % of a full zstd pass instead of all of it.
PROBE = 64 * 1024


class EnvelopeError(ValueError):
    """The envelope is malformed, damaged, or not for this key/session/position."""


@dataclass(frozen=True)
class Header:
    session_id: uuid.UUID
    seq: int
    key_version: int
    raw_len: int
    payload_len: int
    nonce: bytes
    flags: int = 0
    version: int = VERSION

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZSTD)

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.flags,
            HEADER_LEN,
            self.session_id.bytes,
            self.seq,
            self.key_version,
            self.raw_len,
            self.payload_len,
            self.nonce,
        )


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise EnvelopeError(f"envelope too short for a header: {len(data)} < {HEADER_LEN} bytes")
    magic, version, flags, hlen, sid, seq, keyv, raw_len, payload_len, nonce = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise EnvelopeError("not a Lucid envelope (bad magic)")
    if version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version}")
    if hlen != HEADER_LEN:
        raise EnvelopeError(f"unexpected header length {hlen}")
    if flags & ~KNOWN_FLAGS:
        raise EnvelopeError(f"unknown flags 0x{flags:02x}")
    return Header(uuid.UUID(bytes=sid), seq, keyv, raw_len, payload_len, nonce, flags, version)


def compress(raw: bytes, level: int = ZSTD_LEVEL) -> tuple[bytes, int]:
    """zstd when it pays, else the raw bytes; returns (payload, flags)."""
    if not raw:
        return raw, 0
    cctx = zstandard.ZstdCompressor(level=level)
    if len(raw) > 4 * PROBE:
        mid = len(raw) // 2
        sample = raw[:PROBE] + raw[mid : mid + PROBE]
        if len(cctx.compress(sample)) > len(sample) * (1 - MIN_SAVING):
            return raw, 0
    packed = cctx.compress(raw)
    if len(packed) <= len(raw) * (1 - MIN_SAVING):
        return packed, FLAG_ZSTD
    return raw, 0


def seal(
    raw: bytes,
    *,
    dek: bytes,
    session_id: uuid.UUID,
    seq: int,
    key_version: int = 1,
    nonce: bytes | None = None,
    compression: bool = True,
) -> bytearray:
    """Compress (when it pays) and encrypt one chunk into a self-describing envelope. The
    ciphertext is written straight after the header in one buffer (no copy of the chunk)."""
    payload, flags = compress(raw) if compression else (raw, 0)
    header = Header(
        session_id=session_id,
        seq=seq,
        key_version=key_version,
        raw_len=len(raw),
        payload_len=len(payload),
        nonce=nonce if nonce is not None else os.urandom(NONCE_LEN),
        flags=flags,
    )
    if len(header.nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    aad = header.pack()
    out = bytearray(HEADER_LEN + len(payload) + TAG_LEN)
    out[:HEADER_LEN] = aad
    AESGCM(dek).encrypt_into(header.nonce, payload, aad, memoryview(out)[HEADER_LEN:])
    return out


def _checked_header(data: bytes | memoryview, session_id: uuid.UUID | None, seq: int | None) -> Header:
    header = parse_header(data)
    if session_id is not None and header.session_id != session_id:
        raise EnvelopeError(f"envelope belongs to session {header.session_id}, not {session_id}")
    if seq is not None and header.seq != seq:
        raise EnvelopeError(f"envelope is chunk {header.seq}, not {seq}")
    expected = HEADER_LEN + header.payload_len + TAG_LEN
    if len(data) != expected:
        raise EnvelopeError(f"envelope is {len(data)} bytes, header says {expected}")
    return header


def _decrypt_into(header: Header, data: bytes | memoryview, dek: bytes, out: memoryview) -> None:
    view = memoryview(data)
    try:
        AESGCM(dek).decrypt_into(header.nonce, view[HEADER_LEN:], bytes(view[:HEADER_LEN]), out)
    except InvalidTag:
        raise EnvelopeError("authentication tag mismatch: wrong key or damaged envelope") from None


def _decompress(header: Header, payload: bytes | bytearray | memoryview) -> bytes:
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header.raw_len)
    except zstandard.ZstdError as exc:
        raise EnvelopeError(f"zstd payload does not decompress: {exc}") from None
    if len(raw) != header.raw_len:
        raise EnvelopeError(f"chunk is {len(raw)} bytes, header says {header.raw_len}")
    return raw


def open_envelope(
    data: bytes | memoryview, *, dek: bytes, session_id: uuid.UUID | None = None, seq: int | None = None
) -> tuple[Header, bytes | bytearray]:
    """Authenticate, decrypt and decompress an envelope; checks its claimed position if given.
    The chunk comes back as bytes-like (an uncompressed payload is not copied again)."""
    header = _checked_header(data, session_id, seq)
    payload = bytearray(header.payload_len)
    _decrypt_into(header, data, dek, memoryview(payload))
    if header.compressed:
        return header, _decompress(header, payload)
    if len(payload) != header.raw_len:
        raise EnvelopeError(f"chunk is {len(payload)} bytes, header says {header.raw_len}")
    return header, payload


def open_into(
    data: bytes | memoryview,
    out: memoryview,
    *,
    dek: bytes,
    session_id: uuid.UUID | None = None,
    seq: int | None = None,
) -> Header:
    """`open_envelope` writing the chunk into `out[:header.raw_len]` (the caller sizes `out` from
    `parse_header(data).raw_len`): an uncompressed chunk is decrypted in place, never copied.
    Nothing in `out` is to be used when this raises."""
    header = _checked_header(data, session_id, seq)
    if len(out) < header.raw_len:
        raise ValueError(f"output buffer of {len(out)} bytes for a {header.raw_len}-byte chunk")
    if header.compressed:
        payload = bytearray(header.payload_len)
        _decrypt_into(header, data, dek, memoryview(payload))
        out[: header.raw_len] = _decompress(header, payload)
    else:
        if header.payload_len != header.raw_len:
            raise EnvelopeError(f"chunk is {header.payload_len} bytes, header says {header.raw_len}")
        _decrypt_into(header, data, dek, out[: header.raw_len])
    return header


# --- sidecars: derived data about one chunk, sealed under the same data key ---------------------
# LSC1 | kind(4) | nonce(12) | AES-256-GCM(DEK, nonce, data, AAD = LSC1 | kind | session(16) | seq(8))
# Never mistaken for an envelope (other magic), nor moved to another chunk or kind (the AAD).
SIDECAR_MAGIC = b"LSC1"


def _sidecar_aad(kind: bytes, session_id: uuid.UUID, seq: int) -> bytes:
    if len(kind) != 4:
        raise ValueError("a sidecar kind is 4 bytes")
    return SIDECAR_MAGIC + kind + session_id.bytes + struct.pack(">Q", seq)


def seal_sidecar(data: bytes, *, dek: bytes, kind: bytes, session_id: uuid.UUID, seq: int) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return SIDECAR_MAGIC + kind + nonce + AESGCM(dek).encrypt(nonce, data, _sidecar_aad(kind, session_id, seq))


def open_sidecar(blob: bytes, *, dek: bytes, kind: bytes, session_id: uuid.UUID, seq: int) -> bytes:
    head = len(SIDECAR_MAGIC) + 4 + NONCE_LEN
    if len(blob) < head + TAG_LEN or blob[:4] != SIDECAR_MAGIC or blob[4:8] != kind:
        raise EnvelopeError(f"not a {kind.decode(errors='replace')} sidecar")
    try:
        return AESGCM(dek).decrypt(blob[8:head], blob[head:], _sidecar_aad(kind, session_id, seq))
    except InvalidTag:
        raise EnvelopeError("sidecar authentication failed: damaged, or made for another chunk") from None
