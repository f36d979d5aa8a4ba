"""Verification cannot be fooled, over ANY file of a stored session: random deletions, truncations,
bit flips, substitutions (bytes of another file of this session, of the same file of another
session, random bytes) and reorderings (renames to another valid name, swaps) of the envelopes,
the wrapped data key, every manifest version, every checkpoint and the MP4 plans. Every damage
must be named: status not verified and a failing check (or chunk) for each damaged thing.

What is not verified, and why that is safe (asserted below, not assumed):
- `mp4/<seq>.plan` (MP4 export plans) are derived data: sealed under the session's data key
  bound to (session, seq) and to the GCM tag of the envelope they were made from. A reader uses
  a plan only when it opens and names the current envelope's tag, else it plans the chunk again
  from the verified envelope. Damage to plans leaves verify's report exactly as it was, and the
  plan a reader would accept is either none or the original.
- `checkpoints.superseded-*/` hold the chain a forced reprocess set aside: a record, not claimed
  by the current manifest. Verify ignores it (damage there leaves the report as it was).
"""

import hashlib
import os
import random
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucid_assets import playback
from lucid_assets.core import checkpoint, envelope, merkle
from lucid_assets.core.manifest import build_manifest, canonical_json, sign
from lucid_assets.core.states import State, VerifyStatus
from lucid_assets.keyring import Keyring
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from lucid_assets.verification import verify_stored
from tests.helpers import record_segments
from tests.test_verify_damage import _audit

N = 5
LIVE_CHAIN = (1, 3, N)  # the live checkpoint chain; the superseded one was (2, N)


def _entry(seq: int, raw: bytes, data: bytes) -> dict:
    return {
        "seq": seq,
        "envelope_sha256": hashlib.sha256(data).hexdigest(),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_size": len(raw),
        "stored_size": len(data),
        "duration_ms": 1000,
        "compressed": envelope.parse_header(data).compressed,
    }


def _chain(store: ChunkStore, sid: str, leaves: list[bytes], sizes, keyring: Keyring) -> dict:
    prev = None
    for size in sizes:
        doc = checkpoint.publish(sid, leaves[:size], f"2026-01-01T00:00:{size:02d}+00:00", prev, keyring.signing)
        store.write_checkpoint(sid, size, canonical_json(doc))
        prev = doc["body"]
    return prev


def _manifest(store, sid, version, entries, leaves, last, rows, keyring) -> bytes:
    body = build_manifest(
        session={"id": sid, "name": "property"},
        chunks=entries,
        merkle_root_hex=merkle.root(leaves).hex(),
        sealed_at=f"2026-01-01T00:0{version}:00+00:00",
        version=version,
        checkpoint=checkpoint.link(last, leaves),
        audit={"entries": len(rows), "head": rows[-1]["hash"]},
    )
    data = canonical_json(sign(body, keyring.signing))
    store.write_manifest(sid, version, data)
    return data


def seal_reprocessed(root: Path, keyring: Keyring, segments: list[bytes], seed: int) -> dict:
    """A sealed session as a forced reprocess leaves it: manifest v1 over a first chain (set aside
    as checkpoints.superseded-*), manifest v2 over the live chain LIVE_CHAIN; real MPEG-TS chunks
    with their sealed MP4 plans."""
    store = ChunkStore(root / "chunks")
    sid = str(uuid.UUID(int=seed + 100))
    dek = store.data_key(sid, keyring, create=True)
    entries, leaves = [], []
    for seq, raw in enumerate(segments):
        data = envelope.seal(raw, dek=dek, session_id=uuid.UUID(sid), seq=seq)
        store.write_envelope(sid, seq, data)
        leaves.append(hashlib.sha256(data).digest())
        entries.append(_entry(seq, raw, data))
        playback.write_chunk_plan(store, sid, seq, raw, dek=dek, tag=data[-envelope.TAG_LEN :])
    rows = _audit(sid, ["create", "start", "stop", "finalize"])
    _manifest(store, sid, 1, entries, leaves, _chain(store, sid, leaves, (2, N), keyring), rows, keyring)
    store.supersede_checkpoints(sid, "run0001")
    rows = rows + _audit(sid, ["create", "start", "stop", "finalize", "manifest", "reprocess"])[4:]
    final = _manifest(store, sid, 2, entries, leaves, _chain(store, sid, leaves, LIVE_CHAIN, keyring), rows, keyring)
    rows = rows + _audit(sid, ["create", "start", "stop", "finalize", "manifest", "reprocess", "manifest", "seal"])[6:]
    return {"sid": sid, "rows": rows, "registry_sha": hashlib.sha256(final).hexdigest(), "dek": dek}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("property")
    segs = record_segments(root / "segments", fps=10, seconds=N, chunk_seconds=1, size=(96, 64))
    segments = [s.path.read_bytes() for s in segs]
    assert len(segments) == N
    keyring = Keyring.load(Settings(data_dir=root, generate_keys=True))
    shutil.rmtree(root / "segments")
    target = seal_reprocessed(root, keyring, segments, seed=0)
    other = seal_reprocessed(root, keyring, segments, seed=1)  # the same chunks, another session
    store = ChunkStore(root / "chunks")
    files = sorted(str(p.relative_to(store.session_dir(target["sid"]))) for p in _tree(store, target["sid"]))
    return {"root": root, "target": target, "other": other, "files": files, "keyring": keyring, "store": store}


