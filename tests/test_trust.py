"""Internal trust on the real embedded platform: every internal service refuses callers without a
service token, each component may only do its own part, the audit actor comes from what was
authenticated, and request bodies are bounded before anything reads or authenticates them."""

import socket
import stat
import time
import uuid

import httpx
import pytest

from lucid_assets.trust import CALLERS, TokenTable, make_token_files, new_token
from tests.helpers import create, pipeline_client

INTERNAL = ("pipeline", "recorder", "storage")


def as_caller(platform, service: str, caller: str | None, headers: dict | None = None) -> httpx.Client:
    headers = platform.service_headers(caller) if caller else headers or {}
    return httpx.Client(base_url=platform.url(service), headers=headers, timeout=30)


@pytest.mark.parametrize("service", INTERNAL)
def test_internal_services_refuse_anyone_without_a_service_token(platform, service):
    sid = str(uuid.uuid4())
    probes = {
        "pipeline": [("GET", "/sessions"), ("POST", f"/sessions/{sid}/transitions"), ("GET", "/work/pending")],
        "recorder": [("POST", f"/recordings/{sid}/start"), ("GET", "/metrics"), ("GET", "/recordings")],
        "storage": [("POST", f"/sessions/{sid}/verify"), ("DELETE", f"/sessions/{sid}/data"), ("GET", "/keys/signing")],
    }[service]
    forged = {"Authorization": f"Bearer {new_token('api')}"}  # well-formed, not this deployment's
    for headers in ({}, forged, {"Authorization": "Bearer test-admin-key-0123456789abcdef"}):
        with as_caller(platform, service, None, headers=headers) as c:
            for method, path in probes:
                r = c.request(method, path)
                assert r.status_code == 401, (service, method, path, r.status_code, r.text)
                assert r.json()["error"] == "unauthorized" and "lucid-svc" not in r.text
            assert c.get("/health").status_code == 200  # probes stay open


def test_each_component_may_only_do_its_own_part(platform, admin):
    sid = create(admin, "trust-roles")
    forbidden = [
        # the recorder cannot seal, delete or fake a verification; Dagster cannot create sessions
        ("pipeline", "recorder", "POST", f"/sessions/{sid}/transitions", {"event": "delete"}),
        ("pipeline", "recorder", "POST", f"/sessions/{sid}/transitions", {"event": "seal"}),
        (
            "pipeline",
            "recorder",
            "PUT",
            f"/sessions/{sid}/verification",
            {"status": "verified", "problems": 0, "at": "x"},
        ),
        ("pipeline", "api", "PUT", f"/sessions/{sid}/verification", {"status": "verified", "problems": 0, "at": "x"}),
        ("pipeline", "dagster", "POST", "/sessions", {"name": "x"}),
        ("pipeline", "api", "POST", f"/sessions/{sid}/transitions", {"event": "seal"}),
        ("pipeline", "storage", "GET", "/work/pending", None),
        # only the gateway drives a recording; the recorder and storage cannot shred or read each other
        ("recorder", "dagster", "POST", f"/recordings/{sid}/start", None),
        ("storage", "recorder", "DELETE", f"/sessions/{sid}/data", None),
        ("storage", "recorder", "POST", f"/sessions/{sid}/verify", None),
    ]
    for service, caller, method, path, body in forbidden:
        with as_caller(platform, service, caller) as c:
            r = c.request(method, path, json=body)
        assert r.status_code == 403, (service, caller, method, path, r.status_code, r.text)
        assert r.json()["error"] == "forbidden"
    assert admin.get(f"/v1/sessions/{sid}").json()["state"] == "created"  # nothing above changed it


