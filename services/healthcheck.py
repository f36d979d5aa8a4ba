"""`python -m services.healthcheck [URL]`: exit 0 when the service answers, for container health
checks on images without a shell. Default: this container's own /ready (PORT). `grpc://host:port`
asks a Dagster code server's gRPC health service ("DagsterApi") directly: importing grpc alone is
far lighter than the `dagster api grpc-health-check` CLI, which matters on a Pi (and under
emulation, where the CLI's import alone outlasts a health check's timeout). `dagster-daemon` reads
the daemon's heartbeats from Dagster's Postgres storage (DAGSTER_PG_*), for the same reason
(`dagster-daemon liveness-check` took 4.6 s of CPU here and 86 s under arm64 emulation)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from lucid_assets.settings import Settings, get_settings


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            r = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=5
            )
        except grpc.RpcError as exc:
            print(f"healthcheck grpc://{target}: {exc.code().name}", file=sys.stderr)
            return False
    return r.status == health_pb2.HealthCheckResponse.SERVING


# the daemons this platform relies on: sensors (work queue, run status), schedules, the run queue
REQUIRED_DAEMONS = ("SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR")


def daemon_alive(s: Settings) -> bool:
    import json
    import time

    import psycopg2

    try:
        if not (s.dagster_pg_host and s.dagster_pg_user and s.dagster_pg_db):
            raise KeyError("DAGSTER_PG_HOST, DAGSTER_PG_USER and DAGSTER_PG_DB must be set")
        with (
            psycopg2.connect(
                host=s.dagster_pg_host,
                port=s.dagster_pg_port,
                user=s.dagster_pg_user,
                password=s.dagster_pg_password.get_secret_value(),
                dbname=s.dagster_pg_db,
                connect_timeout=5,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT daemon_type, body FROM daemon_heartbeats")
            rows = cur.fetchall()
    except (psycopg2.Error, KeyError) as exc:
        print(f"healthcheck dagster-daemon: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    # the serialized heartbeat carries an epoch timestamp (the table's TIMESTAMP column has no zone)
    beats = {kind: json.loads(body).get("timestamp", 0) for kind, body in rows}
    stale = [k for k in REQUIRED_DAEMONS if time.time() - beats.get(k, 0) > s.daemon_max_age]
    if stale:
        print(f"healthcheck dagster-daemon: no recent heartbeat from {', '.join(stale)}", file=sys.stderr)
    return not stale


def main(argv: list[str]) -> int:
    s = get_settings()
    url = argv[0] if argv else f"http://127.0.0.1:{s.own_port}/ready"
    if url == "dagster-daemon":
        return 0 if daemon_alive(s) else 1
    if url.startswith("grpc://"):
        return 0 if grpc_serving(url.removeprefix("grpc://")) else 1
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 0 if r.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
