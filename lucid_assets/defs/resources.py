"""Dagster resources: the pipeline service's API and the vault (keys, chunk store, catalog)."""

from pathlib import Path

import dagster as dg
import httpx
from pydantic import PrivateAttr

from lucid_assets.keyring import Keyring
from lucid_assets.lake import Lake
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore


class PipelineError(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"pipeline answered {status}: {body.get('error')}: {body.get('detail')}")


class PipelineResource(dg.ConfigurableResource):
    """HTTP client of lucid-session-pipeline."""

    url: str

    def request(self, method: str, path: str, **kwargs) -> dict:
        r = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": "http_error", "detail": r.text[:300]}
            raise PipelineError(r.status_code, body)
        return r.json()

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: dict) -> dict:
        return self.request("PUT", path, json=body)


class StorageServiceResource(dg.ConfigurableResource):
    """HTTP client of lucid-session-storage (the owner of crypto-shredding)."""

    url: str

    def shred(self, session_id: str) -> dict:
        r = httpx.delete(f"{self.url}/sessions/{session_id}/data", timeout=120)
        if r.status_code >= 400:
            raise PipelineError(r.status_code, r.json())
        return r.json()


class VaultResource(dg.ConfigurableResource):
    """Where sealed data lives: master/signing keys, the chunk store and the Iceberg catalog."""

    data_dir: str
    master_key_file: str
    keyring_dir: str = ""  # retired KEKs; empty: under data_dir
    signing_key_file: str
    generate_keys: bool = False
    chunk_store: str
    catalog_uri: str
    warehouse: str
    workers: int = 2
    api_url: str = "http://127.0.0.1:8087"  # for links to the viewer in asset metadata

    _lake: Lake | None = PrivateAttr(default=None)
    _keyring: Keyring | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, s: Settings) -> "VaultResource":
        return cls(data_dir=str(s.data_dir), master_key_file=str(s.master_key_path),
                   keyring_dir=str(s.keyring_path), signing_key_file=str(s.signing_key_path), generate_keys=s.generate_keys,
                   chunk_store=str(s.chunk_store_path), catalog_uri=s.catalog, warehouse=s.warehouse_uri,
                   workers=s.process_workers, api_url=s.api_url)

    def settings(self) -> Settings:
        return Settings(data_dir=Path(self.data_dir), master_key_file=Path(self.master_key_file),
                        keyring_dir=Path(self.keyring_dir) if self.keyring_dir else None, signing_key_file=Path(self.signing_key_file), generate_keys=self.generate_keys)

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.load(self.settings())
        return self._keyring

    @property
    def store(self) -> ChunkStore:
        return ChunkStore(Path(self.chunk_store))

    @property
    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake.sql(self.catalog_uri, self.warehouse)
        return self._lake
