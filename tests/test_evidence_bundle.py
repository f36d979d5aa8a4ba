"""The evidence bundle as the storage service produces it (docs/FORMAT.md §10): a deterministic tar
whose members are what the platform signed and served. The standalone verifier's own tests, and
tampering, are in test_evidence.py."""

import hashlib
import io
import json
import os
import tarfile
from datetime import datetime

import httpx
import pytest

from lucid_assets.core import merkle
from lucid_assets.core.manifest import canonical_json
from tests.helpers import create, record


@pytest.fixture(scope="module")
def sealed(admin):
    return record(admin, seconds=7, name="evidence", width=320, height=240, fps=10, chunk_seconds=2)


@pytest.fixture(scope="module")
def storage(platform):
    with httpx.Client(base_url=platform.url("storage"), timeout=120, headers=platform.service_headers("api")) as c:
        yield c


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_bundle_is_deterministic_and_holds_what_was_signed(storage, admin, sealed):
    sid = sealed["id"]
    r = storage.get(f"/sessions/{sid}/evidence")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content) and len(r.content) % 10240 == 0
    assert f'filename="lucid-evidence-{sid}.tar"' in r.headers["content-disposition"]
    again = storage.get(f"/sessions/{sid}/evidence").content
    assert hashlib.sha256(again).digest() == hashlib.sha256(r.content).digest()  # byte for byte

    members = _members(r.content)
    top = f"lucid-evidence-{sid}/"
    names = [m.name.removeprefix(top) for m, _ in members]
    files = {m.name.removeprefix(top): data for m, data in members}
    manifest = json.loads(files["manifest.json"])
    body = manifest["body"]
    n = body["chunk_count"]
    assert n >= 3
    sealed_at = int(datetime.fromisoformat(body["sealed_at"]).timestamp())
    for m, _ in members:  # nothing that varies between machines or runs
        assert m.name.startswith(top) and m.isfile()
        assert (m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) == (0o644, 0, 0, "", "", sealed_at)
    assert names[:5] == ["VERIFY.md", "verify.py", "bundle.json", "signing-key.pem", "manifest.json"]
    assert names[-1] == "recording.mp4"
    assert [x for x in names if x.startswith("chunks/")] == [f"chunks/{q:08d}.ts" for q in range(n)]

    table = json.loads(files["bundle.json"])
    key = admin.get("/v1/keys/signing").json()
    assert table["format"] == "lucid-evidence/1" and table["session_id"] == sid
    assert table["scope"] == {"first_seq": 0, "last_seq": n - 1, "chunk_count": n, "window_ms": None}
    assert table["key_id"] == key["key_id"] == manifest["signature"]["key_id"]
    assert manifest == admin.get(f"/v1/sessions/{sid}/manifest").json()
    assert files["manifest.json"] == canonical_json(manifest)  # as stored: canonical JSON

    # the chunks are the original recording and the MP4 is the export, byte for byte
    ts = b"".join(files[f"chunks/{q:08d}.ts"] for q in range(n))
    assert ts == admin.get(f"/v1/sessions/{sid}/recording.ts").content
    assert files["recording.mp4"] == admin.get(f"/v1/sessions/{sid}/recording.mp4").content
    assert table["mp4_size"] == len(files["recording.mp4"])
    for c in body["chunks"]:
        assert hashlib.sha256(files[f"chunks/{c['seq']:08d}.ts"]).hexdigest() == c["raw_sha256"]

    # the proofs fold to the signed root
    leaves = [bytes.fromhex(c["envelope_sha256"]) for c in body["chunks"]]
    for q in range(n):
        proof = json.loads(files[f"proofs/{q:08d}.json"])
        assert proof["root"] == body["merkle"]["root"] and proof["tree_size"] == n
        path = [bytes.fromhex(h) for h in proof["path"]]
        assert merkle.verify_inclusion(leaves[q], q, n, path, bytes.fromhex(body["merkle"]["root"]))

    # the audit log: exactly the entries the manifest signs, as the API serves them
    events = admin.get(f"/v1/sessions/{sid}/events").json()["items"]
    lines = files["audit.jsonl"].splitlines()
    assert len(lines) == body["audit"]["entries"] < len(events)  # the seal came after the signature
    assert [json.loads(x) for x in lines] == events[: len(lines)]
    assert json.loads(lines[-1])["hash"] == body["audit"]["head"]
    assert all(x == canonical_json(json.loads(x)) for x in lines)
    assert any(x.startswith("checkpoints/") for x in names)


