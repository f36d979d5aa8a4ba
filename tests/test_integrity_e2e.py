"""Proofs, key rotation and crypto-shredding on the running platform."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lucid_assets.core import catalog
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from tests.conftest import client_for
from tests.helpers import record

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sealed(admin):
    return record(admin, name="integrity")


def test_inclusion_proofs_check_with_the_independent_checker(admin, sealed, tmp_path):
    sid = sealed["id"]
    key = tmp_path / "key.json"
    key.write_text(admin.get("/v1/keys/signing").text)
    for seq in range(sealed["chunk_count"]):
        proof = admin.get(f"/v1/sessions/{sid}/chunks/{seq}/proof").json()
        assert proof["root"] == sealed["merkle_root"] and proof["anchor"] == "manifest"
        (tmp_path / "proof.json").write_text(json.dumps(proof))
        env = tmp_path / "env.luce"
        env.write_bytes(admin.get(f"/v1/sessions/{sid}/chunks/{seq}/envelope").content)
        ok = subprocess.run(
            [sys.executable, REPO / "scripts/check_proof.py", tmp_path / "proof.json", key, env],
            capture_output=True,
            text=True,
        )
        assert ok.returncode == 0, ok.stderr
        env.write_bytes(b"\x00" + env.read_bytes()[1:])  # any other envelope fails
        bad = subprocess.run(
            [sys.executable, REPO / "scripts/check_proof.py", tmp_path / "proof.json", key, env],
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0 and "does not hash" in bad.stderr
    proof["proof"][0] = "00" * 32
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    forged = subprocess.run(
        [sys.executable, REPO / "scripts/check_proof.py", tmp_path / "proof.json", key], capture_output=True, text=True
    )
    assert forged.returncode != 0
    assert admin.get(f"/v1/sessions/{sid}/chunks/999/proof").status_code == 404


def test_key_rotation_keeps_every_session_readable(platform, admin, sealed):
    data = Path(platform.data_dir)
    old_master = (data / "keys" / "master.key").read_text()
    env = {**os.environ, "LUCID_DATA_DIR": str(data)}
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", "rotate"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert "rewrapped" in out.stdout and old_master.strip() not in out.stdout + out.stderr
    assert (data / "keys" / "master.key").read_text() != old_master
    assert oct((data / "keys" / "master.key").stat().st_mode & 0o777) == "0o600"
    pruned = subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", "prune"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert pruned.returncode == 0 and "deleted retired key" in pruned.stdout, pruned.stdout + pruned.stderr
    assert not list((data / "keys" / "retired").glob("*.key"))  # the old KEK is gone
    report = admin.post(f"/v1/sessions/{sealed['id']}/verify").json()
    assert report["ok"], report["problems"]
    assert admin.get(f"/v1/sessions/{sealed['id']}/chunks/0").status_code == 200
    # a session recorded after the rotation is sealed under the new key too
    after = record(admin, seconds=3, name="after rotation")
    assert admin.post(f"/v1/sessions/{after['id']}/verify").json()["ok"]


def test_delete_crypto_shreds(platform, admin, keys_by_role):
    s = record(admin, seconds=3, name="to shred")
    sid = s["id"]
    with client_for(platform, keys_by_role["operator"]) as op:
        r = op.delete(f"/v1/sessions/{sid}")
        assert r.status_code == 403
    r = admin.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "deleted"
    assert body["shredded"]["data_key_destroyed"] and body["shredded"]["envelopes_removed"] == s["chunk_count"]
    assert body["shredded"]["chunk_rows_removed"] == s["chunk_count"]
    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report["status"] == "shredded" and report["problems"] == [], report
    gone = admin.get(f"/v1/sessions/{sid}/chunks/0")
    assert gone.status_code == 404
    store_dir = Path(platform.data_dir) / "chunks" / sid
    assert not (store_dir / "dek.json").exists() and not (store_dir / "chunks").exists()
    settings = Settings(data_dir=platform.data_dir)
    lake = Lake.sql(settings.catalog, settings.warehouse_uri)
    assert lake.rows(catalog.CHUNKS, sid) == []
    assert lake.rows(catalog.SESSIONS, sid)[0]["deleted_at"] is not None
    events = [e["entry"]["event"] for e in admin.get(f"/v1/sessions/{sid}/events").json()["items"]]
    assert events[-1] == "delete"
    again = admin.delete(f"/v1/sessions/{sid}")  # repeatable: finishes an interrupted shred, changes nothing
    assert again.status_code == 200 and not again.json()["shredded"]["data_key_destroyed"]


def test_delete_refused_while_recording(admin):
    sid = admin.post("/v1/sessions", json={"name": "busy", "video": {"width": 160, "height": 120, "fps": 5}}).json()[
        "id"
    ]
    admin.post(f"/v1/sessions/{sid}/start")
    try:
        r = admin.delete(f"/v1/sessions/{sid}")
        assert r.status_code == 409 and r.json()["state"] == "recording"
    finally:
        admin.post(f"/v1/sessions/{sid}/stop")


def test_no_secret_reaches_a_log_or_a_response(platform, admin):
    """Runs after the sessions above: the master key, the data keys and the API keys appear in no
    service or Dagster log, and no API response carries key material."""
    data = Path(platform.data_dir)
    secrets = {"test-admin-key-0123456789abcdef"}
    for p in (data / "keys").rglob("*.key"):
        raw = p.read_bytes()
        try:
            secrets.add(raw.decode().strip())
        except UnicodeDecodeError:  # the media-link HMAC key is raw bytes
            secrets |= {raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    from lucid_assets.keyring import Keyring
    from lucid_assets.store import ChunkStore

    keyring, store = Keyring.load(Settings(data_dir=data), with_signing=False), ChunkStore(data / "chunks")
    deks = [store.data_key(sid, keyring) for sid in store.sessions() if store.dek_kek_id(sid)]
    assert deks
    secrets |= {d.hex() for d in deks} | {base64.b64encode(d).decode() for d in deks}
    signing_pem = (data / "keys" / "signing.key").read_text()
    secrets |= {line for line in signing_pem.splitlines() if line and not line.startswith("-----")}
    logs = [
        p
        for p in data.rglob("*")
        if p.is_file() and (p.suffix == ".log" or "compute_logs" in str(p) or p.parent.name == "logs")
    ]
    assert logs
    for p in logs:
        text = p.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret appears in {p}"
    listing = admin.get("/v1/sessions", params={"limit": 500}).text + admin.get("/v1/api-keys").text
    for secret in secrets:
        assert secret not in listing