def test_the_audit_actor_is_what_was_authenticated(platform, admin, keys_by_role):
    operator = httpx.Client(
        base_url=platform.url("api"), headers={"Authorization": f"Bearer {keys_by_role['operator']}"}, timeout=30
    )
    sid = create(operator, "trust-actor")
    key_ids = {k["name"]: k["id"] for k in admin.get("/v1/api-keys").json()["items"]}
    first = admin.get(f"/v1/sessions/{sid}/events").json()["items"][0]["entry"]
    assert first["event"] == "create" and first["actor"] == f"key:{key_ids['test operator']}"

    # a body naming an actor is refused; a header naming one counts only from the gateway
    with as_caller(platform, "pipeline", "recorder") as rec:
        r = rec.post(f"/sessions/{sid}/transitions", json={"event": "start", "actor": "key:admin"})
        assert r.status_code == 422 and "actor" in r.json()["detail"]
        r = rec.post(f"/sessions/{sid}/transitions", json={"event": "start"}, headers={"X-Lucid-Actor": "key:admin"})
        assert r.status_code == 200, r.text
    last = admin.get(f"/v1/sessions/{sid}/events").json()["items"][-1]["entry"]
    assert last["event"] == "start" and last["actor"] == "recorder"
    with as_caller(platform, "pipeline", "api") as gw:  # the gateway must say whom it acts for
        r = gw.post("/sessions", json={"name": "no actor"})
        assert r.status_code == 400 and r.json()["error"] == "no_actor"
    with pipeline_client(platform) as c:  # leave nothing half-recorded behind
        assert c.post(f"/sessions/{sid}/transitions", json={"event": "fail", "reason": "test"}).status_code == 200
        assert c.post(f"/sessions/{sid}/transitions", json={"event": "delete"}).status_code == 200


def _raw_request(port: int, head: str, body_chunks=(), timeout: float = 30) -> tuple[int, int]:
    """Send a request head and then body chunks until the server answers; (status, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode())
        s.settimeout(0.05)
        for chunk in body_chunks:
            try:
                data = s.recv(64)
                if data:
                    return int(data.split()[1]), sent
            except TimeoutError:
                pass
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        s.settimeout(timeout)
        data = s.recv(64)
        return int(data.split()[1]), sent


@pytest.mark.parametrize("service", ["api", *INTERNAL])
def test_bodies_over_the_limit_are_refused_before_they_are_read(platform, service):
    port, sid = platform.ports[service], uuid.uuid4()
    method, path = {
        "api": ("POST", "/v1/sessions"),
        "pipeline": ("POST", "/sessions"),
        "recorder": ("PUT", f"/recordings/{sid}/chunks/0"),  # the upload route: max_chunk_bytes (4 MiB here)
        "storage": ("POST", f"/sessions/{sid}/verify"),
    }[service]
    # a declared 500 MB body, no key: answered from the head alone (no body byte is ever sent)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500000000\r\n\r\n"
    status, _ = _raw_request(port, head)
    assert status == 413
    if service not in ("api", "pipeline"):
        return  # the others take no JSON body to stream
    # a chunked body with no length: refused once it passes the limit (4 MiB), not read to its end
    # (an internal service refuses a caller without a token before reading a byte: present one)
    auth = "".join(f"{k}: {v}\r\n" for k, v in platform.service_headers("api").items()) * (service != "api")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, sent = _raw_request(port, head, (chunk for _ in range(2000)))  # would be 128 MiB
    assert status == 413 and sent < 32 * 1024 * 1024, sent


def test_service_tokens_are_private_and_never_logged(platform):
    keys = platform.data_dir / "keys" / "service"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for caller in CALLERS:
        assert stat.S_IMODE((keys / f"{caller}.token").stat().st_mode) == 0o600
    tokens = [(keys / f"{c}.token").read_text().strip() for c in CALLERS]
    time.sleep(0.5)
    for log in (platform.data_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(t in text for t in tokens), log.name


def test_token_table_admits_only_its_own_tokens(tmp_path):
    made = make_token_files(tmp_path / "svc")
    assert set(made) == {f"{c}.token" for c in CALLERS} | {"tokens.json"}
    assert make_token_files(tmp_path / "svc") == []  # made once, kept
    table = TokenTable.read(tmp_path / "svc" / "tokens.json")
    for c in CALLERS:
        token = (tmp_path / "svc" / f"{c}.token").read_text().strip()
        assert table.caller(f"Bearer {token}") == c
        assert table.caller(f"Basic {token}") is None
        assert table.caller(f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}") is None
    api = (tmp_path / "svc" / "api.token").read_text().strip()
    assert table.caller("Bearer " + api.replace(".api.", ".dagster.")) is None  # a token names one caller
    assert table.caller(None) is None and table.caller("Bearer ") is None