def test_partial_bundle_and_scoped_exports(storage, admin, sealed):
    sid = sealed["id"]
    r = storage.get(f"/sessions/{sid}/evidence", params={"first": 1, "last": 2, "from_ms": 2500, "to_ms": 5000})
    assert r.status_code == 200, r.text
    assert f'filename="lucid-evidence-{sid}-1-2.tar"' in r.headers["content-disposition"]
    files = {m.name.split("/", 1)[1]: data for m, data in _members(r.content)}
    assert sorted(x for x in files if x.startswith(("chunks/", "proofs/"))) == [
        "chunks/00000001.ts",
        "chunks/00000002.ts",
        "proofs/00000001.json",
        "proofs/00000002.json",
    ]
    scope = json.loads(files["bundle.json"])["scope"]
    assert scope["first_seq"] == 1 and scope["last_seq"] == 2 and scope["window_ms"] == [2500, 5000]
    mp4 = storage.get(f"/sessions/{sid}/recording.mp4", params={"first": 1, "last": 2})
    assert mp4.status_code == 200 and files["recording.mp4"] == mp4.content
    assert len(mp4.content) < len(admin.get(f"/v1/sessions/{sid}/recording.mp4").content)
    ts = storage.get(f"/sessions/{sid}/recording.ts", params={"first": 1, "last": 2})
    assert ts.content == files["chunks/00000001.ts"] + files["chunks/00000002.ts"]

    for params in ({"first": 2, "last": 1}, {"first": 0, "last": 999}, {"first": 999}):
        for path in ("evidence", "recording.mp4", "recording.ts"):
            bad = storage.get(f"/sessions/{sid}/{path}", params=params)
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_range", (path, params, bad.text)
    assert storage.get(f"/sessions/{sid}/evidence", params={"first": -1}).status_code == 422


def test_gateway_relays_downloads_whole_and_in_ranges(admin, sealed):
    """The gateway's plain-socket relay (peers.download): status, headers and bytes pass through."""
    sid = sealed["id"]
    whole = admin.get(f"/v1/sessions/{sid}/recording.mp4")
    assert whole.status_code == 200 and int(whole.headers["content-length"]) == len(whole.content)
    head = admin.head(f"/v1/sessions/{sid}/recording.mp4")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == whole.headers["content-length"] and head.headers["etag"]
    part = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": "bytes=100-4195"})
    assert part.status_code == 206 and part.content == whole.content[100:4196]
    assert part.headers["content-range"] == f"bytes 100-4195/{len(whole.content)}"
    bad = admin.get(f"/v1/sessions/{sid}/recording.mp4", headers={"Range": f"bytes={len(whole.content) + 5}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(whole.content)}"
    with admin.stream("GET", f"/v1/sessions/{sid}/evidence") as r:  # a client that leaves early
        assert r.status_code == 200
        next(r.iter_raw(1024))
    assert admin.get(f"/v1/sessions/{sid}/evidence").content == admin.get(f"/v1/sessions/{sid}/evidence").content


def test_only_a_sealed_session_has_evidence(storage, admin):
    sid = create(admin, "not sealed")
    r = storage.get(f"/sessions/{sid}/evidence")
    assert r.status_code == 409 and r.json()["error"] == "not_sealed", r.text
    relayed = admin.get(f"/v1/sessions/{sid}/evidence")  # the peer's JSON error, through the relay
    assert relayed.status_code == 409 and relayed.json()["error"] == "not_sealed", relayed.text
    assert storage.get(f"/sessions/{os.urandom(16).hex()[:8]}-0000-4000-8000-000000000000/evidence").status_code in (
        404,
        422,
    )


def test_merkle_tree_paths_match_rfc6962_paths():
    for n in (1, 2, 3, 5, 8, 13, 64, 100):
        leaves = [hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(n)]
        tree = merkle.Tree(leaves)
        assert tree.root == merkle.root(leaves)
        assert [tree.path(m) for m in range(n)] == [merkle.inclusion_proof(m, leaves) for m in range(n)]
    with pytest.raises(IndexError):
        merkle.Tree([b"x" * 32]).path(1)


def test_cli_downloads_and_checks_a_bundle(platform, admin, sealed, tmp_path, capfd):
    from services import cli

    sid, out = sealed["id"], tmp_path / "bundle.tar"
    common = ["evidence", "--api", platform.url("api"), "--key", "test-admin-key-0123456789abcdef"]
    assert cli.main([*common, sid, "-o", str(out), "--check"]) == 0
    printed = capfd.readouterr().out  # the verifier runs as a child process
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}" in printed and "VERIFIED" in printed
    unsealed = create(admin, "cli not sealed")
    with pytest.raises(SystemExit, match="409"):
        cli.main([*common, unsealed, "-o", str(tmp_path / "none.tar")])
    assert not list(tmp_path.glob("none.tar*"))  # nothing kept of a refused download
