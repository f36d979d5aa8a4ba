"""Format test vectors: fixed keys and nonces → exact bytes and hashes (docs/vectors/v1.json).
An independent implementation checks itself against the JSON; our tests check the code against it."""

from __future__ import annotations

import base64
import hashlib
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import audit, checkpoint, envelope, keys, merkle
from .manifest import build_manifest, canonical_json, sign

SESSION = uuid.UUID("6a1d7a3e-1f2b-4c5d-8e9f-0a1b2c3d4e5f")
DEK = bytes(range(32))
KEK = bytes(range(32, 64))
SIGNING_SEED = bytes(range(64, 96))
NONCES = [bytes([0xA0 + i]) * 12 for i in range(4)]


# long: the test vectors, one after another as docs/vectors/v1.json lists them
def generate() -> dict:
    signer = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    plain = [b"", b"lucid test vector chunk 1\n" * 64, bytes((i * 37 + 11) % 251 for i in range(1000))]
    envs = [
        envelope.seal(p, dek=DEK, session_id=SESSION, seq=i, nonce=NONCES[i], compression=(i == 1))
        for i, p in enumerate(plain)
    ]
    kek = keys.Kek(KEK)
    leaves = [hashlib.sha256(e).digest() for e in envs]
    rows, prev = [], audit.GENESIS
    for i, ev in enumerate(["create", "start", "stop", "finalize"]):
        entry = {"session_id": str(SESSION), "idx": i, "event": ev, "at": f"2026-01-01T00:00:0{i}+00:00"}
        h = audit.entry_hash(prev, entry)
        rows.append({"entry": entry, "prev_hash": prev, "hash": h})
        prev = h
    cp1 = checkpoint.publish(str(SESSION), leaves[:2], "2026-01-01T00:00:10+00:00", None, signer)
    cp2 = checkpoint.publish(str(SESSION), leaves, "2026-01-01T00:00:20+00:00", cp1["body"], signer)
    entries = [
        {
            "seq": i,
            "envelope_sha256": leaves[i].hex(),
            "raw_sha256": hashlib.sha256(p).hexdigest(),
            "raw_size": len(p),
            "stored_size": len(envs[i]),
            "duration_ms": 10000,
            "compressed": envelope.parse_header(envs[i]).compressed,
        }
        for i, p in enumerate(plain)
    ]
    body = build_manifest(
        session={"id": str(SESSION), "name": "vectors"},
        chunks=entries,
        merkle_root_hex=merkle.root(leaves).hex(),
        sealed_at="2026-01-01T00:01:00+00:00",
        checkpoint=checkpoint.link(cp2["body"], leaves),
        audit={"entries": 4, "head": prev},
    )
    signed = sign(body, signer)
    return {
        "about": "Lucid format v1 test vectors; see docs/FORMAT.md. Byte strings are hex.",
        "keys": {
            "dek": DEK.hex(),
            "kek": KEK.hex(),
            "kek_id": kek.key_id,
            "ed25519_seed": SIGNING_SEED.hex(),
            "ed25519_public": keys.public_key_bytes(signer.public_key()).hex(),
            "signing_key_id": keys.public_key_id(signer.public_key()),
        },
        "session_id": str(SESSION),
        "envelopes": [
            {
                "seq": i,
                "nonce": NONCES[i].hex(),
                "compressed": entries[i]["compressed"],
                "plaintext": p.hex(),
                "envelope": e.hex(),
                "envelope_sha256": leaves[i].hex(),
                "header": e[: envelope.HEADER_LEN].hex(),
            }
            for i, (p, e) in enumerate(zip(plain, envs))
        ],
        "wrapped_dek": {"nonce": NONCES[3].hex(), "json": keys.wrap_dek(kek, DEK, SESSION, nonce=NONCES[3]).decode()},
        "merkle": {
            "leaves": [x.hex() for x in leaves],
            "root": merkle.root(leaves).hex(),
            "inclusion": [
                {"index": i, "proof": [p.hex() for p in merkle.inclusion_proof(i, leaves)]} for i in range(len(leaves))
            ],
            "consistency": {"from": 2, "to": 3, "proof": [p.hex() for p in merkle.consistency_proof(2, leaves)]},
        },
        "audit": rows,
        "checkpoints": [cp1, cp2],
        "manifest": {
            "canonical": canonical_json(signed).decode(),
            "sha256": hashlib.sha256(canonical_json(signed)).hexdigest(),
            "signature": base64.b64decode(signed["signature"]["value"]).hex(),
        },
    }
