"""`lucid`: run the embedded platform, run the demo, verify a session, export its evidence."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from lucid_assets import trust
from lucid_assets.core.states import State
from lucid_assets.files import atomic_write
from lucid_assets.keyring import ensure_keys
from lucid_assets.settings import PORTS, Settings, get_settings

ADMIN_KEY_FILE = Path("secrets") / "admin-api-key"


def _migrate(s: Settings) -> bool:
    """Bring both databases to the code's schema before any service starts, and say so."""
    from services.common import migrate

    try:
        for line in migrate.upgrade_all(s.pipeline_db, s.api_db):
            print(f"lucid: {line}", flush=True)
    except migrate.MigrationError as exc:
        print(f"lucid: {exc}", file=sys.stderr)
        return False
    return True


def cmd_migrate(args) -> int:
    return 0 if _migrate(Settings(data_dir=Path(args.data_dir))) else 1


def _bootstrap(data_dir: Path) -> tuple[str | None, list[str]]:
    from services.api.auth import ensure_admin_key
    from services.common.db import Database

    s = Settings(data_dir=data_dir)
    created = ensure_keys(s)
    if not _migrate(s):
        raise SystemExit(1)
    preset = s.preset_admin_key
    key = ensure_admin_key(Database(s.api_db), preset)
    if key and not preset:
        atomic_write(data_dir / ADMIN_KEY_FILE, (key + "\n").encode())
    return key, created


def _port(url: str) -> int:
    return urlsplit(url).port or 80


# what `lucid up` sets for its children itself (services.launcher.Platform.env)
LAUNCHER_SETS = {"data_dir", "generate_keys", "pipeline_url", "recorder_url", "storage_url", "api_url"}


def _operator_settings(s: Settings) -> dict[str, str]:
    """The operator's LUCID_* settings (environment, the systemd unit's EnvironmentFile) for the
    children, which the launcher otherwise hands none of this process's Lucid variables."""
    out = {}
    for name in sorted(s.model_fields_set - LAUNCHER_SETS):
        value = getattr(s, name)
        if Settings.model_fields[name].validation_alias is not None or value is None:
            continue  # SERVICE_NAME, PORT, HOST ... are each program's own
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = value.resolve()  # the children run in the checkout, not in this directory
        elif name == "chunk_store" and "://" not in value:  # a directory (not a bucket): made absolute too
            value = Path(value).resolve()
        out[f"LUCID_{name.upper()}"] = str(value)
    return out


