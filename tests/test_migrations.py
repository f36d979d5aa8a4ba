"""Alembic migrations of the pipeline registry and the API keys, on SQLite and a real PostgreSQL:
a database left by Lucid 0.1 (tests/fixtures/released_v0_1, a frozen snapshot) upgrades with every
row intact, an empty database upgrades to exactly the models' schema, both environments share one
database (the compose stack), and a database that does not match the baseline is refused untouched."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Column, MetaData, String, Table, create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from lucid_assets.core import audit
from services.common import migrate

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "released_v0_1"
ROWS = json.loads((FIXTURE / "rows.json").read_text())
OWN_TABLES = {"pipeline": ["sessions", "chunks", "audit_log", "work_queue"], "api": ["api_keys"]}
LATER_TABLES = ["shares", "search_log"]  # made by revisions after 0.1 (no rows in the 0.1 fixture)
LATER_PIPELINE = ["recorders", "work_claims"]  # likewise, in the pipeline's database (issue 17)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A new, empty database: a SQLite file, or a database of its own on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lucid.db'}"
        return
    server = request.getfixturevalue("postgres_url")  # skipped (or failed on CI) as conftest decides
    name = f"lucid_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def connect(url: str):
    return create_engine(url, poolclass=NullPool)


def load_released(url: str, db: str) -> None:
    """Run the 0.1 snapshot's SQL (DDL of create_all, then its rows) through the driver as is."""
    eng = connect(url)
    sql = (FIXTURE / f"{db}.{eng.dialect.name}.sql").read_text()
    with eng.connect() as conn:
        raw = conn.connection.driver_connection
        if eng.dialect.name == "sqlite":
            raw.executescript(sql)
        else:
            with raw.cursor() as cur:
                cur.execute(sql)
            raw.commit()
    eng.dispose()


def tables(url: str) -> set[str]:
    eng = connect(url)
    with eng.connect() as conn:
        names = set(inspect(conn).get_table_names())
    eng.dispose()
    return names


def raw_rows(url: str, db: str) -> dict[str, list[tuple]]:
    """The fixture's columns of every row as the driver returns them, in primary key order."""
    eng, out = connect(url), {}
    with eng.connect() as conn:
        for table in OWN_TABLES[db]:
            pk = ", ".join(inspect(conn).get_pk_constraint(table)["constrained_columns"])
            q = f"SELECT {', '.join(ROWS[table][0])} FROM {table} ORDER BY {pk}"
            out[table] = [tuple(r) for r in conn.execute(text(q))]
    eng.dispose()
    return out


def plain(v):
    if isinstance(v, datetime):  # SQLite keeps UTC without an offset, as SQLModel's UTCDateTime wrote it
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return v


def typed_rows(url: str, db: str) -> dict[str, list[dict]]:
    """Every row through reflected column types, in rows.json's form (no model import: models move)."""
    eng, out = connect(url), {}
    with eng.connect() as conn:
        for table in OWN_TABLES[db]:
            t = Table(table, MetaData(), autoload_with=conn)
            found = conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()
            out[table] = [{k: plain(r[k]) for k in ROWS[table][0]} for r in found]
    eng.dispose()
    return out


def versions(url: str, db: str) -> list[str]:
    eng = connect(url)
    with eng.connect() as conn:
        found = [r[0] for r in conn.execute(text(f"SELECT version_num FROM alembic_version_{db}"))]
    eng.dispose()
    return found


def head(db: str) -> str:
    return migrate.script(db).get_current_head()


def chain_problems(audit_rows: list[dict]) -> list[str]:
    problems = []
    for sid in sorted({r["session_id"] for r in audit_rows}):
        chain = sorted((r for r in audit_rows if r["session_id"] == sid), key=lambda r: r["idx"])
        problems += [f"{sid}: {p}" for p in audit.verify_chain(chain)]
    return problems