def _tree(store: ChunkStore, sid: str) -> list[Path]:
    return sorted(p for p in store.session_dir(sid).rglob("*") if p.is_file())


def _verify(root: Path, t: dict) -> dict:
    """The report over the chunk store copied to `root` (the keys stay those of the pristine data dir)."""
    keyring = Keyring.load(Settings(data_dir=root))
    return _verify_store(ChunkStore(root / "chunks"), t, keyring)


def _verify_store(store: ChunkStore, t: dict, keyring: Keyring) -> dict:
    return verify_stored(
        store,
        keyring,
        keyring.signing.public_key(),
        t["sid"],
        audit_rows=t["rows"],
        registry_manifest_sha256=t["registry_sha"],
    ).as_dict()


def test_the_stored_session_verifies_and_holds_every_kind_of_file(stored):
    report = _verify(stored["root"], stored["target"])
    assert report["status"] == "verified", report["problems"]
    kinds = {Path(f).parts[0] if "/" in f else f.split(".")[0] for f in stored["files"]}
    assert kinds == {"chunks", "checkpoints", "checkpoints.superseded-run0001", "mp4", "dek", "manifest"}, kinds
    detail = {c["name"]: c["detail"] for c in report["checks"]}
    assert detail["checkpoints"].startswith(f"{len(LIVE_CHAIN)} checkpoints chained")
    assert detail["manifest_versions"].startswith("manifest versions 1..2")


def _valid_names(rel: str) -> list[str]:
    """Other names a file of this kind could have (a rename to one of them is a reordering)."""
    parent, name = os.path.split(rel)
    if parent in ("chunks", "mp4"):
        ext = ".luce" if parent == "chunks" else ".plan"
        return [os.path.join(parent, f"{i:08d}{ext}") for i in range(N + 2)]
    if parent.startswith("checkpoints"):
        return [os.path.join(parent, checkpoint.file_name(i)) for i in range(1, N + 2)]
    if name.startswith("manifest"):
        return [f"manifest.v{i}.json" for i in range(1, 5)]
    return [rel]


DAMAGE = st.tuples(
    st.sampled_from(["delete", "truncate", "bitflip", "substitute_own", "substitute_other", "random", "rename"]),
    st.integers(0, 1 << 30),  # which file
    st.integers(0, 1 << 30),  # which other file / name / byte / length
    st.integers(0, 7),  # which bit
)


def apply(damage, store: ChunkStore, t: dict, other: Path, files: list[str]) -> None:
    kind, a, b, bit = damage
    d = store.session_dir(t["sid"])
    rel = files[a % len(files)]
    path = d / rel
    data = path.read_bytes()
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(data[: b % len(data)])
    elif kind == "bitflip":
        flipped = bytearray(data)
        flipped[b % len(data)] ^= 1 << bit
        path.write_bytes(bytes(flipped))
    elif kind == "substitute_own":
        path.write_bytes((d / files[b % len(files)]).read_bytes())
    elif kind == "substitute_other":
        path.write_bytes((other / rel).read_bytes())
    elif kind == "random":
        path.write_bytes(random.Random(b).randbytes(len(data)))
    elif kind == "rename":  # to another valid name: a swap when that name is taken
        names = _valid_names(rel)
        target = d / names[b % len(names)]
        if target.exists():
            held = target.read_bytes()
            target.write_bytes(data)
            path.write_bytes(held)
        else:
            path.rename(target)
    else:
        raise AssertionError(kind)


def _snapshot(store: ChunkStore, sid: str) -> dict[str, bytes]:
    d = store.session_dir(sid)
    return {str(p.relative_to(d)): p.read_bytes() for p in _tree(store, sid)}


MANIFEST_CHECKS = {"manifest", "signature", "manifest_format", "manifest_session", "manifest_registry"}


def _must_name(rel: str, report: dict) -> bool:
    """Does the report name damage to this file?"""
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    bad_chunks = {c["seq"] for c in report["chunks"] if not c["ok"]}
    parent, name = os.path.split(rel)
    if parent == "chunks":
        return int(name.split(".")[0]) in bad_chunks or "store_listing" in failed
    if rel == "dek.json":
        return "data_key" in failed
    if name.startswith("manifest.v"):
        version = name.split(".")[1]
        return bool(failed.keys() & MANIFEST_CHECKS) or f"manifest.{version}" in failed.get("manifest_versions", "")
    if parent == "checkpoints":
        size = int(name.split(".")[0])
        detail = failed.get("checkpoints", "")
        return name in detail or f"checkpoint {size}" in detail
    raise AssertionError(f"{rel} is not a verified file")


