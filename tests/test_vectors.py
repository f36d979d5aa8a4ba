"""docs/vectors/v1.json: the implementation reproduces it, and an independent reading of
docs/FORMAT.md (struct + cryptography + zstandard directly, no Lucid code) opens it."""

import base64
import hashlib
import json
import struct
import uuid
from pathlib import Path

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lucid_assets.core.vectors import generate

V = json.loads((Path(__file__).resolve().parent.parent / "docs" / "vectors" / "v1.json").read_text())
H = bytes.fromhex


def test_implementation_reproduces_the_vectors():
    assert json.loads(json.dumps(generate(), sort_keys=True)) == V


def test_envelopes_open_by_the_spec_alone():
    for v in V["envelopes"]:
        env = H(v["envelope"])
        magic, ver, flags, hlen, sid, seq, keyv, raw_len, payload_len, nonce = struct.unpack(
            ">4sBBH16sQIQQ12s", env[:64]
        )
        assert (magic, ver, hlen, uuid.UUID(bytes=sid), seq) == (b"LUCE", 1, 64, uuid.UUID(V["session_id"]), v["seq"])
        assert nonce.hex() == v["nonce"] and len(env) == 64 + payload_len + 16
        payload = AESGCM(H(V["keys"]["dek"])).decrypt(nonce, env[64:], env[:64])
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len) if flags & 1 else payload
        assert raw.hex() == v["plaintext"] and len(raw) == raw_len and bool(flags & 1) == v["compressed"]
        assert hashlib.sha256(env).hexdigest() == v["envelope_sha256"]


def test_wrapped_dek_by_the_spec_alone():
    doc = json.loads(V["wrapped_dek"]["json"])
    kek = H(V["keys"]["kek"])
    assert hashlib.sha256(b"lucid-kek-id\x00" + kek).hexdigest()[:16] == doc["kek_id"] == V["keys"]["kek_id"]
    aad = b"lucid-dek\x00" + uuid.UUID(doc["session_id"]).bytes + doc["kek_id"].encode()
    dek = AESGCM(kek).decrypt(base64.b64decode(doc["nonce"]), base64.b64decode(doc["wrapped"]), aad)
    assert dek.hex() == V["keys"]["dek"]


def _mth(leaves):
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_merkle_manifest_checkpoints_and_audit_by_the_spec_alone():
    leaves = [H(x) for x in V["merkle"]["leaves"]]
    assert _mth(leaves).hex() == V["merkle"]["root"]
    pub = Ed25519PublicKey.from_public_bytes(H(V["keys"]["ed25519_public"]))
    signed = json.loads(V["manifest"]["canonical"])
    assert _canonical(signed) == V["manifest"]["canonical"].encode()
    assert hashlib.sha256(V["manifest"]["canonical"].encode()).hexdigest() == V["manifest"]["sha256"]
    pub.verify(H(V["manifest"]["signature"]), _canonical(signed["body"]))
    assert signed["body"]["merkle"]["root"] == V["merkle"]["root"]
    assert hashlib.sha256(H(V["keys"]["ed25519_public"])).hexdigest()[:16] == signed["signature"]["key_id"]
    for cp in V["checkpoints"]:
        pub.verify(base64.b64decode(cp["signature"]["value"]), _canonical(cp["body"]))
        assert cp["body"]["root"] == _mth(leaves[: cp["body"]["tree_size"]]).hex()
    prev = "0" * 64
    for row in V["audit"]:
        assert row["prev_hash"] == prev
        prev = hashlib.sha256(H(prev) + _canonical(row["entry"])).hexdigest()
        assert row["hash"] == prev
    assert signed["body"]["audit"] == {"entries": 4, "head": prev}