# long: the whole `lucid up` story for the operator: bootstrap, supervisord, what runs where, then wait
def cmd_up(args) -> int:
    from services.launcher import SERVICES, Platform, Supervised

    os.umask(0o077)  # keys, databases and the supervisor's config made here are the operator's alone
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    key, created = _bootstrap(data_dir)
    for what in created:
        print(f"lucid: generated {what} (mode 0600) - back it up, losing it loses every recording")
    s = get_settings()
    urls = {"pipeline": s.pipeline_url, "recorder": s.recorder_url, "storage": s.storage_url, "api": s.api_url}
    platform = Platform(
        data_dir=data_dir,
        host=args.host,
        ports={n: _port(urls[n]) for n in SERVICES},
        dagster_port=args.dagster_port,
        extra_env=_operator_settings(s),
    )
    sup = Supervised(platform)
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    t0 = time.monotonic()
    try:
        sup.start()
    except RuntimeError as exc:
        print(f"lucid: {exc}", file=sys.stderr)
        sup.stop()
        return 1
    print(f"lucid: up in {time.monotonic() - t0:.1f}s, data in {data_dir}")
    print(f"  API (gateway)     {platform.url('api')}/docs")
    print(f"  Dagster UI        http://{args.host}:{platform.dagster_port}")
    print(
        f"  pipeline/recorder/storage  {platform.url('pipeline')}  {platform.url('recorder')}  "
        f"{platform.url('storage')}"
    )
    print(f"  logs              {platform.logs}")
    print(f"  supervisor        {sup.conf}  (supervisorctl -c {sup.conf} status)")
    if key and s.preset_admin_key:
        print("  admin API key     the one you set (LUCID_API_KEY / LUCID_API_KEY_FILE)")
    elif key and sys.stdout.isatty():  # not into a log or the journal (systemd): the file has it
        print(f"  admin API key     {key}   (shown once; also in {data_dir / ADMIN_KEY_FILE}, mode 0600)")
    elif key:
        print(f"  admin API key     generated: in {data_dir / ADMIN_KEY_FILE} (mode 0600)")
    else:
        print(f"  admin API key     created on the first start (see {data_dir / ADMIN_KEY_FILE} if it was generated)")
    print("  demo              ./scripts/lucid demo      (Ctrl-C stops the platform)", flush=True)
    code = 0
    seen: dict[str, str] = {}
    try:
        while not stopping:
            if sup.proc.poll() is not None:
                print(f"lucid: supervisord exited with {sup.proc.returncode} (see {platform.logs})", file=sys.stderr)
                code = 1
                break
            try:  # report what supervisord does; restarting is its job
                states = sup.states()
            except (OSError, xmlrpc.client.Error):
                states = {}
            for name, info in states.items():
                if seen.get(name, "RUNNING") != info["statename"]:
                    detail = f" ({info['description']})" if info["description"] else ""
                    print(f"lucid: {name} {info['statename'].lower()}{detail}", file=sys.stderr, flush=True)
                seen[name] = info["statename"]
            time.sleep(1)
    finally:
        print("lucid: stopping", file=sys.stderr, flush=True)
        sup.stop()
    return code


