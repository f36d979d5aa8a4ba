"""The pure core: envelope, keys, Merkle tree, manifest, audit chain, state machine."""

import hashlib
import os
import uuid

import pytest

from lucid_assets.core import audit, envelope, keys, manifest, merkle, states

SID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
DEK = bytes(range(32))


@pytest.mark.parametrize("raw", [b"", b"log line 42\n" * 20000, os.urandom(300_000)], ids=["empty", "text", "random"])
def test_envelope_round_trip(raw):
    data = envelope.seal(raw, dek=DEK, session_id=SID, seq=7)
    header, back = envelope.open_envelope(data, dek=DEK, session_id=SID, seq=7)
    assert back == raw
    assert (header.session_id, header.seq, header.raw_len) == (SID, 7, len(raw))
    assert len(data) == envelope.HEADER_LEN + header.payload_len + envelope.TAG_LEN


def test_compression_only_when_it_pays():
    text = envelope.parse_header(envelope.seal(b"abc" * 100000, dek=DEK, session_id=SID, seq=0))
    noise = envelope.parse_header(envelope.seal(os.urandom(100000), dek=DEK, session_id=SID, seq=0))
    assert text.compressed and text.payload_len < 300000 // 10
    assert not noise.compressed and noise.payload_len == 100000


def test_wrong_key_fails():
    data = envelope.seal(b"secret", dek=DEK, session_id=SID, seq=1)
    with pytest.raises(envelope.EnvelopeError, match="tag"):
        envelope.open_envelope(data, dek=bytes(32), session_id=SID, seq=1)


@pytest.mark.parametrize("offset", range(0, envelope.HEADER_LEN))
def test_every_header_byte_is_authenticated(offset):
    data = bytearray(envelope.seal(b"x" * 1000, dek=DEK, session_id=SID, seq=3))
    data[offset] ^= 0x01
    with pytest.raises(envelope.EnvelopeError):
        envelope.open_envelope(bytes(data), dek=DEK)


def test_envelope_cannot_move_to_another_position_or_session():
    data = envelope.seal(b"chunk", dek=DEK, session_id=SID, seq=3)
    with pytest.raises(envelope.EnvelopeError, match="chunk 3, not 4"):
        envelope.open_envelope(data, dek=DEK, session_id=SID, seq=4)
    with pytest.raises(envelope.EnvelopeError, match="belongs to session"):
        envelope.open_envelope(data, dek=DEK, session_id=uuid.uuid4(), seq=3)


def test_ciphertext_and_truncation_are_detected():
    data = envelope.seal(b"y" * 5000, dek=DEK, session_id=SID, seq=0)
    flipped = bytearray(data)
    flipped[-20] ^= 0x80
    for bad in (bytes(flipped), data[:-1], data[:10]):
        with pytest.raises(envelope.EnvelopeError):
            envelope.open_envelope(bad, dek=DEK)


# RFC 6962 / Certificate Transparency reference test vectors (merkle_tree_test.cc).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_merkle_root_of_known_trees():
    assert merkle.root([]).hex() == hashlib.sha256(b"").hexdigest()
    for n in range(1, 9):
        assert merkle.root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1], n


def test_inclusion_proofs_verify_and_reject_tampering():
    for n in range(1, 21):
        leaves = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
        r = merkle.root(leaves)
        for i in range(n):
            proof = merkle.inclusion_proof(i, leaves)
            assert merkle.verify_inclusion(leaves[i], i, n, proof, r)
            assert not merkle.verify_inclusion(b"\x00" * 32, i, n, proof, r)
            if n > 1:
                assert not merkle.verify_inclusion(leaves[i], (i + 1) % n, n, proof, r)


def test_state_machine_allows_exactly_the_design():
    S, E = states.State, states.Event
    assert states.next_state("created", "start") is S.RECORDING
    assert states.next_state("failed", "retry") is S.PROCESSING
    for s in S:
        for e in E:
            if (s, e) in states.TRANSITIONS:
                assert states.next_state(s, e) == states.TRANSITIONS[(s, e)]
            else:
                with pytest.raises(states.IllegalTransition) as info:
                    states.next_state(s, e)
                assert info.value.state is s
    assert not any(s is S.DELETED for (s, _) in states.TRANSITIONS)


