"""RFC 6962 Merkle tree hash over SHA-256 (0x00 leaf prefix, 0x01 node prefix)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]); the leaves are the entries themselves (here: SHA-256 digests of envelopes)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [leaf_hash(x) for x in leaves]
    return _root_of_hashes(level)


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 section 2.1.1."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is outside a tree of {len(leaves)}")
    return _path(index, [leaf_hash(x) for x in leaves])


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if m < k:
        return _path(m, hashes[:k]) + [_root_of_hashes(hashes[k:])]
    return _path(m - k, hashes[k:]) + [_root_of_hashes(hashes[:k])]


class Tree:
    """MTH(D[n]) with every node kept, so each leaf's PATH(m, D[n]) is O(log n) lookups: the
    proofs of all n leaves cost O(n) hashes, not O(n^2) as `inclusion_proof` per leaf."""

    def __init__(self, leaves: Sequence[bytes]):
        self.size = len(leaves)
        self._nodes: dict[tuple[int, int], bytes] = {}
        hashes = [leaf_hash(x) for x in leaves]
        self.root = self._build(0, self.size, hashes) if hashes else hashlib.sha256(b"").digest()

    def _build(self, lo: int, hi: int, hashes: list[bytes]) -> bytes:
        if hi - lo == 1:
            h = hashes[lo]
        else:
            k = _split(hi - lo)
            h = node_hash(self._build(lo, lo + k, hashes), self._build(lo + k, hi, hashes))
        self._nodes[(lo, hi)] = h
        return h

    def path(self, m: int) -> list[bytes]:
        """PATH(m, D[n]), the same list as `inclusion_proof(m, leaves)`."""
        if not 0 <= m < self.size:
            raise IndexError(f"leaf {m} is outside a tree of {self.size}")
        siblings, lo, hi = [], 0, self.size
        while hi - lo > 1:
            k = _split(hi - lo)
            if m < lo + k:
                siblings.append(self._nodes[(lo + k, hi)])
                hi = lo + k
            else:
                siblings.append(self._nodes[(lo, lo + k)])
                lo += k
        return siblings[::-1]  # deepest sibling first


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2 inclusion proof verification."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) from RFC 6962 section 2.1.2: proves the first m leaves are unchanged in D[n]."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from size {m} to {n}")
    return _subproof(m, [leaf_hash(x) for x in leaves], True)


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [_root_of_hashes(hashes)]
    k = _split(n)
    if m <= k:
        return _subproof(m, hashes[:k], complete) + [_root_of_hashes(hashes[k:])]
    return _subproof(m - k, hashes[k:], False) + [_root_of_hashes(hashes[:k])]


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> bool:
    """RFC 9162 section 2.1.4.2 consistency proof verification."""
    if size1 < 1 or size2 < size1:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    proof = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is the first node
        proof = [root1] + proof
    if not proof:
        return False
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2
