"""The Iceberg adapter on a real SqlCatalog in a temp dir and on a real REST catalog over S3
(SeaweedFS): idempotent appends, lookups that prune to the session's bucket, deletion stamps,
compaction, and tables created once however many processes start at once."""

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa
from pyiceberg.expressions import EqualTo

from lucid_assets.core import catalog
from lucid_assets.lake import Lake
from tests.conftest import settings_for
from tests.pg import fresh_database

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def rows(sid: str, n: int) -> list[dict]:
    return [
        {
            "session_id": sid,
            "seq": i,
            "raw_sha256": "a" * 64,
            "envelope_sha256": "b" * 64,
            "raw_size": 10,
            "stored_size": 90,
            "compressed": False,
            "key_version": 1,
            "envelope_uri": f"file:///x/{i}",
            "duration_ms": 1000,
            "recorded_at": NOW,
            "stored_at": NOW,
        }
        for i in range(n)
    ]


def test_appends_are_idempotent_and_lookups_prune(tmp_path, backend):
    lake = Lake.from_settings(settings_for(tmp_path, backend))
    sids = [str(uuid.uuid4()) for _ in range(24)]
    for sid in sids:
        assert lake.append_missing(catalog.CHUNKS, sid, rows(sid, 3), key="seq") == 3
    assert lake.append_missing(catalog.CHUNKS, sids[0], rows(sids[0], 4), key="seq") == 1  # only seq 3 is new
    assert lake.append_missing(catalog.CHUNKS, sids[0], rows(sids[0], 4), key="seq") == 0
    assert [r["seq"] for r in lake.rows(catalog.CHUNKS, sids[0])] == [0, 1, 2, 3]
    table = lake.table(catalog.CHUNKS)
    total = len(list(table.scan().plan_files()))
    planned = list(table.scan(row_filter=EqualTo("session_id", sids[5])).plan_files())
    assert total >= 24 and len(planned) <= total // 8, (len(planned), total)  # one bucket of 16, not a full scan
    assert all(t.file.partition[0] == planned[0].file.partition[0] for t in planned)


def test_mark_deleted_removes_chunk_rows_and_stamps_the_session(tmp_path, backend):
    lake = Lake.from_settings(settings_for(tmp_path, backend))
    sid, keep = str(uuid.uuid4()), str(uuid.uuid4())
    for s in (sid, keep):
        lake.append_missing(catalog.CHUNKS, s, rows(s, 2), key="seq")
        lake.append_missing(
            catalog.SESSIONS,
            s,
            [
                {
                    "session_id": s,
                    "name": "n",
                    "manifest_version": 1,
                    "chunk_count": 2,
                    "raw_bytes": 20,
                    "stored_bytes": 180,
                    "duration_ms": 2000,
                    "merkle_root": "c" * 64,
                    "manifest_uri": "file:///m",
                    "manifest_sha256": "d" * 64,
                    "signing_key_id": "e" * 16,
                    "encoder": "libx264",
                    "started_at": NOW,
                    "stopped_at": NOW,
                    "sealed_at": NOW,
                    "deleted_at": None,
                }
            ],
            key="manifest_version",
        )
    assert lake.mark_deleted(sid, NOW) == {"chunk_rows_removed": 2, "session_rows_marked": 1}
    assert lake.rows(catalog.CHUNKS, sid) == [] and len(lake.rows(catalog.CHUNKS, keep)) == 2
    assert lake.rows(catalog.SESSIONS, sid)[0]["deleted_at"] == NOW
    assert lake.rows(catalog.SESSIONS, keep)[0]["deleted_at"] is None
    assert lake.mark_deleted(sid, NOW) == {"chunk_rows_removed": 0, "session_rows_marked": 1}  # repeatable


def test_concurrent_writers_of_one_table_all_land(tmp_path, backend):
    """Several processing workers (issue 17: claims let batch runs overlap) and a shred commit to the
    same table at once: PyIceberg re-applies a commit that meets a newer snapshot (our tables set
    commit.retry.num-retries=10), so no writer fails and no row is lost or doubled."""
    lake = Lake.from_settings(settings_for(tmp_path, backend))
    doomed = [str(uuid.uuid4()) for _ in range(2)]
    for sid in doomed:
        lake.append_missing(catalog.CHUNKS, sid, rows(sid, 2), key="seq")
    writers = [str(uuid.uuid4()) for _ in range(4)]
    errors = []

    def work(i: int) -> None:
        try:
            if i < len(writers):
                for n in (1, 3):  # a session's rows replaced twice (a forced reprocess), then appended to
                    lake.replace_rows(catalog.CHUNKS, writers[i], rows(writers[i], n))
                lake.append_missing(catalog.CHUNKS, writers[i], rows(writers[i], 4), key="seq")
            else:
                lake.mark_deleted(doomed[i - len(writers)], NOW)
        except Exception as exc:  # a failed run, or a shred answered 500
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(writers) + len(doomed))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    found = lake.keys_by_session(catalog.CHUNKS, writers + doomed, "seq")
    assert {sid: sorted(seqs) for sid, seqs in found.items()} == {sid: [0, 1, 2, 3] for sid in writers}