def test_illegal_transition_names_current_state():
    with pytest.raises(states.IllegalTransition, match="cannot seal a session that is recording"):
        states.next_state("recording", "seal")


def test_canonical_json_and_signatures(tmp_path):
    assert manifest.canonical_json({"b": 1, "a": [2, "é"]}) == '{"a":[2,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        manifest.canonical_json({"x": 1.5})
    key = keys.create_signing_key(tmp_path / "k")
    doc = manifest.sign({"hello": "world"}, key)
    assert manifest.verify_signature(doc, key.public_key()) == (True, "signature valid")
    doc["body"]["hello"] = "there"
    assert not manifest.verify_signature(doc, key.public_key())[0]
    foreign = keys.create_signing_key(tmp_path / "f")
    forged = manifest.sign({"hello": "world"}, foreign)
    ok, why = manifest.verify_signature(forged, key.public_key())
    assert not ok and "not by this platform's key" in why


def test_key_files_are_private_and_wrapped_keys_bound_to_session(tmp_path):
    kek = keys.create_kek(tmp_path / "master.key")
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert keys.load_kek(tmp_path / "master.key") == kek
    assert kek.key.hex() not in repr(kek)
    dek = keys.new_dek()
    wrapped = keys.wrap_dek(kek, dek, SID)
    assert dek.hex() not in wrapped.decode() and keys.unwrap_dek({kek.key_id: kek}, wrapped, SID) == dek
    with pytest.raises(keys.KeyMaterialError, match="another session"):
        keys.unwrap_dek({kek.key_id: kek}, wrapped, uuid.uuid4())
    other = keys.Kek(os.urandom(32))
    with pytest.raises(keys.KeyMaterialError, match="not in the keyring"):
        keys.unwrap_dek({other.key_id: other}, wrapped, SID)
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(keys.KeyMaterialError, match="readable by group or others"):
        keys.load_kek(tmp_path / "master.key")


def test_audit_chain_detects_edits():
    rows, prev = [], audit.GENESIS
    for i in range(5):
        entry = {"idx": i, "event": f"e{i}"}
        h = audit.entry_hash(prev, entry)
        rows.append({"entry": entry, "prev_hash": prev, "hash": h})
        prev = h
    assert audit.verify_chain(rows) == []
    rows[2]["entry"]["event"] = "edited"
    assert audit.verify_chain(rows) == ["audit entry 2 was altered (hash mismatch)"]
    del rows[2]
    assert any("does not link" in p for p in audit.verify_chain(rows))


def test_consistency_proofs_verify_and_reject_rewrites():
    for n in range(1, 18):
        leaves = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
        r2 = merkle.root(leaves)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, leaves)
            r1 = merkle.root(leaves[:m])
            assert merkle.verify_consistency(m, n, proof, r1, r2), (m, n)
            rewritten = merkle.root([b"\xff" * 32] + leaves[1:m])
            assert not merkle.verify_consistency(m, n, proof, rewritten, r2)
            if m < n:
                assert not merkle.verify_consistency(m, n, proof, r1, merkle.root(leaves[:-1] + [b"\x00" * 32]))


def test_consistency_proof_of_known_tree():
    # RFC 6962 section 2.1.3, the 7-leaf example: PROOF(3, D[7]) = [c, d, g, l].
    a, b, c, d, e, f, j = (merkle.leaf_hash(x) for x in CT_LEAVES[:7])
    g, i = merkle.node_hash(a, b), merkle.node_hash(e, f)
    l_ = merkle.node_hash(i, j)
    assert merkle.consistency_proof(3, CT_LEAVES[:7]) == [c, d, g, l_]
    # and PROOF(4, D[7]) = [l]; PROOF(6, D[7]) = [i, j, k]
    k = merkle.node_hash(g, merkle.node_hash(c, d))
    assert merkle.consistency_proof(4, CT_LEAVES[:7]) == [l_]
    assert merkle.consistency_proof(6, CT_LEAVES[:7]) == [i, j, k]
