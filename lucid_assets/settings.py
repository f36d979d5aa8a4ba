"""The one settings module: every LUCID_* variable, the generic service variables (SERVICE_NAME,
PORT, HOST, LOG_LEVEL, DEBUG), the Dagster Postgres variables the health check reads, and the one
port table. No other module reads the environment (tests/test_layout.py checks)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The design's port table (docs: DESIGN.md "Components"); Dockerfiles and compose repeat these
# numbers, and tests/test_deploy.py checks they agree with this table.
PORTS: dict[str, int] = {
    "pipeline": 8083,
    "recorder": 8084,
    "chunk-processor": 8085,
    "storage": 8086,
    "api": 8087,
    "dagster-webserver": 3000,
}
SERVICES = ("pipeline", "recorder", "storage", "api")  # the FastAPI services, in start order


def local_url(name: str) -> str:
    return f"http://127.0.0.1:{PORTS[name]}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LUCID_", extra="ignore")

    # generic service variables (no prefix)
    service_name: str = Field("lucid", validation_alias=AliasChoices("SERVICE_NAME"))
    host: str = Field("0.0.0.0", validation_alias=AliasChoices("HOST"))
    port: int | None = Field(None, validation_alias=AliasChoices("PORT"))
    log_level: str = Field("info", validation_alias=AliasChoices("LOG_LEVEL"))
    debug: bool = Field(False, validation_alias=AliasChoices("DEBUG"))

    data_dir: Path = Path("data")
    # derived from data_dir when unset
    master_key_file: Path | None = None  # the active key-encryption key
    keyring_dir: Path | None = None  # older KEKs, still readable (one base64 key per *.key file)
    signing_key_file: Path | None = None
    # where only verification happens (storage service, gateway), the public half is enough
    signing_public_key_file: Path | None = None
    link_secret_file: Path | None = None  # HMAC key of the signed media links (gateway)
    # service-to-service credentials (lucid_assets/trust.py): this process's own token, and the
    # table of every caller's token digest that the called services check
    service_token_file: Path | None = None
    service_tokens_file: Path | None = None
    service_keys_dir: Path | None = None  # embedded default: <data>/keys/service
    generate_keys: bool = False  # the embedded default generates missing keys; compose does not
    database_url: str | None = None  # pipeline registry
    api_database_url: str | None = None  # gateway's API keys
    # the Iceberg catalog: sqlite:///FILE or postgresql+psycopg://... (a SqlCatalog), or http(s)://...
    # (an Iceberg REST catalog; with catalog_sigv4 it is signed with the S3 keys below)
    catalog_uri: str | None = None
    catalog_sigv4: bool = False
    catalog_signing_name: str = "s3tables"  # SeaweedFS's REST catalog refuses "s3"
    warehouse: str | None = None  # file:///DIR or s3://BUCKET[/PREFIX]
    chunk_store: str | None = None  # a directory, or s3://BUCKET[/PREFIX]
    # an S3-compatible object store (issue 17): any endpoint, path-style addressing by default
    s3_endpoint: str | None = None  # unset: AWS's own
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_secret_access_key_file: Path | None = None  # the same, read from a (secret) file
    s3_path_style: bool = True
    insight_index: Path | None = None  # the screen-text search index (SQLite); default below
    recordings_dir: Path | None = None

    pipeline_url: str = local_url("pipeline")
    recorder_url: str = local_url("recorder")
    storage_url: str = local_url("storage")
    api_url: str = local_url("api")

    api_key: SecretStr | None = None  # the first admin key, if the operator wants to choose it
    api_key_file: Path | None = None  # the same, read from a (secret) file
    chunk_seconds: int = 10
    # issue 17: the recorder uploads each finished segment to the storage service (sealed into the chunk
    # store's staging area) before registering it, so no filesystem is shared between its host and the
    # processing hosts; off: segments stay on the recordings volume that processing reads (embedded default)
    upload_segments: bool = False
    # many recorders (issue 17): this recorder's id (its token is keys/service/recorder-<id>.token; unset:
    # the first recorder, `recorder`), the URL the gateway reaches it at, how many sessions it takes
    recorder_id: str | None = None
    recorder_advertise_url: str | None = None  # default: recorder_url
    recorder_capacity: int = 4  # sessions it records well at once: the gateway places by load over capacity
    recorder_heartbeat_seconds: float = 5
    recorder_lapse_seconds: float = 30  # no heartbeat for this long: its live sessions are finalized
    encoders: str = "h264_v4l2m2m,h264_nvenc,libx264"  # probed in this order; the first that opens wins
    url_file_roots: str = ""  # colon-separated directories a `url` source may read files from
    # a `url` source never reaches loopback, link-local or private addresses (the platform's own
    # ports live there) unless listed here: comma-separated host names, IP addresses or networks
    url_allow_hosts: str = ""
    max_chunk_bytes: int = 512 * 1024 * 1024
    share_max_seconds: int = 30 * 24 * 3600  # the longest a share link may live (default 30 days)
    # any other request body (JSON): refused with 413 before authentication and before it is read
    max_request_bytes: int = 4 * 1024 * 1024
    process_workers: int = 2
    # Dagster tunings (measured in bench/latency.py --variants; docs/DECISIONS.md has the table)
    sensor_interval_seconds: int = 5  # work queue and run-status sensors
    # live batches start at most this often (a run costs ~2.5 CPU-s whatever it carries: bench/capacity.py);
    # finalized sessions do not wait for it
    batch_interval_seconds: int = 10
    # issue 17: a batch run holds the sessions it claimed this long, renewing every third of it while it
    # works; a run that dies frees them after at most this long (another run then takes them)
    claim_lease_seconds: int = 120
    # issue 15: the insight follower derives activity, thumbnails and screen text of live sessions at most
    # this often (one run per interval whatever it carries: the lag budget is 60 s chunk stored -> searchable);
    # the backfill schedule (cron) re-derives sealed sessions whose derivation changed or never ran
    insight_interval_seconds: int = 20
    insight_backfill_cron: str = "17 * * * *"
    insight_follow_idle_seconds: int = 60  # a follower run ends once it found nothing to do for this long
    insight_sessions_per_run: int = 25  # the backfill policy: partitions (sessions) one backfill run takes
    executor: str = "in_process"  # or "multiprocess": one process per step
    daemon_max_age: float = 300  # seconds without a heartbeat before the daemon is unhealthy

    # Dagster's own Postgres variables (compose), read by the daemon's health check
    dagster_pg_host: str | None = Field(None, validation_alias=AliasChoices("DAGSTER_PG_HOST"))
    dagster_pg_port: int = Field(5432, validation_alias=AliasChoices("DAGSTER_PG_PORT"))
    dagster_pg_user: str | None = Field(None, validation_alias=AliasChoices("DAGSTER_PG_USER"))
    dagster_pg_password: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("DAGSTER_PG_PASSWORD"))
    dagster_pg_db: str | None = Field(None, validation_alias=AliasChoices("DAGSTER_PG_DB"))

    def _d(self, value, *parts):
        return value if value is not None else self.data_dir.joinpath(*parts)

    @property
    def own_port(self) -> int:
        """PORT, else the port table's entry for this service (SERVICE_NAME lucid-session-<name>)."""
        name = self.service_name.removeprefix("lucid-session-").removeprefix("lucid-")
        return self.port or PORTS.get(name, 8080)

    @property
    def master_key_path(self) -> Path:
        return Path(self._d(self.master_key_file, "keys", "master.key"))

    @property
    def keyring_path(self) -> Path:
        return Path(self._d(self.keyring_dir, "keys", "retired"))

    @property
    def signing_key_path(self) -> Path:
        return Path(self._d(self.signing_key_file, "keys", "signing.key"))

    @property
    def link_secret_path(self) -> Path:
        return Path(self._d(self.link_secret_file, "keys", "link.key"))

    @property
    def service_keys_path(self) -> Path:
        return Path(self._d(self.service_keys_dir, "keys", "service"))

    @property
    def service_tokens_path(self) -> Path:
        return Path(self.service_tokens_file or self.service_keys_path / "tokens.json")

    @property
    def preset_admin_key(self) -> str | None:
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip() or None
        return self.api_key.get_secret_value() if self.api_key else None

    @property
    def pipeline_db(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'pipeline.db'}"

    @property
    def api_db(self) -> str:
        return self.api_database_url or f"sqlite:///{self.data_dir.resolve() / 'api.db'}"

    @property
    def catalog(self) -> str:
        return self.catalog_uri or f"sqlite:///{self.data_dir.resolve() / 'catalog.db'}"

    @property
    def warehouse_uri(self) -> str:
        return self.warehouse or (self.data_dir.resolve() / "warehouse").as_uri()

    @property
    def chunk_store_location(self) -> str:
        """A resolved directory, or an s3:// address."""
        if self.chunk_store and self.chunk_store.startswith("s3://"):
            return self.chunk_store
        return str(Path(self._d(self.chunk_store, "chunks")).resolve())

    @property
    def insight_index_path(self) -> Path:
        """Next to a local chunk store (as before issue 17); under data_dir when the store is a bucket."""
        if self.insight_index is not None:
            return self.insight_index.resolve()
        if self.chunk_store_location.startswith("s3://"):
            return (self.data_dir / "insight" / "text-index.sqlite").resolve()
        return Path(self.chunk_store_location) / ".insight" / "text-index.sqlite"

    @property
    def s3_config(self):
        from .objects import S3Config

        secret = self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None
        if self.s3_secret_access_key_file is not None:
            secret = self.s3_secret_access_key_file.read_text().strip()
        return S3Config(self.s3_endpoint, self.s3_region, self.s3_access_key_id, secret, self.s3_path_style)

    @property
    def encoder_order(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.encoders.split(",") if e.strip())

    @property
    def file_roots(self) -> list[Path]:
        return [Path(p) for p in self.url_file_roots.split(":") if p]

    @property
    def recordings_path(self) -> Path:
        return Path(self._d(self.recordings_dir, "recordings")).resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def child_environ() -> dict[str, str]:
    """This process's environment without Lucid's and Dagster's own variables: what the embedded
    launcher hands its children before it sets theirs."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LUCID_", "DAGSTER_"))}
