"""The Iceberg catalog adapter: create the `lucid` tables, append idempotently, look up by session."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import EqualTo, In
from sqlalchemy.exc import IntegrityError

from .core import catalog as schema

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("lucid.lake")


def s3_props(s: Settings) -> dict[str, str]:
    """PyIceberg's FileIO properties for the settings' S3 endpoint (pyarrow's S3 filesystem)."""
    cfg = s.s3_config
    props = {"s3.region": cfg.region, "s3.path-style-access": "true" if cfg.path_style else "false"}
    if cfg.endpoint:
        props["s3.endpoint"] = cfg.endpoint
    if cfg.access_key_id:
        props |= {"s3.access-key-id": cfg.access_key_id, "s3.secret-access-key": cfg.secret_access_key or ""}
    return props


class Lake:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._ready = False

    @classmethod
    def sql(cls, uri: str, warehouse: str, **props: str) -> Lake:
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return cls(SqlCatalog("lucid", uri=uri, warehouse=warehouse, **props))

    @classmethod
    def from_settings(cls, s: Settings) -> Lake:
        """The settings' catalog: a SqlCatalog (SQLite, PostgreSQL) or an Iceberg REST catalog, over a
        local or S3 warehouse."""
        props = s3_props(s) if s.warehouse_uri.startswith("s3://") or s.catalog.startswith("http") else {}
        if not s.catalog.startswith(("http://", "https://")):
            return cls.sql(s.catalog, s.warehouse_uri, **props)
        from pyiceberg.catalog.rest import RestCatalog

        rest = {"uri": s.catalog, "warehouse": s.warehouse_uri, **props}
        if s.catalog_sigv4:
            cfg = s.s3_config
            rest |= {
                "rest.sigv4-enabled": "true",
                "rest.signing-region": cfg.region,
                "rest.signing-name": s.catalog_signing_name,
                "client.region": cfg.region,
                "client.access-key-id": cfg.access_key_id or "",
                "client.secret-access-key": cfg.secret_access_key or "",
            }
        return cls(RestCatalog("lucid", **rest))

    def ensure_tables(self) -> None:
        """Load the `lucid` tables, creating each only when the catalog has none yet. Every run and
        service start comes here: PyIceberg's create_table_if_not_exists writes a new metadata file
        and tries the insert first, so each call left an unreferenced `00000-*.metadata.json` and
        made PostgreSQL log a duplicate-key error. A lost creation race (two first starts at once)
        loads the winner's table; the loser's own metadata file is left unreferenced, never removed."""
        if self._ready:
            return
        if not self.catalog.namespace_exists(schema.NAMESPACE):
            try:
                self.catalog.create_namespace(schema.NAMESPACE)
            except (NamespaceAlreadyExistsError, IntegrityError):  # created meanwhile by another process
                if not self.catalog.namespace_exists(schema.NAMESPACE):
                    raise
        for name in schema.TABLES:
            s, spec, order = schema.layout(name)
            try:
                table = self.catalog.load_table(name)
            except NoSuchTableError:
                try:
                    table = self.catalog.create_table(
                        name,
                        s,
                        partition_spec=spec,
                        sort_order=order,
                        properties={"commit.retry.num-retries": "10", "write.parquet.compression-codec": "zstd"},
                    )
                except TableAlreadyExistsError:
                    table = self.catalog.load_table(name)
            if set(s.column_names) - set(table.schema().column_names):  # a newer release added columns
                with table.update_schema() as update:
                    update.union_by_name(s)
        self._ready = True

    def table(self, name: str):
        self.ensure_tables()
        return self.catalog.load_table(name)

    def rows(self, name: str, session_id: str) -> list[dict]:
        """All rows of one session, read with a pruning filter on session_id."""
        rows = self.table(name).scan(row_filter=EqualTo("session_id", session_id)).to_arrow().to_pylist()
        return sorted(rows, key=lambda r: (r.get("seq", 0), r.get("manifest_version", 0)))

    def append_missing(self, name: str, session_id: str, rows: list[dict], key: str) -> int:
        """Append the rows whose `key` is not yet in the table for this session; retries on
        commit conflicts with a fresh read, so concurrent or repeated runs never duplicate rows."""
        return self.append_missing_many(name, [{**r, "session_id": session_id} for r in rows], key).get(session_id, 0)

    def _scan(self, name: str, session_ids: list[str], fields: tuple[str, ...] | None = None, table=None) -> list[dict]:
        """Rows of these sessions, read from `table` (a loaded snapshot) or the current one."""
        if not session_ids:
            return []
        scan = (table or self.table(name)).scan(
            row_filter=In("session_id", sorted(set(session_ids))), **({"selected_fields": fields} if fields else {})
        )
        return scan.to_arrow().to_pylist()

    def keys_by_session(self, name: str, session_ids: list[str], key: str) -> dict[str, list]:
        """`key` of every row of these sessions, per session (one scan, pruned by session)."""
        out: dict[str, list] = {}
        for r in self._scan(name, session_ids, ("session_id", key)):
            out.setdefault(r["session_id"], []).append(r[key])
        return out

    def rows_by_session(self, name: str, session_ids: list[str]) -> dict[str, list[dict]]:
        """Every row of these sessions, per session in seq (or version) order, in one scan."""
        out: dict[str, list[dict]] = {}
        for r in self._scan(name, session_ids):
            out.setdefault(r["session_id"], []).append(r)
        for rows in out.values():
            rows.sort(key=lambda r: (r.get("seq", 0), r.get("manifest_version", 0)))
        return out

    def append_missing_many(self, name: str, rows: list[dict], key: str) -> dict[str, int]:
        """`append_missing` for rows of many sessions in one commit: a row whose (session, `key`) is
        already in the table is left out, read fresh after a commit conflict. Returns the rows
        appended per session."""
        arrow_schema = schema.TABLES[name].as_arrow()
        sids = sorted({r["session_id"] for r in rows})
        for attempt in range(8):
            # one table load for the read and the append (PyIceberg itself re-applies an append
            # that meets a newer snapshot, commit.retry.*: the read does not fence concurrent writers)
            table = self.table(name)
            existing = {(r["session_id"], r[key]) for r in self._scan(name, sids, ("session_id", key), table)}
            todo = sorted(
                (r for r in rows if (r["session_id"], r[key]) not in existing), key=lambda r: (r["session_id"], r[key])
            )
            if not todo:
                return {}
            try:
                table.append(pa.Table.from_pylist(todo, schema=arrow_schema))
            except CommitFailedException as exc:
                wait = min(2.0, 0.1 * 2**attempt) * (0.5 + random.random())
                log.info("iceberg commit conflict on %s (%s); retrying in %.2fs", name, exc, wait)
                time.sleep(wait)
                continue
            added: dict[str, int] = {}
            for r in todo:
                added[r["session_id"]] = added.get(r["session_id"], 0) + 1
            return added
        raise RuntimeError(f"could not commit to {name} after 8 attempts")

    def replace_rows(self, name: str, session_id: str, rows: list[dict]) -> None:
        """Make `rows` the session's only rows in the table, in one commit (an overwrite filtered to
        the session; its bucket is the only partition touched)."""
        df = pa.Table.from_pylist(
            sorted(rows, key=lambda r: r.get("seq", r.get("manifest_version", 0))),
            schema=schema.TABLES[name].as_arrow(),
        )
        self.table(name).overwrite(df, overwrite_filter=EqualTo("session_id", session_id))

    def mark_deleted(self, session_id: str, when) -> dict:
        """Remove the session's chunk rows and stamp its sessions rows with deleted_at, each in one
        commit (an overwrite filtered to the session); repeating it changes nothing."""
        chunks = self.table(schema.CHUNKS)
        had_chunks = len(self.rows(schema.CHUNKS, session_id))
        if had_chunks:
            chunks.delete(EqualTo("session_id", session_id))
        if self.rows(schema.INSIGHT, session_id):  # counts only, but of a session that is gone
            self.table(schema.INSIGHT).delete(EqualTo("session_id", session_id))
        rows = self.rows(schema.SESSIONS, session_id)
        stamped = [dict(r, deleted_at=r.get("deleted_at") or when) for r in rows]
        if rows and stamped != rows:
            self.replace_rows(schema.SESSIONS, session_id, stamped)
        return {"chunk_rows_removed": had_chunks, "session_rows_marked": len(rows)}

    def expire_snapshots(self, name: str, older_than) -> int:
        """Drop snapshots older than `older_than` from the table's metadata (the current one stays)."""
        table = self.table(name)
        current = table.metadata.current_snapshot_id
        old = [
            s.snapshot_id
            for s in table.metadata.snapshots
            if s.timestamp_ms < older_than.timestamp() * 1000 and s.snapshot_id != current
        ]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
        return len(old)

    def compact(self, name: str, min_files: int = 4) -> dict:
        """Rewrite each partition that has at least `min_files` data files into one file, sorted by
        (session_id, seq), with an overwrite filtered to exactly that partition's sessions. PyIceberg
        has no rewrite-data-files action; a concurrent commit makes the overwrite fail and the
        partition is retried from a fresh read, so no row is ever lost or doubled."""
        rewritten = files_before = files_after = 0
        arrow_schema = schema.TABLES[name].as_arrow()
        sort_keys = [("session_id", "ascending")] + (
            [("seq", "ascending")] if "seq" in arrow_schema.names else [("manifest_version", "ascending")]
        )
        table = self.table(name)
        by_partition: dict = {}
        for task in table.scan().plan_files():
            by_partition.setdefault(tuple(task.file.partition), []).append(task.file.file_path)
        for part, paths in sorted(by_partition.items(), key=lambda kv: str(kv[0])):
            files_before += len(paths)
            if len(paths) < min_files:
                files_after += len(paths)
                continue
            for attempt in range(8):
                table = self.table(name)
                tasks = [t for t in table.scan().plan_files() if tuple(t.file.partition) == part]
                sids = sorted(set().union(*(self._sessions_in(t) for t in tasks)))
                if not sids:
                    break
                data = table.scan(row_filter=In("session_id", sids)).to_arrow().sort_by(sort_keys)
                try:
                    table.overwrite(data.cast(arrow_schema), overwrite_filter=In("session_id", sids))
                    rewritten += 1
                    break
                except CommitFailedException:
                    time.sleep(min(2.0, 0.1 * 2**attempt))
            files_after += sum(1 for t in self.table(name).scan().plan_files() if tuple(t.file.partition) == part)
        return {"partitions_rewritten": rewritten, "files_before": files_before, "files_after": files_after}

    def _sessions_in(self, task) -> set[str]:
        """The session ids in one data file (its partition is a bucket of them)."""
        with self.table(schema.CHUNKS).io.new_input(task.file.file_path).open() as f:
            return set(pq.read_table(f, columns=["session_id"]).column("session_id").to_pylist())
