"""The standalone evidence verifier (lucid_assets/evidence/verify.py) on real bundles of a real
sealed session, run as an auditor would: the copy shipped inside the bundle, in a clean virtualenv
that has only `cryptography`. Tampering is done by rewriting the tar (members kept in order); each
kind must be named by the verifier. The bundle's production is tested in test_evidence_bundle.py."""

import ast
import base64
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lucid_assets.core import audit
from lucid_assets.core.manifest import canonical_json, sign
from tests.helpers import record

VERIFY_PY = Path(__file__).resolve().parent.parent / "lucid_assets" / "evidence" / "verify.py"
CRYPTOGRAPHY = "cryptography==50.0.2"


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A virtualenv of the system's python3 with `cryptography` and nothing of Lucid."""
    d = tmp_path_factory.mktemp("auditor") / "venv"
    python3 = shutil.which("python3") or sys.executable
    subprocess.run([python3, "-m", "venv", str(d)], check=True, capture_output=True)
    pip = [str(d / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:", CRYPTOGRAPHY]
    done = subprocess.run(pip, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return d / "bin" / "python"


@pytest.fixture(scope="module")
def sealed(admin):
    return record(admin, seconds=6, name="evidence verifier", width=320, height=240, fps=10, chunk_seconds=2)


@pytest.fixture(scope="module")
def bundle(admin, sealed, tmp_path_factory) -> Path:
    """The whole session's bundle, downloaded through the gateway as an admin would."""
    r = admin.get(f"/v1/sessions/{sealed['id']}/evidence")
    assert r.status_code == 200, r.text
    path = tmp_path_factory.mktemp("evidence") / "bundle.tar"
    path.write_bytes(r.content)
    return path


@pytest.fixture(scope="module")
def verifier(bundle, tmp_path_factory) -> Path:
    """verify.py as shipped in the bundle, out of reach of the repository (no `lucid_assets` beside it)."""
    out = tmp_path_factory.mktemp("shipped") / "verify.py"
    out.write_bytes(files(bundle)["verify.py"])
    return out


@pytest.fixture(scope="module")
def platform_fingerprint(admin) -> str:
    raw = base64.b64decode(admin.get("/v1/keys/signing").json()["public_key"])
    return hashlib.sha256(raw).hexdigest()


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def files(path: Path) -> dict[str, bytes]:
    """The bundle's files by their name below its top directory."""
    return {m.name.split("/", 1)[1]: data for m, data in members(path)}


def rewrite(src: Path, dst: Path, change: dict, add: dict | None = None) -> Path:
    """A copy of the bundle with members changed ({name: new bytes, or None to drop}), in order,
    and `add`ed members at the end."""
    top = members(src)[0][0].name.split("/", 1)[0]
    with tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members(src):
            name = info.name.split("/", 1)[1]
            if name in change:
                if change[name] is None:
                    continue
                data = change[name]
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dst


def run(python: Path, verifier: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    # cwd: a directory with no Lucid in it, as on an auditor's machine
    return subprocess.run(
        [str(python), str(verifier), str(bundle), *args], capture_output=True, text=True, cwd=bundle.parent
    )


def boxes(data: bytes, at: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """Top-level MP4 boxes: (kind, offset, size)."""
    out, end = [], len(data) if end is None else end
    while at < end:
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        out.append((kind, at, size))
        at += size
    return out


def test_the_verifier_needs_only_the_standard_library_and_cryptography():
    tree = ast.parse(VERIFY_PY.read_text(), feature_version=(3, 9))  # also: Python 3.9 syntax
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            assert n.level == 0, "a relative import"
            found.add(n.module.split(".")[0])
    assert "cryptography" in found and "lucid_assets" not in found
    assert found - {"cryptography"} <= sys.stdlib_module_names, found - sys.stdlib_module_names


def test_a_real_bundle_verifies_in_a_clean_virtualenv(clean_python, verifier, bundle, sealed, platform_fingerprint):
    nothing_of_lucid = subprocess.run(
        [str(clean_python), "-c", "import lucid_assets"], capture_output=True, text=True, cwd=bundle.parent
    )
    assert nothing_of_lucid.returncode != 0 and "No module named 'lucid_assets'" in nothing_of_lucid.stderr

    done = run(clean_python, verifier, bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"session      {sealed['id']}" in out
    assert f"whole session: chunks 0..{sealed['chunk_count'] - 1}" in out
    assert f"fingerprint  {platform_fingerprint}" in out and "NOT pinned" in out
    for check in ("bundle", "key", "manifest", "merkle", "proofs", "checkpoints", "audit", "chunks", "mp4"):
        assert f"OK       {check} " in out, out
    assert out.rstrip().endswith("VERIFIED: every check passed")

    shown = run(clean_python, verifier, bundle, "--key-fingerprint", platform_fingerprint)
    assert f"fingerprint  {platform_fingerprint}  (matches --key-fingerprint)" in shown.stdout
    pinned = run(clean_python, verifier, bundle, "--key-fingerprint", platform_fingerprint.upper(), "--json")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    report = json.loads(pinned.stdout)
    assert report["verdict"] == "VERIFIED" and report["problems"] == []
    assert report["key"] == {"key_id": platform_fingerprint[:16], "fingerprint": platform_fingerprint, "pinned": True}
    assert report["scope"]["partial"] is False and report["session_id"] == sealed["id"]
    assert all(c["ok"] and not c["skipped"] for c in report["checks"])


def test_two_downloads_are_byte_identical(admin, sealed, bundle):
    again = admin.get(f"/v1/sessions/{sealed['id']}/evidence")
    assert again.status_code == 200
    assert hashlib.sha256(again.content).hexdigest() == hashlib.sha256(bundle.read_bytes()).hexdigest()


def test_a_partial_bundle_verifies_and_says_partial(platform, sealed, clean_python, verifier, tmp_path):
    assert sealed["chunk_count"] >= 4
    with httpx.Client(base_url=platform.url("storage"), timeout=120, headers=platform.service_headers("api")) as st:
        r = st.get(f"/sessions/{sealed['id']}/evidence", params={"first": 1, "last": 2})
    assert r.status_code == 200, r.text
    part = tmp_path / "part.tar"
    part.write_bytes(r.content)
    done = run(clean_python, verifier, part)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"partial: chunks 1..2 of {sealed['chunk_count']}" in done.stdout
    assert "OK       mp4 " in done.stdout

    # a chunk of the session that the scope does not include is an extra file, not silently accepted
    whole = rewrite(part, tmp_path / "extra.tar", {}, add={"chunks/00000003.ts": b"\x47" + bytes(187)})
    done = run(clean_python, verifier, whole)
    assert done.returncode == 1
    assert "chunks/00000003.ts is extra: not a chunk of the bundle's scope 1..2" in done.stdout


def _tamper_cases(f: dict[str, bytes]) -> dict:
    """name -> (members changed, phrases the report must contain)."""
    mp4 = f["recording.mp4"]
    top = boxes(mp4)
    mdats = [(at, size) for kind, at, size in top if kind == b"mdat"]
    data_byte = mdats[1][0] + 8 + 20  # inside fragment 2's first sample (chunk 1)
    moov = next((at, size) for kind, at, size in top if kind == b"moov")
    tkhd = mp4.index(b"tkhd", moov[0])
    width_byte = tkhd + 4 + 76  # the width field's integer part (fixed-point 16.16)
    rows = f["audit.jsonl"].decode().splitlines()
    edited = json.loads(rows[1])
    edited["entry"]["actor"] = "key:someone-else"
    flip = lambda data, at: data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    audit_text = lambda rs: ("\n".join(rs) + "\n").encode()
    return {
        "chunk dropped": ({"chunks/00000001.ts": None}, ["chunk 1 is missing", "whole session"]),
        "chunks swapped": (
            {"chunks/00000001.ts": f["chunks/00000002.ts"], "chunks/00000002.ts": f["chunks/00000001.ts"]},
            ["chunk file 1 holds chunk 2 (swapped or moved)", "chunk file 2 holds chunk 1 (swapped or moved)"],
        ),
        "mp4 sample data": (
            {"recording.mp4": flip(mp4, data_byte)},
            ["recording.mp4 fragment for chunk 1 differs from the chunk (sample 0 data)"],
        ),
        "mp4 header": (
            {"recording.mp4": flip(mp4, width_byte)},
            ["recording.mp4 header differs", "moov/trak/tkhd"],
        ),
        "mp4 extra bytes": ({"recording.mp4": mp4 + b"\x00" * 10}, ["recording.mp4 has 10 extra bytes"]),
        "mp4 cut short": ({"recording.mp4": mp4[:-100]}, ["recording.mp4 is shorter than the chunks make it"]),
        "audit entry edited": (
            {"audit.jsonl": audit_text([rows[0], json.dumps(edited), *rows[2:]])},
            ["audit entry 1 was altered"],
        ),
        "audit entry removed": (
            {"audit.jsonl": audit_text([rows[0], *rows[2:]])},
            ["audit entry 1 does not follow entry 0 (entries removed or reordered)", "the manifest signs"],
        ),
        "audit entries reordered": (
            {"audit.jsonl": audit_text([rows[0], rows[2], rows[1], *rows[3:]])},
            ["audit line 2 holds entry 2 (entries removed or reordered)", "audit entry 1 does not follow entry 0"],
        ),
        "key swapped": (
            {
                "signing-key.pem": Ed25519PrivateKey.generate()
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            },
            ["key replaced: the manifest names key "],
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "chunk dropped",
        "chunks swapped",
        "mp4 sample data",
        "mp4 header",
        "mp4 extra bytes",
        "mp4 cut short",
        "audit entry edited",
        "audit entry removed",
        "audit entries reordered",
        "key swapped",
    ],
)
def test_tampering_is_named(case, bundle, clean_python, verifier, tmp_path):
    change, phrases = _tamper_cases(files(bundle))[case]
    bad = rewrite(bundle, tmp_path / "bad.tar", change)
    done = run(clean_python, verifier, bad)
    assert done.returncode == 1, done.stdout + done.stderr
    for phrase in phrases:
        assert phrase in done.stdout, done.stdout
    assert "FAILED: " in done.stdout.splitlines()[-1]


def test_a_re_signed_bundle_is_caught_only_by_the_pinned_fingerprint(
    bundle, clean_python, verifier, platform_fingerprint, tmp_path
):
    """A forger with their own key re-signs everything consistently: the bundle verifies against
    the key it carries, and only the fingerprint (printed in full, and pinned) tells it apart."""
    f = files(bundle)
    forged_key = Ed25519PrivateKey.generate()
    public = forged_key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    forged_fp = hashlib.sha256(raw).hexdigest()
    change = {
        "signing-key.pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "manifest.json": canonical_json(sign(json.loads(f["manifest.json"])["body"], forged_key)),
    }
    for name in f:
        if name.startswith(("checkpoints/", "manifests/")):
            change[name] = canonical_json(sign(json.loads(f[name])["body"], forged_key))
    table = json.loads(f["bundle.json"])
    table["key_id"], table["key_fingerprint"] = forged_fp[:16], forged_fp
    change["bundle.json"] = canonical_json(table)
    forged = rewrite(bundle, tmp_path / "forged.tar", change)

    unpinned = run(clean_python, verifier, forged)
    assert unpinned.returncode == 0, unpinned.stdout
    assert f"fingerprint  {forged_fp}  (NOT pinned" in unpinned.stdout
    assert forged_fp != platform_fingerprint

    pinned = run(clean_python, verifier, forged, "--key-fingerprint", platform_fingerprint)
    assert pinned.returncode == 1
    assert f"fingerprint  {forged_fp}  (does NOT match --key-fingerprint)" in pinned.stdout
    assert f"the bundle's key (fingerprint {forged_fp}) is not the key you gave with --key-fingerprint" in pinned.stdout


def test_a_wrong_fingerprint_fails_an_untouched_bundle(bundle, clean_python, verifier, platform_fingerprint):
    other = hashlib.sha256(b"another key").hexdigest()
    done = run(clean_python, verifier, bundle, "--key-fingerprint", other)
    assert done.returncode == 1
    assert f"is not the key you gave with --key-fingerprint ({other})" in done.stdout
    assert f"fingerprint  {platform_fingerprint}" in done.stdout
    assert run(clean_python, verifier, bundle, "--key-fingerprint", "abc123").returncode == 2


def test_an_audit_chain_rebuilt_after_an_edit_still_fails_at_the_signed_head(bundle, clean_python, verifier, tmp_path):
    """Editing an entry and recomputing every hash after it makes a consistent chain, but not the
    one whose head the manifest signs."""
    rows = [json.loads(x) for x in files(bundle)["audit.jsonl"].decode().splitlines()]
    rows[0]["entry"]["actor"] = "key:someone-else"
    prev = audit.GENESIS
    for row in rows:
        row["prev_hash"], row["hash"] = prev, audit.entry_hash(prev, row["entry"])
        prev = row["hash"]
    text = b"".join(canonical_json(r) + b"\n" for r in rows)
    done = run(clean_python, verifier, rewrite(bundle, tmp_path / "rechained.tar", {"audit.jsonl": text}))
    assert done.returncode == 1
    assert "the last audit entry's hash is not the head" in done.stdout


def test_unusable_input_exits_2(clean_python, verifier, bundle, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 100)
    done = run(clean_python, verifier, junk)
    assert done.returncode == 2 and "not a readable tar file" in done.stderr
    headless = rewrite(bundle, tmp_path / "headless.tar", {"manifest.json": None})
    done = run(clean_python, verifier, headless, "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout) == {
        "format": "lucid-verify/1",
        "verdict": "UNUSABLE",
        "error": "manifest.json is missing",
    }


def _forge(f: dict[str, bytes], key: Ed25519PrivateKey, body: dict, checkpoints: dict[str, dict], older: dict) -> tuple:
    """Members of a bundle re-signed with `key`: the manifest `body`, these checkpoint bodies (by
    file name) instead of the bundle's, these earlier manifest bodies ({version: body})."""
    pub = key.public_key()
    fp = hashlib.sha256(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()
    table = json.loads(f["bundle.json"])
    table["key_id"], table["key_fingerprint"] = fp[:16], fp
    change = {name: None for name in f if name.startswith(("checkpoints/", "manifests/"))}
    change |= {
        "bundle.json": canonical_json(table),
        "signing-key.pem": pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "manifest.json": canonical_json(sign(body, key)),
    }
    add = {f"checkpoints/{name}": canonical_json(sign(b, key)) for name, b in checkpoints.items()}
    add |= {f"manifests/v{v}.json": canonical_json(sign(b, key)) for v, b in older.items()}
    return change, add, fp


def test_checkpoint_chains_and_manifest_versions(bundle, clean_python, verifier, tmp_path):
    """A chain of three checkpoints (1, 3 and 4 chunks) and a second manifest version, signed with a
    key of the test's own (pinned), then each link broken in turn."""
    from lucid_assets.core import checkpoint

    f = files(bundle)
    body = json.loads(f["manifest.json"])["body"]
    sid, leaves = body["session"]["id"], [bytes.fromhex(c["envelope_sha256"]) for c in body["chunks"]]
    assert len(leaves) >= 4
    key = Ed25519PrivateKey.generate()
    cp1 = checkpoint.build(sid, leaves[:1], "2026-01-01T00:00:01+00:00", None)
    cp3 = checkpoint.build(sid, leaves[:3], "2026-01-01T00:00:03+00:00", cp1)
    cp4 = checkpoint.build(sid, leaves[:4], "2026-01-01T00:00:04+00:00", cp3)
    top = cp4 if len(leaves) == 4 else checkpoint.build(sid, leaves, "2026-01-01T00:00:05+00:00", cp4)
    chain = {checkpoint.file_name(c["tree_size"]): c for c in (cp1, cp3, cp4, top)}
    v2 = {**body, "version": 2, "checkpoint": checkpoint.link(top, leaves)}
    v1 = {**body, "version": 1, "checkpoint": None}

    def verify(name: str, body: dict, cps: dict, older: dict) -> subprocess.CompletedProcess:
        change, add, fp = _forge(f, key, body, cps, older)
        return run(
            clean_python, verifier, rewrite(bundle, tmp_path / f"{name}.tar", change, add), "--key-fingerprint", fp
        )

    done = verify("good", v2, chain, {1: v1})
    assert done.returncode == 0, done.stdout
    assert f"{len(chain)} checkpoints chained from the manifest back to the first" in done.stdout
    assert "versions 1..1 present and signed" in done.stdout

    done = verify("no-v1", v2, chain, {})
    assert done.returncode == 1 and "manifest version 1 is missing" in done.stdout

    done = verify("v1-as-v2", v2, chain, {1: {**v1, "version": 2}})
    assert done.returncode == 1 and "manifests/v1.json is not version 1 of this session's manifest" in done.stdout

    done = verify("gap", v2, {k: v for k, v in chain.items() if v is not cp3}, {1: v1})
    assert done.returncode == 1 and "checkpoint 3, which checkpoint 4 links, is missing" in done.stdout

    bad3 = {**cp3, "previous": {**cp3["previous"], "consistency": [bytes(32).hex()]}}
    done = verify("bad-proof", v2, {**chain, checkpoint.file_name(3): bad3}, {1: v1})
    assert done.returncode == 1 and "checkpoint 3's consistency proof from checkpoint 1 does not verify" in done.stdout

    stray = checkpoint.build(sid, leaves[:2], "2026-01-01T00:00:02+00:00", cp1)
    done = verify("stray", v2, {**chain, checkpoint.file_name(2): stray}, {1: v1})
    assert (
        done.returncode == 1 and "checkpoints/00000002.json is not part of the chain the manifest signs" in done.stdout
    )

    rewritten = [leaves[0], hashlib.sha256(b"another chunk").digest(), *leaves[2:]]
    other1 = checkpoint.build(sid, rewritten[:1], "2026-01-01T00:00:01+00:00", None)
    other3 = checkpoint.build(sid, rewritten[:3], "2026-01-01T00:00:03+00:00", other1)
    forked = {**chain, checkpoint.file_name(3): other3}
    done = verify("fork", v2, forked, {1: v1})
    assert done.returncode == 1 and "checkpoint 3 is not the one checkpoint 4 links (its root differs)" in done.stdout


def test_a_share_windows_bundle_verifies_as_partial(platform, admin, sealed, clean_python, verifier, tmp_path):
    """The flow of an outside recipient: a share link with a window that may download, its media
    link to the evidence, no API key; the bundle proves the window's chunks only, and says so."""
    sid = sealed["id"]
    made = admin.post(
        f"/v1/sessions/{sid}/shares", json={"window": {"from_ms": 2500, "to_ms": 4500}, "may_download": True}
    )
    assert made.status_code == 201, made.text
    with httpx.Client(base_url=platform.url("api"), timeout=60) as anyone:
        links = anyone.post("/v1/share/links", headers={"Authorization": f"Bearer {made.json()['token']}"})
        assert links.status_code == 200, links.text
        r = anyone.get(links.json()["evidence"])
    assert r.status_code == 200, r.text
    path = tmp_path / "shared.tar"
    path.write_bytes(r.content)
    done = run(clean_python, verifier, path, "--json")
    assert done.returncode == 0, done.stdout
    scope = json.loads(done.stdout)["scope"]
    assert (scope["partial"], scope["first_seq"], scope["last_seq"], scope["window_ms"]) == (True, 1, 2, [2500, 4500])
    shown = f"partial: chunks 1..2 of {sealed['chunk_count']} (a share window, ms 2500..4500 of the recording)"
    assert shown in run(clean_python, verifier, path).stdout


def test_any_damaged_signed_member_is_a_problem_never_a_crash(bundle, tmp_path, capsys):
    """One bit flipped at spread-out places of every signed or checked document: each is reported
    (exit 1, or 2 for a manifest that no longer parses), and nothing ends in a traceback."""
    verify = _load_verify()
    f = files(bundle)
    checked = [n for n in f if n.endswith((".json", ".jsonl", ".pem"))]
    assert {"manifest.json", "audit.jsonl", "signing-key.pem", "bundle.json", "proofs/00000000.json"} <= set(checked)
    runs = 0
    for name in checked:
        data = f[name]
        for at in range(0, len(data), max(1, len(data) // 9)):
            bad = rewrite(
                bundle, tmp_path / "flipped.tar", {name: data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]}
            )
            code = verify.main([str(bad), "--json"])
            out = capsys.readouterr()
            assert "Traceback" not in out.err, (name, at, out.err)
            assert code in (1, 2), (name, at, out.out)
            runs += 1
    assert runs >= 9 * len(checked)


def _load_verify():
    spec = importlib.util.spec_from_file_location("verify_under_test", VERIFY_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bframe_chunk(path: Path, size: tuple[int, int]) -> bytes:
    """One MPEG-TS chunk of libx264 with B-frames (presentation order differs from decode order),
    which the recorder's zero-latency encoder never makes."""
    import av

    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        st.options = {"preset": "veryfast", "bframes": "2", "g": "30"}
        src = av.open(f"testsrc2=size={size[0]}x{size[1]}:rate=10", format="lavfi")
        for i, frame in enumerate(src.decode(video=0)):
            if i == 25:
                break
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
        src.close()
    return path.read_bytes()


@pytest.mark.parametrize("size", [(176, 144), (642, 362), (1920, 1080), "bframes"])
def test_the_mp4_it_derives_is_the_platforms_own(size, tmp_path):
    """The verifier's pure-Python MP4 (TS demux, SPS picture size with cropping, fragments) is the
    one the platform builds with PyAV and NumPy (playback.chunk_plan, build_fragment, fmp4.Layout),
    byte for byte, for picture sizes that need cropping and for a stream with B-frames."""
    from lucid_assets import playback
    from lucid_assets.core import fmp4
    from tests.helpers import record_segments

    if size == "bframes":
        chunks = [_bframe_chunk(tmp_path / "b.ts", (320, 240))]
    else:
        segs = record_segments(tmp_path / "segs", fps=5, seconds=3, chunk_seconds=1, size=size, pattern="testsrc2")
        chunks = [Path(s.path).read_bytes() for s in segs]
    plans = [playback.chunk_plan(c, b"\x00" * 16) for c in chunks]
    first = plans[0]
    layout = fmp4.Layout.build([p.index for p in plans], first.sps, first.pps, first.width, first.height)
    mp4 = tmp_path / "recording.mp4"
    with mp4.open("wb") as f:
        f.write(layout.header(first.sps, first.pps, first.width, first.height))
        for i, (p, c) in enumerate(zip(plans, chunks)):
            f.write(playback.build_fragment(p, c, i + 1, p.index.dts0 - layout.t0, layout.next_dts(i)))
    if size == "bframes":
        assert (first.samples.pts != first.samples.dts).any()

    verify = _load_verify()
    derived = [verify.Chunk(c) for c in chunks]
    assert verify.sps_size(derived[0].sps) == (first.width, first.height)
    with mp4.open("rb") as f:
        comparison = verify.Mp4Comparison(f, mp4.stat().st_size, len(chunks))
        for seq, d in enumerate(derived):
            comparison.add(seq, d)
        comparison.finish()
    assert comparison.problem() is None
    assert comparison.offset == mp4.stat().st_size

    # and the comparison does see a change in the time of one sample
    data = bytearray(mp4.read_bytes())
    at = layout.offsets()[-1] + 88 + 16 * 1 + 12  # the last fragment, sample 1's composition offset
    data[at + 3] ^= 0x01
    mp4.write_bytes(bytes(data))
    with mp4.open("rb") as f:
        comparison = verify.Mp4Comparison(f, len(data), len(chunks))
        for seq, d in enumerate(derived):
            comparison.add(seq, d)
        comparison.finish()
    assert (
        comparison.problem()
        == f"recording.mp4 fragment for chunk {len(chunks) - 1} differs from the chunk (sample 1 time)"
    )