def _harmless(rel: str) -> bool:
    return rel.startswith(("mp4/", "checkpoints.superseded-"))


def _plans_safe(store: ChunkStore, t: dict, changed: set[str]) -> None:
    """A changed plan is either refused by the reader (it plans the chunk again) or the original."""
    for rel in changed:
        if not rel.startswith("mp4/"):
            continue
        seq = int(Path(rel).stem)
        if seq >= N:
            continue  # a plan for no chunk: nothing asks for it
        data = store.read_envelope(t["sid"], seq)
        plan = playback.read_chunk_plan(store, t["sid"], seq, dek=t["dek"])
        if plan is not None and plan.tag == data[-envelope.TAG_LEN :]:
            assert (
                plan.to_bytes()
                == playback.chunk_plan(
                    envelope.open_envelope(data, dek=t["dek"], session_id=uuid.UUID(t["sid"]), seq=seq)[1], plan.tag
                ).to_bytes()
            ), rel


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_any_damage_to_any_file_is_named(stored, damage):
    t, pristine, keyring = stored["target"], stored["store"], stored["keyring"]
    with tempfile.TemporaryDirectory() as tmp:
        store = ChunkStore(Path(tmp))  # a copy of the one session
        shutil.copytree(pristine.session_dir(t["sid"]), store.session_dir(t["sid"]))
        before = _snapshot(store, t["sid"])
        apply(damage, store, t, pristine.session_dir(stored["other"]["sid"]), stored["files"])
        after = _snapshot(store, t["sid"])
        changed = {rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)}
        report = _verify_store(store, t, keyring)
        harmful = sorted(rel for rel in changed if not _harmless(rel))
        if not harmful:  # nothing verify guarantees was touched: the report is exactly the undamaged one
            assert report == _verify_store(pristine, t, keyring), (damage, changed)
            _plans_safe(store, t, changed)
            return
        assert report["status"] == "failed", (damage, harmful, report)
        unnamed = [rel for rel in harmful if not _must_name(rel, report)]
        assert not unnamed, (damage, unnamed, report["problems"])


def test_every_checkpoint_removed_is_named(stored, tmp_path):
    """The blind spot of issue #14: with no checkpoint left the manifest's link names a missing one."""
    root = tmp_path / "copy"
    shutil.copytree(stored["root"], root)
    t = stored["target"]
    shutil.rmtree(ChunkStore(root / "chunks").session_dir(t["sid"]) / "checkpoints")
    report = _verify(root, t)
    assert report["status"] == "failed"
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "checkpoints")
    assert f"checkpoint {N}, which the manifest links, is missing" in detail


def test_a_checkpoint_outside_the_signed_chain_is_named(stored, tmp_path):
    """A correctly signed checkpoint of this session that the manifest's chain does not reach (from
    the superseded chain, put back) is named, not counted."""
    root = tmp_path / "copy"
    shutil.copytree(stored["root"], root)
    t = stored["target"]
    d = ChunkStore(root / "chunks").session_dir(t["sid"])
    shutil.copyfile(d / "checkpoints.superseded-run0001" / "00000002.json", d / "checkpoints" / "00000002.json")
    report = _verify(root, t)
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "checkpoints")
    assert report["status"] == "failed" and "00000002.json is not part of the chain" in detail, detail


def test_pending_sessions_are_pending_never_failed(stored):
    keyring = Keyring.load(Settings(data_dir=stored["root"]))
    store, t = ChunkStore(stored["root"] / "chunks"), stored["target"]
    for state in (State.CREATED, State.RECORDING, State.PAUSED, State.FINALIZING, State.PROCESSING, State.FAILED):
        report = verify_stored(store, keyring, keyring.signing.public_key(), t["sid"], audit_rows=[], state=state)
        d = report.as_dict()
        assert d["status"] == VerifyStatus.PENDING and not d["ok"] and d["problems"] == [], d
        assert state in d["checks"][0]["detail"] and "not sealed" in d["checks"][0]["detail"]
    sealed = verify_stored(
        store, keyring, keyring.signing.public_key(), t["sid"], audit_rows=t["rows"], state=State.SEALED
    ).as_dict()
    assert sealed["status"] == "verified", sealed["problems"]


def test_stale_session_data_is_not_mistaken(stored, tmp_path):
    """Copying one session's whole (valid, signed) store over another's is named too."""
    root = tmp_path / "copy"
    shutil.copytree(stored["root"], root)
    store, t, o = ChunkStore(root / "chunks"), stored["target"], stored["other"]
    shutil.rmtree(store.session_dir(t["sid"]))
    shutil.copytree(store.session_dir(o["sid"]), store.session_dir(t["sid"]))
    report = _verify(root, t)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert report["status"] == VerifyStatus.FAILED and "manifest_session" in failed, report["problems"]