def test_compaction_rewrites_small_files_without_changing_results(tmp_path, backend):
    lake = Lake.from_settings(settings_for(tmp_path, backend))
    sids = [str(uuid.uuid4()) for _ in range(12)]
    for sid in sids:
        for seq in range(3):  # one small file per chunk, as live batches leave them
            lake.append_missing(catalog.CHUNKS, sid, rows(sid, seq + 1), key="seq")
    table = lake.table(catalog.CHUNKS)
    before = table.scan().to_arrow().sort_by([("session_id", "ascending"), ("seq", "ascending")])
    files_before = len(list(table.scan().plan_files()))
    result = lake.compact(catalog.CHUNKS, min_files=2)
    table = lake.table(catalog.CHUNKS)
    after = table.scan().to_arrow().sort_by([("session_id", "ascending"), ("seq", "ascending")])
    assert after.equals(before)  # the same rows, values and types
    assert result["files_before"] == files_before == 36
    assert result["files_after"] == len(list(table.scan().plan_files())) < 16  # at most one file per bucket
    assert [r["seq"] for r in lake.rows(catalog.CHUNKS, sids[3])] == [0, 1, 2]  # lookups still prune and work
    assert lake.expire_snapshots(catalog.CHUNKS, datetime.now(UTC)) > 30
    assert len(lake.table(catalog.CHUNKS).metadata.snapshots) == 1
    assert (
        lake.table(catalog.CHUNKS)
        .scan()
        .to_arrow()
        .sort_by([("session_id", "ascending"), ("seq", "ascending")])
        .equals(before)
    )


# --- table creation: once, however many runs load the lake ----------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_uri(request, tmp_path):
    """A fresh, empty SQL catalog database: SQLite (embedded) or a real PostgreSQL (compose)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url"), "lake") as url:
        yield url


@pytest.fixture
def db_errors():
    """Every error a database raised to any SQLAlchemy engine while the test ran (PostgreSQL logs
    each one, e.g. `duplicate key value violates unique constraint "iceberg_tables_pkey"`)."""
    seen: list[str] = []

    def record(ctx):
        seen.append(str(ctx.original_exception).splitlines()[0])

    sa.event.listen(sa.engine.Engine, "handle_error", record)
    yield seen
    sa.event.remove(sa.engine.Engine, "handle_error", record)


def metadata_files(table) -> tuple[set[str], set[str]]:
    """(the metadata files in the table's metadata folder, the ones its current metadata names)."""
    folder = Path(urlparse(table.metadata.location).path) / "metadata"
    on_disk = {p.name for p in folder.glob("*.metadata.json")}
    named = {Path(urlparse(m.metadata_file).path).name for m in table.metadata.metadata_log}
    return on_disk, named | {Path(urlparse(table.metadata_location).path).name}


def test_tables_are_created_once_however_many_runs_load_them(catalog_uri, tmp_path, db_errors):
    warehouse = (tmp_path / "warehouse").as_uri()
    Lake.sql(catalog_uri, warehouse)  # PyIceberg's first connection to an empty database probes for its own tables
    db_errors.clear()
    for run in range(5):  # each processing run (and each service start) is a new process with its own Lake
        lake = Lake.sql(catalog_uri, warehouse)
        sid = str(uuid.uuid4())
        assert lake.append_missing(catalog.CHUNKS, sid, rows(sid, 1), key="seq") == 1, run
    assert db_errors == []
    for name in catalog.TABLES:
        table = Lake.sql(catalog_uri, warehouse).table(name)
        on_disk, named = metadata_files(table)
        assert len([f for f in on_disk if f.startswith("00000-")]) == 1, sorted(on_disk)
        assert on_disk == named, sorted(on_disk - named)  # no orphan metadata
    assert len(Lake.sql(catalog_uri, warehouse).table(catalog.CHUNKS).scan().to_arrow()) == 5
    assert db_errors == []


def test_a_creation_race_ends_with_one_table_for_everyone(catalog_uri, tmp_path):
    warehouse = (tmp_path / "warehouse").as_uri()
    Lake.sql(catalog_uri, warehouse)  # PyIceberg makes its own catalog tables (not ours to race)
    start = threading.Barrier(4, timeout=120)
    locations: list[dict[str, str]] = []
    failures: list[BaseException] = []

    def first_start():
        try:
            lake = Lake.sql(catalog_uri, warehouse)
            start.wait()
            lake.ensure_tables()
            locations.append({n: lake.catalog.load_table(n).metadata_location for n in catalog.TABLES})
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=first_start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(locations) == 4 and all(loc == locations[0] for loc in locations)  # the winner's tables
    lake = Lake.sql(catalog_uri, warehouse)
    assert sorted(n for _, n in lake.catalog.list_tables(catalog.NAMESPACE)) == sorted(
        n.split(".")[1] for n in catalog.TABLES
    )
    sid = str(uuid.uuid4())
    assert lake.append_missing(catalog.CHUNKS, sid, rows(sid, 2), key="seq") == 2
