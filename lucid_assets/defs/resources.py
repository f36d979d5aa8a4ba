"""The code location's resources (the typed clients of the pipeline and storage services, and the
vault: keys, chunk store, catalog) and its executor, from the one settings module."""

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from lucid_assets.clients import PipelineClient, StorageClient
from lucid_assets.keyring import Keyring
from lucid_assets.lake import Lake
from lucid_assets.objects import open_objects
from lucid_assets.processing import Vault
from lucid_assets.settings import Settings, get_settings
from lucid_assets.store import ChunkStore
from lucid_assets.trust import DAGSTER, ensure_tokens, read_token, token_path


class PipelineResource(dg.ConfigurableResource):
    """lucid-session-pipeline, through its typed client, as the `dagster` caller: the config names
    the service token's file; the token is read when the client is made and never shown."""

    url: str
    token_file: str

    _client: PipelineClient | None = PrivateAttr(default=None)

    @property
    def client(self) -> PipelineClient:
        if self._client is None:
            self._client = PipelineClient(self.url, token=read_token(Path(self.token_file)))
        return self._client


class StorageServiceResource(dg.ConfigurableResource):
    """lucid-session-storage (the owner of crypto-shredding), through its typed client."""

    url: str
    token_file: str

    _client: StorageClient | None = PrivateAttr(default=None)

    @property
    def client(self) -> StorageClient:
        if self._client is None:
            self._client = StorageClient(self.url, token=read_token(Path(self.token_file)))
        return self._client


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
    api_url: str = ""  # for links to the viewer in asset metadata

    _lake: Lake | None = PrivateAttr(default=None)
    _keyring: Keyring | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, s: Settings) -> "VaultResource":
        return cls(
            data_dir=str(s.data_dir),
            master_key_file=str(s.master_key_path),
            keyring_dir=str(s.keyring_path),
            signing_key_file=str(s.signing_key_path),
            generate_keys=s.generate_keys,
            chunk_store=s.chunk_store_location,
            catalog_uri=s.catalog,
            warehouse=s.warehouse_uri,
            workers=s.process_workers,
            api_url=s.api_url,
        )

    def settings(self) -> Settings:
        return Settings(
            data_dir=Path(self.data_dir),
            master_key_file=Path(self.master_key_file),
            keyring_dir=Path(self.keyring_dir) if self.keyring_dir else None,
            signing_key_file=Path(self.signing_key_file),
            generate_keys=self.generate_keys,
            chunk_store=self.chunk_store,
            catalog_uri=self.catalog_uri,
            warehouse=self.warehouse,
        )

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.load(self.settings())
        return self._keyring

    @property
    def store(self) -> ChunkStore:
        s = self.settings()
        return ChunkStore(open_objects(self.chunk_store, s), index_path=s.insight_index_path)

    @property
    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake.from_settings(self.settings())
        return self._lake

    @property
    def vault(self) -> Vault:
        """The library's view of the same (what `lucid_assets.processing` works with)."""
        return Vault(keyring=self.keyring, store=self.store, lake=self.lake, workers=self.workers)


@dg.definitions
def defs() -> dg.Definitions:
    s = get_settings()
    ensure_tokens(s)
    token = str(token_path(s, DAGSTER))
    return dg.Definitions(
        resources={
            "pipeline": PipelineResource(url=s.pipeline_url, token_file=token),
            "vault": VaultResource.from_settings(s),
            "storage": StorageServiceResource(url=s.storage_url, token_file=token),
        },
        executor=dg.multiprocess_executor if s.executor == "multiprocess" else dg.in_process_executor,
    )
