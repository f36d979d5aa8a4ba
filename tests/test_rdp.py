"""The rdp source end to end on the real platform: a stored credential (user and password), a
FreeRDP shadow server that requires NLA, and xrdp (TLS) in front of a VNC desktop; the recording
decoded and compared with the server's screen, a desktop larger than the recording scaled into it,
and a server killed mid-session (reconnect, then the session ends sealed with a reason).
The viewer's own behaviour (flags, reasons, certificates) is tested in test_rdp_viewer.py."""

import random
import time

import pytest

from tests.helpers import create, decode, download, wait_state
from tests.remote_desktops import rdp_shadow_server, xrdp_server
from tests.test_vnc import GREEN, VncServer, mean_rgb, near
from tests.test_vnc import PASSWORD as VNC_PASSWORD

pytestmark = pytest.mark.e2e
USER, PASSWORD = "lucid", "Rdp-Pa55-e2e"
W, H = 320, 240
RED = (192, 48, 32)


@pytest.fixture()
def server():
    with rdp_shadow_server(USER, PASSWORD, width=W, height=H) as srv:
        yield srv


@pytest.fixture()
def credential(admin):
    name = f"rdp-{random.randrange(10**6)}"
    body = {"name": name, "kind": "rdp", "username": USER, "password": PASSWORD}
    assert admin.post("/v1/credentials", json=body).status_code == 201
    yield name
    admin.delete(f"/v1/credentials/{name}")


def source(server, credential, **extra):
    return {"kind": "rdp", "host": server.host, "port": server.port, "credential": credential, **extra}


@pytest.mark.slow  # waits out the reconnection window of a killed server
def test_rdp_desktop_is_recorded_and_a_lost_server_ends_it_sealed(admin, server, credential, tmp_path):
    sid = create(admin, "rdp", source=source(server, credential, reconnect_seconds=3), width=W, height=H, fps=10)
    r = admin.post(f"/v1/sessions/{sid}/start")
    assert r.status_code == 200, r.text
    time.sleep(4)
    server.proc.kill()  # the RDP server dies; it does not come back within 3 s
    s = wait_state(admin, sid, {"sealed", "failed"})
    assert s["state"] == "sealed", s["failure_reason"]
    assert f"rdp connection to {server.host}:{server.port} was lost" in s["end_reason"], s["end_reason"]
    download(admin, sid, tmp_path / "rec.ts")
    frames = decode(tmp_path / "rec.ts")
    assert (frames[0].width, frames[0].height) == (W, H) and len(frames) >= 20
    shown = [mean_rgb(f) for f in frames[2:-2]]
    assert sum(near(c, RED) for c in shown) >= 0.9 * len(shown), shown[:5]
    events = [e["entry"] for e in admin.get(f"/v1/sessions/{sid}/events").json()["items"]]
    assert any(e["event"] == "source_lost" for e in events)
    assert PASSWORD not in str(events) + str(s)


def test_a_desktop_larger_than_the_recording_is_scaled_into_it(admin, credential, tmp_path):
    """Issue 18: an RDP server whose desktop is larger than the recording (a shadow server cannot
    take the size asked for) is scaled to the recording's size, not cut to its top-left part: the
    right half of the desktop (blue) is the right half of the recording."""
    with rdp_shadow_server(USER, PASSWORD, width=2 * W, height=2 * H, right="#2040c0") as big:
        sid = create(admin, "rdp-big", source=source(big, credential), width=W, height=H, fps=5)
        assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
        time.sleep(4)
        assert admin.post(f"/v1/sessions/{sid}/stop").status_code == 200
        assert wait_state(admin, sid, {"sealed", "failed"})["state"] == "sealed"
    download(admin, sid, tmp_path / "big.ts")
    frames = decode(tmp_path / "big.ts")
    assert (frames[-1].width, frames[-1].height) == (W, H)
    left, right = mean_rgb(frames[-1], (0.05, 0.1, 0.4, 0.9)), mean_rgb(frames[-1], (0.6, 0.1, 0.95, 0.9))
    assert near(left, RED) and near(right, (32, 64, 192)), (left, right)


