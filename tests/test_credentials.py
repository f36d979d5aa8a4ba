"""Named remote-desktop credentials (issue 18): stored by an admin through the gateway, sealed under
the KEK by the storage service, opened only by the recorder for a live session whose source names
them; the password never comes back out of the API, the logs or the disk, a tampered file does not
open, and KEK rotation (with pruning) keeps them opening."""

import json
import os
import stat
import uuid
from pathlib import Path

import httpx
import pytest

from lucid_assets.clients import StorageClient
from lucid_assets.credentials import CredentialDamaged, CredentialExists, CredentialNotFound, CredentialStore
from lucid_assets.keyring import Keyring, prune_retired, rotate_kek
from lucid_assets.objects import open_objects
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from lucid_assets.trust import RECORDER, own_token
from tests.conftest import client_for, settings_for
from tests.helpers import create

PASSWORD = f"pw-{uuid.uuid4().hex}-s3cr3t"  # unique: found anywhere, it leaked from here
OTHER_PASSWORD = f"pw2-{uuid.uuid4().hex}"


def _keyring(tmp_path, backend=None) -> tuple[Settings, Keyring, CredentialStore]:
    settings = settings_for(tmp_path, backend)
    store = CredentialStore(open_objects(settings.chunk_store_location, settings))
    return settings, Keyring.load(settings, with_signing=False), store


