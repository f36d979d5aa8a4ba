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
            MAGIC, self.version, self.flags, HEADER_LEN, self.session_id.bytes, self.seq,
            self.key_version, self.raw_len, self.payload_len, self.nonce,
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
        sample = raw[:PROBE] + raw[mid:mid + PROBE]
        if len(cctx.compress(sample)) > len(sample) * (1 - MIN_SAVING):
            return raw, 0
    packed = cctx.compress(raw)
    if len(packed) <= len(raw) * (1 - MIN_SAVING):
        return packed, FLAG_ZSTD
    return raw, 0


def seal(
    raw: bytes, *, dek: bytes, session_id: uuid.UUID, seq: int, key_version: int = 1,
    nonce: bytes | None = None, compression: bool = True,
) -> bytearray:
    """Compress (when it pays) and encrypt one chunk into a self-describing envelope. The
    ciphertext is written straight after the header in one buffer (no copy of the chunk)."""
    payload, flags = compress(raw) if compression else (raw, 0)
    header = Header(
        session_id=session_id, seq=seq, key_version=key_version, raw_len=len(raw),
        payload_len=len(payload), nonce=nonce if nonce is not None else os.urandom(NONCE_LEN),
        flags=flags,
    )
    if len(header.nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    aad = header.pack()
    out = bytearray(HEADER_LEN + len(payload) + TAG_LEN)
    out[:HEADER_LEN] = aad
    AESGCM(dek).encrypt_into(header.nonce, payload, aad, memoryview(out)[HEADER_LEN:])
    return out


def open_envelope(
    data: bytes, *, dek: bytes, session_id: uuid.UUID | None = None, seq: int | None = None
) -> tuple[Header, bytes | bytearray]:
    """Authenticate, decrypt and decompress an envelope; checks its claimed position if given.
    The chunk comes back as bytes-like (an uncompressed payload is not copied again)."""
    header = parse_header(data)
    if session_id is not None and header.session_id != session_id:
        raise EnvelopeError(f"envelope belongs to session {header.session_id}, not {session_id}")
    if seq is not None and header.seq != seq:
        raise EnvelopeError(f"envelope is chunk {header.seq}, not {seq}")
    expected = HEADER_LEN + header.payload_len + TAG_LEN
    if len(data) != expected:
        raise EnvelopeError(f"envelope is {len(data)} bytes, header says {expected}")
    view = memoryview(data)
    payload = bytearray(header.payload_len)
    try:
        AESGCM(dek).decrypt_into(header.nonce, view[HEADER_LEN:], bytes(view[:HEADER_LEN]), payload)
    except InvalidTag:
        raise EnvelopeError("authentication tag mismatch: wrong key or damaged envelope") from None
    if header.compressed:
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header.raw_len)
            if len(raw) != header.raw_len:
                raise EnvelopeError(f"chunk is {len(raw)} bytes, header says {header.raw_len}")
            return header, raw
        except zstandard.ZstdError as exc:
            raise EnvelopeError(f"zstd payload does not decompress: {exc}") from None
    if len(payload) != header.raw_len:
        raise EnvelopeError(f"chunk is {len(payload)} bytes, header says {header.raw_len}")
    return header, payload