class Api:
    def __init__(self, url: str, key: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def __call__(self, method: str, path: str, **kw):
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:  # one clear line, not a traceback
            raise SystemExit(
                f"lucid: {self.http.base_url} is unreachable or not answering ({type(exc).__name__}); "
                "is the platform running? start it with `lucid up` (or pass --api)"
            ) from None
        if r.status_code >= 400:
            raise SystemExit(f"lucid: {method} {path} -> {r.status_code} {r.text}")
        return r.json() if "json" in r.headers.get("content-type", "") else r.content


def _api(args) -> Api:
    key = args.key or get_settings().preset_admin_key
    if not key:
        path = Path(args.data_dir) / ADMIN_KEY_FILE
        if not path.exists():
            raise SystemExit(
                f"lucid: no API key: pass --key, set LUCID_API_KEY(_FILE), or run `lucid up` first ({path})"
            )
        key = path.read_text().strip()
    return Api(args.api, key)


def demo_source(api, spec: str, password_file: str | None, username: str | None) -> dict:
    """--source: `testsrc`, or `vnc://[CREDENTIAL@]HOST[:PORT]` / `rdp://CREDENTIAL@HOST[:PORT]`.
    With --password-file the credential is stored first (admin key; PUT replaces it): the password
    goes from the file to the API, never on a command line."""
    if spec == "testsrc":
        return {"kind": "testsrc"}
    url = urlsplit(spec)
    if url.scheme not in ("vnc", "rdp") or not url.hostname:
        raise SystemExit(f"lucid: --source {spec!r}: expected testsrc, vnc://[CREDENTIAL@]HOST[:PORT] or rdp://...")
    source = {"kind": url.scheme, "host": url.hostname}
    if url.port:
        source["port"] = url.port
    name = url.username
    if password_file:
        name = name or f"demo-{url.scheme}-{url.hostname.replace(':', '-')}"
        body = {"kind": url.scheme, "password": Path(password_file).read_text().rstrip("\r\n")}
        if username:
            body["username"] = username
        r = api.http.post("/v1/credentials", json={**body, "name": name})
        if r.status_code == 409:
            api("PUT", f"/v1/credentials/{name}", json=body)  # it exists: replaced
        elif r.status_code >= 400:
            raise SystemExit(f"lucid: POST /v1/credentials -> {r.status_code} {r.text}")
        print(f"credential {name!r} stored (sealed under the master key)")
    if name:
        source["credential"] = name
    return source


def cmd_demo(args) -> int:
    api = _api(args)
    w, h = (int(x) for x in args.size.split("x"))
    s = api(
        "POST",
        "/v1/sessions",
        json={
            "name": f"demo {time.strftime('%Y-%m-%d %H:%M:%S')}",
            "labels": {"kind": "demo"},
            "source": demo_source(api, args.source, args.password_file, args.username),
            "video": {"width": w, "height": h, "fps": args.fps},
            "chunk_seconds": args.chunk_seconds,
        },
    )
    sid = s["id"]
    print(f"session {sid} created; recording {args.seconds}s of {args.size} at {args.fps} fps")
    api("POST", f"/v1/sessions/{sid}/start")
    time.sleep(args.seconds)
    api("POST", f"/v1/sessions/{sid}/stop")
    t_stop = time.monotonic()
    while True:
        s = api("GET", f"/v1/sessions/{sid}")
        if s["state"] == State.SEALED:
            break
        if s["state"] == State.FAILED:
            print(f"session failed: {s['failure_reason']}", file=sys.stderr)
            return 1
        if time.monotonic() - t_stop > args.timeout:
            print(f"not sealed after {args.timeout}s (state {s['state']})", file=sys.stderr)
            return 1
        time.sleep(0.5)
    sealed_s = time.monotonic() - t_stop
    report = api("POST", f"/v1/sessions/{sid}/verify")
    print(
        json.dumps(
            {
                "session": sid,
                "state": s["state"],
                "encoder": s["encoder"],
                "chunks": s["chunk_count"],
                "duration_s": s["duration_ms"] / 1000,
                "raw_bytes": s["raw_bytes"],
                "stored_bytes": s["stored_bytes"],
                "merkle_root": s["merkle_root"],
                "stop_to_sealed_s": round(sealed_s, 1),
                "verified": report["ok"],
                "problems": report["problems"],
            },
            indent=2,
        )
    )
    return 0 if report["ok"] else 1


def cmd_verify(args) -> int:
    report = _api(args)("POST", f"/v1/sessions/{args.session}/verify")
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def cmd_evidence(args) -> int:
    """Download a sealed session's evidence bundle (streamed to FILE.part, then renamed), print its
    SHA-256 (quotable: the bundle is deterministic) and, with --check, run the verifier it carries."""
    api = _api(args)
    out = Path(args.output or f"lucid-evidence-{args.session}.tar")
    part, digest = out.with_name(out.name + ".part"), hashlib.sha256()
    try:
        with api.http.stream("GET", f"/v1/sessions/{args.session}/evidence") as r:
            if r.status_code >= 400:
                r.read()
                raise SystemExit(f"lucid: evidence of {args.session} -> {r.status_code} {r.text}")
            with part.open("wb") as f:
                for piece in r.iter_raw(1 << 20):
                    f.write(piece)
                    digest.update(piece)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise SystemExit(f"lucid: the download stopped ({type(exc).__name__}); nothing was kept") from None
    part.replace(out)
    print(f"{out}: {out.stat().st_size} bytes, sha256 {digest.hexdigest()}")
    if not args.check:
        return 0
    with tarfile.open(out) as tar, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "verify.py"
        script.write_bytes(tar.extractfile(f"lucid-evidence-{args.session}/verify.py").read())
        return subprocess.run([sys.executable, str(script), str(out)]).returncode


def cmd_keys(args) -> int:
    from lucid_assets.credentials import CredentialStore
    from lucid_assets.keyring import Keyring, prune_retired, rotate_kek
    from lucid_assets.store import ChunkStore

    s = Settings(data_dir=Path(args.data_dir))
    store = ChunkStore.from_settings(s)
    if args.action == "rotate":
        old, new = rotate_kek(s)
        print(f"lucid: new active key-encryption key {new}; {old} retired to {s.keyring_path} (still readable)")
    keyring = Keyring.load(s, with_signing=False)
    if args.action in ("rotate", "rewrap"):
        sessions = store.sessions()
        n = sum(store.rewrap(sid, keyring) for sid in sessions)
        print(f"lucid: rewrapped {n} of {len(sessions)} session data keys under {keyring.active.key_id}")
        done, left = CredentialStore(store.objects).rewrap(keyring)
        print(f"lucid: rewrapped {done} credential keys" + (f"; {len(left)} do not open: {left}" if left else ""))
    in_use = {k for sid in store.sessions() if (k := store.dek_kek_id(sid))}
    if args.action == "prune":
        for path in prune_retired(s, in_use):
            print(f"lucid: deleted retired key {path.name} (no data key uses it)")
    print(
        "lucid: data keys by KEK: "
        + ", ".join(f"{k}={sum(store.dek_kek_id(sid) == k for sid in store.sessions())}" for k in sorted(in_use))
        or "none"
    )
    return 0


def cmd_plans(args) -> int:
    """Make the sealed MP4 plans a session lacks (one recorded before plans existed, or whose
    processing could not write them): otherwise its first MP4 export makes them, ~25 ms a chunk."""
    from lucid_assets.keyring import Keyring
    from lucid_assets.playback import DamagedChunk, Mp4Export, NotExportable
    from lucid_assets.store import ChunkStore

    s = Settings(data_dir=Path(args.data_dir))
    store = ChunkStore.from_settings(s)
    keyring = Keyring.load(s, with_signing=False)
    failed = 0
    for sid in args.session or store.sessions():
        seqs = store.stored_seqs(sid)
        before = [store.read_mp4_index(sid, seq) for seq in seqs]
        try:
            if seqs:
                Mp4Export(store, keyring, sid, seqs)  # reads every plan, makes the missing and stale ones
            made = sum(store.read_mp4_index(sid, seq) != old for seq, old in zip(seqs, before))
            legacy = store.drop_legacy_mp4_indexes(sid)
            print(
                f"lucid: {sid}: {len(seqs)} chunks, {made} plans made"
                + (f", {legacy} plain indexes of the earlier release removed" if legacy else "")
            )
        except NotExportable as exc:
            print(f"lucid: {sid}: no MP4 export ({exc})")
        except DamagedChunk as exc:
            failed += 1
            print(f"lucid: {sid}: not planned: {exc}", file=sys.stderr)
    return 1 if failed else 0


SECRET_FILES = ("master.key", "signing.key", "signing.pub", "link.key", "admin-api-key")
S3_ACCESS_KEY_ID = "lucid"  # the scale overlay's S3 identity (its secret key is a secret file)


def _s3_identities(secret: str) -> bytes:
    """SeaweedFS's identity file (-s3.config): one identity, the Lucid services', with every right."""
    ident = {"name": "lucid", "credentials": [{"accessKey": S3_ACCESS_KEY_ID, "secretKey": secret.strip()}]}
    return json.dumps({"identities": [{**ident, "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}).encode()


def cmd_secrets(args) -> int:
    """The secret files of a compose deployment, made once: existing files are never replaced."""
    from lucid_assets.core import keys
    from services.api.auth import new_key

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    makers = {
        "master.key": lambda p: keys.create_kek(p),
        "signing.key": lambda p: keys.create_signing_key(p),
        "signing.pub": lambda p: keys.write_private_file(
            p, keys.public_pem(keys.load_signing_key(out / "signing.key"))
        ),
        "link.key": lambda p: keys.write_private_file(p, os.urandom(32)),
        "admin-api-key": lambda p: keys.write_private_file(p, (new_key() + "\n").encode()),
    }
    uid, gid = (int(x) for x in args.owner.split(":")) if args.owner else (None, None)
    for name in SECRET_FILES:
        path = out / name
        if path.exists():
            print(f"lucid: kept {path}")
        else:
            makers[name](path)
            print(f"lucid: created {path} (mode 0600)")
        if uid is not None:
            os.chown(path, uid, gid)
    if args.scale:  # the S3 secret key, the object store's identity file holding it (SeaweedFS's s3.json)
        scale = {
            "s3-secret-key": lambda p: keys.write_private_file(p, (new_key() + "\n").encode()),
            "s3.json": lambda p: keys.write_private_file(p, _s3_identities((out / "s3-secret-key").read_text())),
        }
        for name, make in scale.items():
            if (out / name).exists():
                print(f"lucid: kept {out / name}")
            else:
                make(out / name)
                print(f"lucid: created {out / name} (mode 0600)")
            if uid is not None:
                os.chown(out / name, uid, gid)
    # each component's service token and the table of their digests (lucid_assets/trust.py)
    service = out / "service"
    for name in trust.make_token_files(service):
        print(f"lucid: created {service / name} (mode 0600)")
    if args.scale and not (service / "recorder-b.token").exists():
        print(f"lucid: created {trust.add_recorder(service, 'b')} (mode 0600; tokens.json names it)")
    for path in (service, *service.iterdir()):
        if uid is not None:
            os.chown(path, uid, gid)
    if uid is not None:
        os.chown(out, uid, gid)
    print(f"lucid: back up {out}: without master.key (and retired keys) the recordings cannot be read")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lucid", description="Lucid Sessions")
    settings = get_settings()
    p.add_argument("--data-dir", default=str(settings.data_dir))
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run the embedded platform (services, Dagster webserver and daemon)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--dagster-port", type=int, default=PORTS["dagster-webserver"], help="the Dagster UI's port")
    up.set_defaults(fn=cmd_up)
    for name, fn in (("demo", cmd_demo), ("verify", cmd_verify), ("evidence", cmd_evidence)):
        c = sub.add_parser(name)
        c.add_argument("--api", default=settings.api_url)
        c.add_argument("--key", default=None)
        c.set_defaults(fn=fn)
    demo = sub.choices["demo"]
    demo.add_argument("--seconds", type=float, default=30)
    demo.add_argument("--size", default="1280x720")
    demo.add_argument("--fps", type=int, default=30)
    demo.add_argument("--chunk-seconds", type=int, default=10)
    demo.add_argument("--timeout", type=float, default=300)
    demo.add_argument(
        "--source", default="testsrc", help="testsrc (default), vnc://[CREDENTIAL@]HOST[:PORT] or rdp://CREDENTIAL@HOST"
    )
    demo.add_argument("--password-file", help="store the remote desktop's password (first line) as the credential")
    demo.add_argument("--username", help="the remote desktop's user name (RDP), stored with --password-file")
    sub.choices["verify"].add_argument("session")
    ev = sub.choices["evidence"]
    ev.add_argument("session")
    ev.add_argument("-o", "--output", help="where to write the bundle (default lucid-evidence-<session>.tar)")
    ev.add_argument("--check", action="store_true", help="then run the verifier the bundle carries")
    mig = sub.add_parser("migrate", help="bring the pipeline and API-key databases to this release's schema")
    mig.set_defaults(fn=cmd_migrate)
    keys_p = sub.add_parser("keys", help="rotate the key-encryption key, rewrap data keys, prune retired keys")
    keys_p.add_argument("action", choices=["rotate", "rewrap", "prune", "status"])
    keys_p.set_defaults(fn=cmd_keys)
    plans = sub.add_parser("plans", help="make the MP4 export plans that stored sessions lack")
    plans.add_argument("session", nargs="*", help="session ids (default: every session in the store)")
    plans.set_defaults(fn=cmd_plans)
    sec = sub.add_parser("secrets", help="create the secret files of a compose deployment (never overwrites)")
    sec.add_argument("dir")
    sec.add_argument("--owner", help="UID:GID to own the files (the images run as 65532:65532)")
    sec.add_argument(
        "--scale",
        action="store_true",
        help="also the scale-out overlay's (docker-compose.scale.yml): the S3 key and a second recorder's token",
    )
    sec.set_defaults(fn=cmd_secrets)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