# --- the library alone ---------------------------------------------------------------------------
def test_sealed_at_rest_and_bound_to_name_kind_and_login(tmp_path, backend):
    settings, keyring, store = _keyring(tmp_path, backend)
    info = store.put("desk-1", kind="rdp", username="alice", domain="CORP", password=PASSWORD, keyring=keyring)
    assert info["name"] == "desk-1" and info["kind"] == "rdp" and info["kek_id"] == keyring.active.key_id
    assert "password" not in info and PASSWORD not in json.dumps(info)
    read = lambda name: store.objects.get(store.key(name))
    write = lambda name, data: store.objects.put(store.key(name), data)
    raw = read("desk-1")
    assert PASSWORD.encode() not in raw
    if backend is None:
        path = store.objects.local_path(store.key("desk-1"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    opened = store.open("desk-1", keyring)
    assert (opened.kind, opened.username, opened.domain, opened.password) == ("rdp", "alice", "CORP", PASSWORD)
    assert PASSWORD not in repr(opened)
    with pytest.raises(CredentialExists):
        store.put("desk-1", kind="rdp", username=None, domain=None, password="x", keyring=keyring, exists=False)
    with pytest.raises(CredentialNotFound):
        store.put("nope", kind="rdp", username=None, domain=None, password="x", keyring=keyring, exists=True)
    with pytest.raises(CredentialNotFound):
        store.open("../desk-1", keyring)

    doc = json.loads(raw)
    for field, value in (("kind", "vnc"), ("username", "mallory"), ("domain", "EVIL"), ("id", str(uuid.uuid4()))):
        write("desk-1", json.dumps({**doc, field: value}).encode())
        with pytest.raises(CredentialDamaged):
            store.open("desk-1", keyring)
    # renamed, with its name edited to match: opens as nothing
    write("desk-1", raw)
    write("desk-2", json.dumps({**doc, "name": "desk-2"}).encode())
    with pytest.raises(CredentialDamaged):
        store.open("desk-2", keyring)
    # renamed only: the name inside is not the object's
    write("desk-3", raw)
    with pytest.raises(CredentialDamaged):
        store.info("desk-3")
    # another credential's key and ciphertext moved in: its id and AAD are not this one's
    store.put("desk-4", kind="rdp", username="alice", domain="CORP", password=OTHER_PASSWORD, keyring=keyring)
    other = json.loads(read("desk-4"))
    write("desk-1", json.dumps({**doc, **{k: other[k] for k in ("key", "nonce", "sealed")}}).encode())
    with pytest.raises(CredentialDamaged):
        store.open("desk-1", keyring)
    write("desk-1", raw)
    assert store.open("desk-1", keyring).password == PASSWORD
    good, damaged = store.infos()
    assert sorted(i["name"] for i in good) == ["desk-1", "desk-2", "desk-4"] and damaged == ["desk-3"]
    # a damaged one is replaced by a good one; a deleted one is gone from the backend
    store.put("desk-3", kind="vnc", username=None, domain=None, password=PASSWORD, keyring=keyring)
    assert store.open("desk-3", keyring).kind == "vnc"
    assert store.delete("desk-3")["name"] == "desk-3" and read("desk-3") is None
    with pytest.raises(CredentialNotFound):
        store.open("desk-3", keyring)


def test_rotation_job_rewraps_credentials_and_prune_keeps_their_keks(tmp_path, backend):
    from lucid_assets.defs.keys.rotation import rotate_data_keys
    from lucid_assets.defs.resources import VaultResource

    settings, keyring, store = _keyring(tmp_path, backend)
    store.put("desk", kind="vnc", username=None, domain=None, password=PASSWORD, keyring=keyring)
    old_id, new_id = rotate_kek(settings)
    # not rewrapped yet: no session DEK names the old KEK, but the credential does
    assert prune_retired(settings, set()) == []
    assert store.kek_ids() == {old_id}
    result = rotate_data_keys.execute_in_process(resources={"vault": VaultResource.from_settings(settings)})
    assert result.success
    assert store.kek_ids() == {new_id}
    assert [p.name for p in prune_retired(settings, set())] == [f"{old_id}.key"]
    fresh = Keyring.load(settings, with_signing=False)
    assert old_id not in fresh.keks
    assert store.open("desk", fresh).password == PASSWORD


# --- the real platform ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def operator(platform, keys_by_role):
    with client_for(platform, keys_by_role["operator"]) as c:
        yield c


@pytest.fixture(scope="module")
def answers() -> list[str]:
    """Every response body the tests saw, for the last test to search."""
    return []


@pytest.fixture(scope="module")
def stored(admin) -> None:
    """The credentials the tests below use: lab-vnc (PASSWORD) and lab-rdp (OTHER_PASSWORD)."""
    for body in (
        {"name": "lab-vnc", "kind": "vnc", "password": PASSWORD},
        {"name": "lab-rdp", "kind": "rdp", "username": "alice", "domain": "LAB", "password": OTHER_PASSWORD},
    ):
        r = admin.post("/v1/credentials", json=body)
        assert r.status_code == 201, r.text
        assert PASSWORD not in r.text and OTHER_PASSWORD not in r.text


def seen(answers: list[str], r: httpx.Response) -> httpx.Response:
    answers.append(r.text)
    return r


def storage(platform, caller: str) -> httpx.Client:
    return httpx.Client(base_url=platform.url("storage"), timeout=30, headers=platform.service_headers(caller))


def vnc(name: str | None) -> dict:
    return {"kind": "vnc", "host": "127.0.0.1", "credential": name}


@pytest.mark.e2e
def test_admin_manages_credentials(platform, admin, operator, keys_by_role, answers):
    body = {"name": "mgmt-vnc", "kind": "vnc", "password": PASSWORD}
    r = seen(answers, admin.post("/v1/credentials", json=body))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["name"] == "mgmt-vnc" and made["kind"] == "vnc" and made["updated_by"].startswith("key:")
    assert set(made) == {"name", "kind", "username", "domain", "kek_id", "created_at", "updated_at", "updated_by"}
    r = seen(answers, admin.post("/v1/credentials", json=body))
    assert r.status_code == 409 and r.json()["error"] == "credential_exists"
    rdp = {"name": "mgmt-rdp", "kind": "rdp", "username": "alice", "domain": "LAB", "password": PASSWORD}
    assert seen(answers, admin.post("/v1/credentials", json=rdp)).status_code == 201
    listing = seen(answers, admin.get("/v1/credentials"))
    names = {c["name"]: c for c in listing.json()["items"]}
    assert {"mgmt-vnc", "mgmt-rdp"} <= set(names) and names["mgmt-rdp"]["username"] == "alice"
    one = seen(answers, admin.get("/v1/credentials/mgmt-rdp"))
    assert one.status_code == 200 and one.json()["domain"] == "LAB"
    replaced = seen(answers, admin.put("/v1/credentials/mgmt-rdp", json={"kind": "rdp", "password": OTHER_PASSWORD}))
    assert replaced.status_code == 200 and replaced.json()["username"] is None
    assert replaced.json()["created_at"] == one.json()["created_at"] != replaced.json()["updated_at"]
    r = seen(answers, admin.put("/v1/credentials/missing", json={"kind": "rdp", "password": PASSWORD}))
    assert r.status_code == 404
    assert seen(answers, admin.get("/v1/credentials/missing")).status_code == 404
    for bad_name in ("Upper", "-dash", "a%2F..%2Fb", "x" * 64):
        r = seen(answers, admin.get(f"/v1/credentials/{bad_name}"))
        assert r.status_code == 404 and r.json()["error"] == "not_found", bad_name
    doc = admin.get("/openapi.json").json()
    assert {"post", "get"} <= set(doc["paths"]["/v1/credentials"])
    assert {"put", "get", "delete"} <= set(doc["paths"]["/v1/credentials/{name}"])
    password_schema = doc["components"]["schemas"]["NewCredential"]["properties"]["password"]
    assert password_schema.get("writeOnly") is True and password_schema.get("format") == "password"

    # admin only: an operator's and a viewer's keys are refused everything, without a key too
    with client_for(platform, keys_by_role["viewer"]) as viewer:
        for client, status in ((operator, 403), (viewer, 403)):
            assert seen(answers, client.post("/v1/credentials", json={**body, "name": "x"})).status_code == status
            assert seen(answers, client.get("/v1/credentials")).status_code == status
            assert seen(answers, client.get("/v1/credentials/mgmt-vnc")).status_code == status
            assert seen(answers, client.get("/v1/credentials/Not%20A%20Name")).status_code == status  # key first
            assert seen(answers, client.put("/v1/credentials/mgmt-vnc", json=body)).status_code == status
            assert seen(answers, client.delete("/v1/credentials/mgmt-vnc")).status_code == status
    assert httpx.get(f"{operator.base_url}/v1/credentials").status_code == 401

    # a bad body is a 422 that names the field, never echoes the password (FastAPI's default does)
    bad = [
        {**body, "name": "Not A Name"},
        {**body, "kind": "ssh"},
        {**body, "password": PASSWORD * 40},  # over 1024 characters
        {**body, "name": "ok-name", "pasword": PASSWORD},
        {"name": "ok-name", "kind": "vnc", "password": {"nested": PASSWORD}},
        {"name": "ok-name", "kind": "vnc", "password": [PASSWORD]},
    ]
    for b in bad:
        r = seen(answers, admin.post("/v1/credentials", json=b))
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_request" and PASSWORD not in r.text
    r = seen(answers, admin.post("/v1/credentials", content=b'{"name":"x","password":"' + PASSWORD.encode() + b'"'))
    assert r.status_code == 422 and PASSWORD not in r.text
    gone = seen(answers, admin.delete("/v1/credentials/mgmt-rdp"))
    assert gone.status_code == 200 and gone.json()["name"] == "mgmt-rdp"
    assert seen(answers, admin.get("/v1/credentials/mgmt-rdp")).status_code == 404
    assert seen(answers, admin.delete("/v1/credentials/mgmt-rdp")).status_code == 404
    assert all(PASSWORD not in a and OTHER_PASSWORD not in a for a in answers)


@pytest.mark.e2e
def test_a_session_names_an_existing_credential_of_its_kind(admin, stored, answers):
    r = seen(answers, admin.post("/v1/sessions", json={"name": "no such", "source": vnc("no-such-credential")}))
    assert r.status_code == 422 and r.json()["error"] == "unknown_credential"
    rdp_source = {"kind": "rdp", "host": "127.0.0.1", "credential": "lab-vnc"}
    r = seen(answers, admin.post("/v1/sessions", json={"name": "mismatch", "source": rdp_source}))
    assert r.status_code == 422 and r.json()["error"] == "credential_kind_mismatch"
    names = [s["name"] for s in admin.get("/v1/sessions", params={"limit": 500}).json()["items"]]
    assert "no such" not in names and "mismatch" not in names


@pytest.mark.e2e
def test_only_the_recorder_opens_it_and_only_for_a_live_session_naming_it(platform, admin, stored, answers):
    sid = create(admin, "remote desk", source=vnc("lab-vnc"))
    other = create(admin, "other desk", source=vnc(None))
    pattern = create(admin, "not remote")
    with storage(platform, RECORDER) as rec:
        r = seen(answers, rec.post("/credentials/lab-vnc/open", json={"session_id": sid}))
        assert r.status_code == 200, r.text
        assert r.json() == {"kind": "vnc", "username": None, "domain": None, "password": PASSWORD}
        answers.pop()  # the one answer that carries it
        for s, status, error in (
            (other, 403, "credential_not_named"),
            (pattern, 403, "credential_not_named"),
            (str(uuid.uuid4()), 404, "not_found"),
            ("not-a-session", 404, "not_found"),
        ):
            r = seen(answers, rec.post("/credentials/lab-vnc/open", json={"session_id": s}))
            assert (r.status_code, r.json()["error"]) == (status, error), r.text
        r = seen(answers, rec.get("/credentials"))  # management is the gateway's
        assert r.status_code == 403
    for caller in ("api", "dagster", "storage"):
        with storage(platform, caller) as c:
            r = seen(answers, c.post("/credentials/lab-vnc/open", json={"session_id": sid}))
            assert r.status_code == 403 and r.json()["error"] == "forbidden", caller
    anonymous = httpx.post(f"{platform.url('storage')}/credentials/lab-vnc/open", json={"session_id": sid})
    assert anonymous.status_code == 401

    # the typed client the recorder uses, with the recorder's own token
    client = StorageClient(platform.url("storage"), token=own_token(Settings(data_dir=platform.data_dir), RECORDER))
    secret = client.open_credential("lab-vnc", sid)
    assert secret.password.get_secret_value() == PASSWORD and PASSWORD not in repr(secret) + str(secret)

    # a credential a live session names is not deleted under it
    r = seen(answers, admin.delete("/v1/credentials/lab-vnc"))
    assert r.status_code == 409 and r.json()["error"] == "credential_in_use" and sid in r.text

    # crypto-shredded: the session no longer opens anything
    assert admin.delete(f"/v1/sessions/{sid}").status_code == 200
    with storage(platform, RECORDER) as rec:
        r = seen(answers, rec.post("/credentials/lab-vnc/open", json={"session_id": sid}))
        assert r.status_code == 409 and r.json()["error"] == "session_state" and r.json()["state"] == "deleted"
    client.close()


@pytest.mark.e2e
def test_a_tampered_file_does_not_open(platform, admin, stored, answers):
    store = CredentialStore(Path(Settings(data_dir=platform.data_dir).chunk_store_location))
    get = lambda name: store.objects.get(store.key(name))
    put = lambda name, data: store.objects.put(store.key(name), data)
    doc = json.loads(get("lab-vnc"))
    put("copied", json.dumps({**doc, "name": "copied"}).encode())  # renamed, name edited to fit
    sid = create(admin, "tampered", source=vnc("copied"))
    with storage(platform, RECORDER) as rec:
        r = seen(answers, rec.post("/credentials/copied/open", json={"session_id": sid}))
        assert r.status_code == 409 and r.json()["error"] == "credential_damaged", r.text
        sid2 = create(admin, "kind edited", source=vnc("lab-vnc"))
        raw = get("lab-vnc")
        put("lab-vnc", json.dumps({**doc, "kind": "rdp"}).encode())
        try:
            r = seen(answers, rec.post("/credentials/lab-vnc/open", json={"session_id": sid2}))
            assert r.status_code == 409 and r.json()["error"] == "credential_damaged", r.text
        finally:
            put("lab-vnc", raw)
        assert rec.post("/credentials/lab-vnc/open", json={"session_id": sid2}).status_code == 200
    assert admin.delete(f"/v1/sessions/{sid}").status_code == 200
    assert admin.delete("/v1/credentials/copied").status_code == 200
    assert admin.get("/v1/credentials/copied").status_code == 404
    assert admin.delete(f"/v1/sessions/{sid2}").status_code == 200


@pytest.mark.e2e
def test_kek_rotation_keeps_it_opening(platform, admin, stored, answers):
    from lucid_assets.defs.keys.rotation import rotate_data_keys
    from lucid_assets.defs.resources import VaultResource

    settings = Settings(data_dir=platform.data_dir)
    store = CredentialStore(Path(settings.chunk_store_location))
    before = admin.get("/v1/credentials/lab-rdp").json()["kek_id"]
    old_id, new_id = rotate_kek(settings)
    assert before == old_id
    result = rotate_data_keys.execute_in_process(resources={"vault": VaultResource.from_settings(settings)})
    assert result.success
    sessions = ChunkStore.from_settings(settings)
    in_use = {k for s in sessions.sessions() if (k := sessions.dek_kek_id(s))}
    assert f"{old_id}.key" in [p.name for p in prune_retired(settings, in_use)]
    assert not (settings.keyring_path / f"{old_id}.key").exists()
    assert admin.get("/v1/credentials/lab-rdp").json()["kek_id"] == new_id == store.info("lab-rdp")["kek_id"]
    # the storage service loaded the old keys at its start: it opens the rewrapped one all the same
    sid = create(admin, "after rotation", source={"kind": "rdp", "host": "127.0.0.1", "credential": "lab-rdp"})
    with storage(platform, RECORDER) as rec:
        r = rec.post("/credentials/lab-rdp/open", json={"session_id": sid})
        assert r.status_code == 200 and r.json()["password"] == OTHER_PASSWORD and r.json()["kind"] == "rdp"
    # and what it writes now is wrapped under the new active KEK
    made = seen(answers, admin.post("/v1/credentials", json={"name": "after", "kind": "vnc", "password": PASSWORD}))
    assert made.status_code == 201 and made.json()["kek_id"] == new_id
    assert admin.delete("/v1/credentials/after").status_code == 200
    assert admin.delete(f"/v1/sessions/{sid}").status_code == 200


@pytest.mark.e2e
def test_the_password_is_nowhere_else(platform, admin, stored, answers):
    """Last: every answer the tests saw, every service's log and every file under the data
    directory (databases, logs, the chunk store, Dagster's storage) lack both passwords' bytes."""
    seen(answers, admin.get("/v1/credentials"))
    assert all(PASSWORD not in a and OTHER_PASSWORD not in a for a in answers)
    logs = sorted(platform.logs.glob("*.log"))
    assert logs and any("credential 'lab-vnc'" in p.read_text(errors="replace") for p in logs)  # it logged, by name
    leaked, searched = [], 0
    for dirpath, _, files in os.walk(platform.data_dir):
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                data = open(path, "rb").read()  # noqa: SIM115 - one read
            except OSError:
                continue
            searched += 1
            if PASSWORD.encode() in data or OTHER_PASSWORD.encode() in data:
                leaked.append(path)
    assert searched > 20 and not leaked, leaked
