#!/usr/bin/env python3
"""Envelope seal/open throughput against this machine's own limit, measured in one run on the same
8 MiB buffers. Prints ratios; speed targets live here, never in tests.

  limit (compressible)   = 1 / (t_zstd1 + t_aes(compressed) + t_sha(envelope))   per byte of chunk
  limit (incompressible) = 1 / (t_aes + t_sha)                                  per byte of chunk
  seal  = envelope.seal() + SHA-256 of the envelope (the Merkle leaf), as the processor does
  open  = envelope.open_envelope() against 1 / (t_aes_decrypt + t_zstd_decompress)
  threads: two threads sealing separate buffers vs one, and the same work in two processes (the
  machine's own parallel limit).

Targets (issue 3): seal >= 0.85 x limit on compressible; >= 0.9 x the AES+SHA chain on
incompressible; two threads >= 1.7 x one.  Usage: python bench/envelope.py [--mib 8] [--reps 7]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lucid_assets.core import envelope

SID = uuid.uuid4()
DEK = os.urandom(32)


def log_like(size: int, seed: int = 1) -> bytes:
    rnd, out, n = random.Random(seed), [], 0
    while n < size:
        line = (
            f"2026-11-27T15:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}.{rnd.randrange(1000):03d}Z INFO "
            f"svc=api req={rnd.getrandbits(64):016x} path=/v1/sessions/{rnd.getrandbits(32):08x} "
            f"status={rnd.choice((200, 201, 404, 409))} took={rnd.randrange(500)}ms\n"
        ).encode()
        out.append(line)
        n += len(line)
    return b"".join(out)[:size]


def best(fn, reps: int) -> float:
    """Median seconds of `reps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def seal_and_hash(buf: bytes) -> bytes:
    env = envelope.seal(buf, dek=DEK, session_id=SID, seq=0)
    return hashlib.sha256(env).digest()


BUFS: dict[str, bytes] = {}  # set before the process pool forks, so workers inherit it


def seal_many(args) -> None:
    name, n = args
    for _ in range(n):
        seal_and_hash(BUFS[name])


def measure(name: str, buf: bytes, reps: int) -> dict:
    mb = len(buf) / 1e6
    aes, nonce = AESGCM(DEK), os.urandom(12)
    packed = zstandard.ZstdCompressor(level=1).compress(buf)
    compressible = len(packed) <= len(buf) * (1 - envelope.MIN_SAVING)
    payload = packed if compressible else buf
    ct = aes.encrypt(nonce, payload, b"h" * 64)
    env = bytes(envelope.seal(buf, dek=DEK, session_id=SID, seq=0))
    t_z = best(lambda: zstandard.ZstdCompressor(level=1).compress(buf), reps) if compressible else 0.0
    t_aes = best(lambda: aes.encrypt(nonce, payload, b"h" * 64), reps)
    t_sha = best(lambda: hashlib.sha256(env).digest(), reps)
    t_seal = best(lambda: seal_and_hash(buf), reps)
    t_dec = best(lambda: aes.decrypt(nonce, ct, b"h" * 64), reps)
    t_unz = best(lambda: zstandard.ZstdDecompressor().decompress(packed), reps) if compressible else 0.0
    t_open = best(lambda: envelope.open_envelope(env, dek=DEK), reps)
    r = {
        "name": name,
        "ratio": len(payload) / len(buf),
        "zstd": mb / t_z if t_z else None,
        "aes": len(payload) / 1e6 / t_aes,
        "sha": len(env) / 1e6 / t_sha,
        "limit": mb / (t_z + t_aes + t_sha),
        "seal": mb / t_seal,
        "open_limit": mb / (t_dec + t_unz),
        "open": mb / t_open,
    }
    r["seal_ratio"], r["open_ratio"] = r["seal"] / r["limit"], r["open"] / r["open_limit"]
    return r


def scaling(name: str, n: int) -> tuple[float, float]:
    t1 = best(lambda: seal_many((name, n)), 3)
    with ThreadPoolExecutor(2) as pool:
        t2 = best(lambda: list(pool.map(seal_many, [(name, n), (name, n)])), 3)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
        tp = best(lambda: list(pool.map(seal_many, [(name, n), (name, n)])), 3)
    return 2 * t1 / t2, 2 * t1 / tp


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    size = args.mib << 20
    bufs = BUFS
    bufs.update({"compressible (log-like text)": log_like(size), "incompressible (random, as video)": os.urandom(size)})
    print(f"envelope bench: {args.mib} MiB chunks, median of {args.reps}, one core unless noted (MB/s)")
    results = {}
    for name, buf in bufs.items():
        r = results[name] = measure(name, buf, args.reps)
        z = f"zstd1 {r['zstd']:7.0f}  " if r["zstd"] else "zstd1 skipped "
        print(
            f"- {name}: payload/raw {r['ratio']:.3f}\n    {z}aes-gcm {r['aes']:7.0f}  sha256 {r['sha']:7.0f}"
            f"  -> chained limit {r['limit']:7.0f}\n    seal {r['seal']:7.0f}  = {r['seal_ratio']:.3f} x limit"
            f"   | open {r['open']:7.0f} vs limit {r['open_limit']:7.0f} = {r['open_ratio']:.3f}"
        )
    thr, proc = scaling("incompressible (random, as video)", 24)
    thr_c, proc_c = scaling("compressible (log-like text)", 12)
    print(
        f"- two worker threads vs one: {thr:.2f}x incompressible, {thr_c:.2f}x compressible "
        f"(two processes, the machine's limit: {proc:.2f}x / {proc_c:.2f}x)"
    )
    c, i = results["compressible (log-like text)"], results["incompressible (random, as video)"]
    targets = [
        ("seal >= 0.85 x chained limit, compressible", c["seal_ratio"], 0.85),
        ("seal >= 0.90 x AES+SHA chain, incompressible", i["seal_ratio"], 0.90),
        ("two threads >= 1.7 x one (incompressible)", thr, 1.7),
        ("two threads >= 1.7 x one (compressible)", thr_c, 1.7),
    ]
    for label, value, target in targets:
        print(f"  {'MET ' if value >= target else 'MISS'} {label}: {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