@pytest.mark.parametrize("db", ["pipeline", "api"])
def test_released_database_upgrades_with_every_row_intact(url, db):
    load_released(url, db)
    before = raw_rows(url, db)
    result = migrate.upgrade(url, db)
    later = [s.revision for s in reversed(list(migrate.script(db).walk_revisions()))][1:]
    assert (result.before, result.after, result.applied, result.adopted) == (None, head(db), later, True)
    assert versions(url, db) == [head(db)]
    assert migrate.model_diff(url, db) == []  # the adopted 0.1 schema, upgraded, is the models' schema
    assert raw_rows(url, db) == before  # not a byte of the stored values moved
    assert typed_rows(url, db) == {t: ROWS[t] for t in OWN_TABLES[db]}
    if db == "pipeline":
        assert len(ROWS["audit_log"]) > 10 and chain_problems(typed_rows(url, db)["audit_log"]) == []
    again = migrate.upgrade(url, db)
    assert (again.before, again.after, again.applied, again.adopted) == (head(db), head(db), [], False)
    assert again.line() == f"{db} database: already at {head(db)}"
    assert raw_rows(url, db) == before


def test_the_fixture_is_what_0_1_wrote():
    """The frozen rows are realistic: sessions in several states, chunks both registered and stored,
    work items, two keys one revoked, and an audit chain that verifies."""
    assert {r["state"] for r in ROWS["sessions"]} == {"sealed", "recording", "failed", "created"}
    assert {r["state"] for r in ROWS["chunks"]} == {"registered", "stored"}
    assert {r["reason"] for r in ROWS["work_queue"]} == {"chunks", "final"}
    assert sorted(r["revoked_at"] is None for r in ROWS["api_keys"]) == [False, True]
    assert chain_problems(ROWS["audit_log"]) == []


def test_empty_database_upgrades_to_exactly_the_models(url):
    lines = migrate.upgrade_all(url, url)
    for db, line in zip(["pipeline", "api"], lines):
        n = len(list(migrate.script(db).walk_revisions()))
        assert line == f"{db} database: at {head(db)} ({n} migration{'' if n == 1 else 's'} applied)"
    assert tables(url) == {
        "alembic_version_pipeline",
        "alembic_version_api",
        *OWN_TABLES["pipeline"],
        *LATER_PIPELINE,
        "api_keys",
        *LATER_TABLES,
    }
    # No dialect noise to excuse: the baseline spells SQLModel's AutoString as sa.String() and its
    # UTCDateTime as sa.DateTime(timezone=True), which Alembic compares by their impl (VARCHAR,
    # TIMESTAMP WITH TIME ZONE / DATETIME); the SERIAL defaults of PostgreSQL are server defaults, not
    # compared; the unnamed UNIQUE (session_id, idx) matches by its columns on both dialects.
    assert migrate.model_diff(url, "pipeline") == []
    assert migrate.model_diff(url, "api") == []
    assert migrate.upgrade(url, "pipeline").applied == [] and migrate.upgrade(url, "api").applied == []


def test_a_model_change_without_a_migration_is_caught(url, monkeypatch):
    """The comparison above is not vacuous: a column added to a model and nowhere else shows up."""
    migrate.upgrade(url, "pipeline")
    md = migrate.target_metadata("pipeline")
    md.tables["sessions"].append_column(Column("operator_note", String(), nullable=True))
    changed = dataclasses.replace(migrate.TARGETS["pipeline"], tables=lambda: list(md.tables.values()))
    monkeypatch.setitem(migrate.TARGETS, "pipeline", changed)
    diff = migrate.model_diff(url, "pipeline")
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "sessions", "operator_note")]


def test_both_environments_in_one_database(url):
    migrate.upgrade(url, "pipeline")
    assert tables(url) == {"alembic_version_pipeline", *OWN_TABLES["pipeline"], *LATER_PIPELINE}
    load_released(url, "api")  # the compose database: 0.1's api_keys beside a migrated registry
    pipeline_rows = raw_rows(url, "pipeline")
    assert migrate.upgrade(url, "api").adopted
    assert tables(url) == {
        "alembic_version_pipeline",
        "alembic_version_api",
        *OWN_TABLES["pipeline"],
        *LATER_PIPELINE,
        "api_keys",
        *LATER_TABLES,
    }
    assert versions(url, "pipeline") == [head("pipeline")] and versions(url, "api") == [head("api")]
    assert raw_rows(url, "pipeline") == pipeline_rows
    assert typed_rows(url, "api") == {"api_keys": ROWS["api_keys"]}
    assert migrate.model_diff(url, "pipeline") == [] and migrate.model_diff(url, "api") == []
    assert migrate.upgrade_all(url, url) == [
        f"pipeline database: already at {head('pipeline')}",
        f"api database: already at {head('api')}",
    ]