def test_an_xrdp_desktop_is_recorded(admin, tmp_path):
    """Issue 18's proof against xrdp (0.9, TLS security, no NLA): xrdp in front of a VNC desktop,
    the credential's password is what xrdp passes on; the recording shows that desktop and its
    change mid-session."""
    name = f"xrdp-{random.randrange(10**6)}"
    body = {"name": name, "kind": "rdp", "username": "lucid", "password": VNC_PASSWORD}
    assert admin.post("/v1/credentials", json=body).status_code == 201
    desktop = VncServer(tmp_path, password=VNC_PASSWORD)
    try:
        with xrdp_server(desktop.port) as xrdp:
            sid = create(admin, "xrdp", source=source(xrdp, name), width=W, height=H, fps=10)
            r = admin.post(f"/v1/sessions/{sid}/start")
            assert r.status_code == 200, r.text
            time.sleep(2.5)
            desktop.paint(GREEN)
            time.sleep(2.5)
            assert admin.post(f"/v1/sessions/{sid}/stop").status_code == 200
            s = wait_state(admin, sid, {"sealed", "failed"})
    finally:
        desktop.stop()
        admin.delete(f"/v1/credentials/{name}")
    assert s["state"] == "sealed", s["failure_reason"]
    download(admin, sid, tmp_path / "xrdp.ts")
    colours = [mean_rgb(f) for f in decode(tmp_path / "xrdp.ts")]
    first_green = next(i for i, c in enumerate(colours) if near(c, GREEN))
    assert first_green >= 10 and sum(near(c, RED) for c in colours[3:first_green]) >= first_green - 5, colours
    assert all(near(c, GREEN) for c in colours[first_green + 2 :]), colours[first_green:]
    assert VNC_PASSWORD not in str(admin.get(f"/v1/sessions/{sid}/events").json())


def test_rdp_wrong_password_is_refused_with_a_reason(admin, server):
    name = f"rdp-wrong-{random.randrange(10**6)}"
    body = {"name": name, "kind": "rdp", "username": USER, "password": "not-the-password"}
    assert admin.post("/v1/credentials", json=body).status_code == 201
    sid = create(admin, "rdp refused", source=source(server, name), width=W, height=H)
    r = admin.post(f"/v1/sessions/{sid}/start")
    assert r.status_code == 422 and r.json()["error"] == "source_unavailable", r.text
    assert "authentication failed" in r.json()["detail"] and "not-the-password" not in r.text
    assert admin.get(f"/v1/sessions/{sid}").json()["state"] == "created"
    admin.delete(f"/v1/credentials/{name}")


def rdp_garbage(rng):
    """What a broken or hostile RDP server sends: random bytes, a TPKT header claiming 64 KiB then
    silence, an X.224 connection confirm cut short, one with a nonsense negotiation response, and a
    valid-looking confirm followed by random 'TLS'."""
    yield [rng.randbytes(rng.randrange(1, 2048))]
    yield [b"\x03\x00\xff\xff" + rng.randbytes(20)]
    yield [b"\x03\x00\x00\x13\x0e\xd0\x00\x00"]
    yield [b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x02\x1f\x08\x00\xff\xff\xff\x7f"]
    yield [b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x02\x00\x08\x00\x02\x00\x00\x00", rng.randbytes(3000)]


def test_an_rdp_server_sending_garbage_is_refused_cleanly(admin, platform):
    from tests.test_vnc import fake_server

    rng = random.Random(3389)
    scripts = list(rdp_garbage(rng))
    name = f"rdp-fuzz-{rng.randrange(10**6)}"
    body = {"name": name, "kind": "rdp", "username": "u", "password": "p"}
    assert admin.post("/v1/credentials", json=body).is_success
    recorder = platform.procs["recorder"]
    with fake_server(scripts) as (port, served):
        for _ in scripts:
            src = {"kind": "rdp", "host": "127.0.0.1", "port": port, "credential": name, "reconnect_seconds": 0}
            sid = create(admin, "rdp garbage", source=src, width=W, height=H)
            r = admin.post(f"/v1/sessions/{sid}/start")
            assert r.status_code == 422 and r.json()["error"] == "source_unavailable", r.text  # never a 500
    assert len(served) >= len(scripts)
    assert platform.procs["recorder"] is recorder and recorder.poll() is None
    assert admin.get("/v1/sessions", params={"limit": 1}).status_code == 200
    admin.delete(f"/v1/credentials/{name}")
