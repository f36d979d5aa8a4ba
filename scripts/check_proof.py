#!/usr/bin/env python3
"""Independent checker for a Lucid inclusion proof (docs/FORMAT.md). Needs only the standard library
and, for the signature, `cryptography`.

    check_proof.py PROOF.json SIGNING_KEY.json [ENVELOPE.luce]

PROOF.json is GET /v1/sessions/{id}/chunks/{seq}/proof, SIGNING_KEY.json is GET /v1/keys/signing,
ENVELOPE.luce (optional) is GET /v1/sessions/{id}/chunks/{seq}/envelope. Exit 0 when valid."""

import base64
import hashlib
import json
import sys
from pathlib import Path


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(leaf, index, size, proof):  # RFC 9162 section 2.1.3.2
    fn, sn, r = index, size - 1, hashlib.sha256(b"\x00" + leaf).digest()
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def main(proof_path, key_path, envelope_path=None):
    doc, key = json.loads(Path(proof_path).read_text()), json.loads(Path(key_path).read_text())
    leaf = bytes.fromhex(doc["leaf"])
    if envelope_path and hashlib.sha256(Path(envelope_path).read_bytes()).digest() != leaf:
        return "envelope does not hash to the proof's leaf"
    root = root_from_inclusion(leaf, doc["seq"], doc["tree_size"], [bytes.fromhex(p) for p in doc["proof"]])
    body = doc["signed"]["body"]
    signed_root = body["merkle"]["root"] if doc["anchor"] == "manifest" else body["root"]
    if root is None or root.hex() != signed_root:
        return "inclusion proof does not lead to the signed root"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"])).verify(
            base64.b64decode(doc["signed"]["signature"]["value"]), canonical
        )
    except Exception:
        return "signature over the root does not verify with this public key"
    print(f"chunk {doc['seq']} is leaf {doc['seq']} of {doc['tree_size']} under signed root {signed_root}")
    return None


if __name__ == "__main__":
    problem = main(*sys.argv[1:4])
    if problem:
        sys.exit(f"INVALID: {problem}")