def test_both_released_databases_in_one_database_are_adopted(url):
    load_released(url, "pipeline")
    load_released(url, "api")
    before = {db: raw_rows(url, db) for db in OWN_TABLES}
    lines = migrate.upgrade_all(url, url)
    assert all("existing 0.1 tables adopted as 0001_baseline" in line for line in lines), lines
    assert {db: raw_rows(url, db) for db in OWN_TABLES} == before


def snapshot(url: str) -> tuple:
    """Every table with its columns and rows: what `nothing written` means."""
    eng, out = connect(url), []
    with eng.connect() as conn:
        insp = inspect(conn)
        for table in sorted(insp.get_table_names()):
            cols = [c["name"] for c in insp.get_columns(table)]
            out.append((table, cols, sorted(map(repr, conn.execute(text(f"SELECT * FROM {table}"))))))
    eng.dispose()
    return tuple(out)


def test_released_tables_missing_a_baseline_column_are_refused_untouched(url):
    load_released(url, "pipeline")
    eng = connect(url)
    with eng.begin() as conn:
        conn.execute(text("ALTER TABLE chunks DROP COLUMN stored_at"))
    eng.dispose()
    before = snapshot(url)
    with pytest.raises(migrate.MigrationError) as err:
        migrate.upgrade(url, "pipeline")
    msg = str(err.value)
    assert "table chunks lacks column stored_at" in msg and "Nothing was changed" in msg
    assert "no alembic_version_pipeline table" in msg
    assert snapshot(url) == before


def test_released_database_missing_a_table_is_refused_untouched(url):
    eng = connect(url)
    with eng.begin() as conn:  # a half-made registry: sessions only
        conn.execute(text("CREATE TABLE sessions (id VARCHAR NOT NULL PRIMARY KEY, name VARCHAR NOT NULL)"))
    eng.dispose()
    before = snapshot(url)
    with pytest.raises(migrate.MigrationError, match="table audit_log is missing"):
        migrate.upgrade(url, "pipeline")
    assert snapshot(url) == before


def test_a_revision_from_a_newer_lucid_is_refused(url):
    migrate.upgrade(url, "api")
    eng = connect(url)
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version_api SET version_num = '0099_from_the_future'"))
    eng.dispose()
    with pytest.raises(migrate.MigrationError, match="does not know"):
        migrate.upgrade(url, "api")
    assert versions(url, "api") == ["0099_from_the_future"]


def test_pipeline_app_serves_the_upgraded_released_database(url, tmp_path, monkeypatch, request):
    from lucid_assets.settings import get_settings
    from lucid_assets.trust import make_token_files, read_token
    from services.pipeline.app import create_app

    load_released(url, "pipeline")
    migrate.upgrade(url, "pipeline")
    make_token_files(tmp_path / "service")  # the gateway's credentials, as the embedded default makes them
    monkeypatch.setenv("LUCID_SERVICE_KEYS_DIR", str(tmp_path / "service"))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # after monkeypatch restores the environment
    gateway = {"Authorization": f"Bearer {read_token(tmp_path / 'service' / 'api.token')}", "X-Lucid-Actor": "key:t"}
    with TestClient(create_app(url), headers=gateway) as c:
        listed = c.get("/sessions").json()
        assert listed["total"] == len(ROWS["sessions"])
        assert {s["id"] for s in listed["items"]} == {s["id"] for s in ROWS["sessions"]}
        for s in ROWS["sessions"]:
            events = c.get(f"/sessions/{s['id']}/events").json()["items"]
            expected = sorted((r for r in ROWS["audit_log"] if r["session_id"] == s["id"]), key=lambda r: r["idx"])
            assert events == [{"entry": r["entry"], "prev_hash": r["prev_hash"], "hash": r["hash"]} for r in expected]
            assert audit.verify_chain(events) == []
        created = c.post("/sessions", json={"name": "after the upgrade"})  # the sequences carried over
        assert created.status_code == 201, created.text
        assert audit.verify_chain(c.get(f"/sessions/{created.json()['id']}/events").json()["items"]) == []


def test_a_failed_migration_leaves_the_database_as_it_was(url):
    """One transaction covers the run on both dialects: the baseline fails at its first index (the
    name is taken) after creating the sessions table, and the table goes with the failure."""
    eng = connect(url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE other (state VARCHAR)"))
        conn.execute(text("CREATE INDEX ix_sessions_state ON other (state)"))
    eng.dispose()
    before = snapshot(url)
    with pytest.raises(DBAPIError, match="ix_sessions_state"):
        migrate.upgrade(url, "pipeline")
    assert snapshot(url) == before


def test_services_starting_together_migrate_once(url):
    """Two processes (two services of the compose stack) upgrading one empty database at once."""
    code = "import os, services.common.migrate as m; print(m.upgrade(os.environ['URL'], 'pipeline').applied)"
    env = {**os.environ, "URL": url}  # not argv: a URL may hold a password
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    every = [r.revision for r in reversed(list(migrate.script("pipeline").walk_revisions()))]
    assert outs == sorted(["[]", str(every)])
    assert versions(url, "pipeline") == [head("pipeline")]


def test_chunks_registered_before_0003_read_as_not_dropped_nor_salvaged(url):
    """0003 adds chunks.dropped_frames and chunks.salvaged: 0.1's chunk rows get 0 and false."""
    load_released(url, "pipeline")
    migrate.upgrade(url, "pipeline")
    eng = connect(url)
    with eng.connect() as conn:
        found = conn.execute(text("SELECT dropped_frames, salvaged FROM chunks")).all()
    eng.dispose()
    assert len(found) == len(ROWS["chunks"]) > 0
    assert {(d, bool(s)) for d, s in found} == {(0, False)}


def test_list_pages_are_stable_when_sessions_share_a_creation_time(url, tmp_path, monkeypatch, request):
    """Sessions made in the same instant (a batch import, a coarse clock) page by id after time:
    every offset page holds different sessions and together they are all of them (PostgreSQL's
    top-N sort is not stable: without the tie-breaker pages repeat and skip sessions)."""
    from sqlmodel import Session as DbSession

    from lucid_assets.settings import get_settings
    from lucid_assets.trust import make_token_files, read_token
    from services.common.db import Database
    from services.pipeline.app import create_app
    from services.pipeline.models import SessionRow

    make_token_files(tmp_path / "service")
    monkeypatch.setenv("LUCID_SERVICE_KEYS_DIR", str(tmp_path / "service"))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    app = create_app(url)
    same = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [str(uuid.uuid4()) for _ in range(60)]
    db = Database(url)
    with DbSession(db.engine) as s:
        s.add_all(SessionRow(id=i, name="same instant", state="created", created_at=same) for i in ids)
        s.commit()
    db.engine.dispose()
    token = read_token(tmp_path / "service" / "api.token")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        seen = []
        for offset in range(0, 60, 7):
            seen += [x["id"] for x in c.get("/sessions", params={"limit": 7, "offset": offset}).json()["items"]]
    assert len(seen) == 60 and sorted(seen) == sorted(ids), f"{len(set(seen))} distinct of {len(seen)} listed"


def test_a_database_outage_is_a_503_callers_wait_out(url, tmp_path, monkeypatch, request):
    """The pipeline's database going away (PostgreSQL restarting or crashed) answers 503
    `database_unavailable`, which the recorder waits out, never a 500 that would end a recording;
    when the database is back the next request is served (stale pooled connections replaced)."""
    if not url.startswith("postgresql"):
        pytest.skip("an outage is staged on the PostgreSQL server")
    from lucid_assets.settings import get_settings
    from lucid_assets.trust import make_token_files, read_token
    from services.pipeline.app import create_app

    make_token_files(tmp_path / "service")
    monkeypatch.setenv("LUCID_SERVICE_KEYS_DIR", str(tmp_path / "service"))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    name = make_url(url).database
    server = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def outage(rename_to: str, rename_from: str) -> None:  # no database by that name: as if it were down
        with server.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{rename_from}'"))
            c.execute(text(f'ALTER DATABASE "{rename_from}" RENAME TO "{rename_to}"'))

    token = read_token(tmp_path / "service" / "api.token")
    with TestClient(create_app(url), headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/sessions").status_code == 200
        outage(f"{name}_away", name)
        try:
            r = c.get("/sessions")
            assert r.status_code == 503 and r.json()["error"] == "database_unavailable", r.text
            assert "password" not in r.text and name not in r.text  # nothing of the connection leaks
        finally:
            outage(name, f"{name}_away")
        assert c.get("/sessions").status_code == 200
    server.dispose()
