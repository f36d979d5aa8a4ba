"""Leftovers of a process killed mid-write (`.<name>.<uuid hex>.tmp` of files.atomic_write) are
removed from the chunk store when the storage service starts and by the reconcile sensor, once
they are older than any live write; nothing else is touched."""

import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from lucid_assets.files import clean_stale_tmp
from lucid_assets.settings import get_settings
from tests.conftest import free_port

HOUR = 3600


def _litter(root: Path) -> dict[str, Path]:
    """A killed run's leftovers beside files that must stay."""
    sid = root / str(uuid.uuid4())
    files = {
        "stale_dek": sid / f".dek.json.{uuid.uuid4().hex}.tmp",
        "stale_envelope": sid / "chunks" / f".00000003.luce.{uuid.uuid4().hex}.tmp",
        "fresh": sid / "chunks" / f".00000004.luce.{uuid.uuid4().hex}.tmp",  # a write in progress
        "not_ours_short": sid / ".dek.json.tmp",
        "not_ours_hidden": sid / f"dek.json.{uuid.uuid4().hex}.tmp",
        "not_ours_upper": sid / f".dek.json.{uuid.uuid4().hex.upper()}.tmp",
        "envelope": sid / "chunks" / "00000003.luce",
        "dek": sid / "dek.json",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    old = time.time() - HOUR
    for path in files.values():
        if path is not files["fresh"]:
            os.utime(path, (old, old))
    return files


def _left(files: dict[str, Path]) -> set[str]:
    return {name for name, path in files.items() if path.exists()}


KEPT = {"fresh", "not_ours_short", "not_ours_hidden", "not_ours_upper", "envelope", "dek"}


def test_only_stale_atomic_write_leftovers_go(tmp_path):
    files = _litter(tmp_path)
    removed = clean_stale_tmp(tmp_path, older_than=600)
    assert sorted(removed) == sorted([files["stale_dek"], files["stale_envelope"]])
    assert _left(files) == KEPT
    assert clean_stale_tmp(tmp_path / "missing") == []


def test_storage_start_cleans_the_chunk_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LUCID_GENERATE_KEYS", "1")
    get_settings.cache_clear()
    try:
        files = _litter(Path(get_settings().chunk_store_location))
        from services.storage.app import create_app

        create_app()
        assert _left(files) == KEPT
    finally:
        get_settings.cache_clear()


def test_reconcile_sensor_cleans_even_with_the_pipeline_down(tmp_path, monkeypatch):
    """The sensor with the code location's own resources (from settings), its pipeline unreachable."""
    from lucid_assets.defs.housekeeping.reconcile import reconcile
    from lucid_assets.defs.resources import defs

    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LUCID_GENERATE_KEYS", "1")
    monkeypatch.setenv("LUCID_PIPELINE_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    try:
        files = _litter(Path(get_settings().chunk_store_location))
        resources = defs().resources
        with dg.instance_for_test() as instance:
            context = dg.build_sensor_context(
                instance=instance, resources={"pipeline": resources["pipeline"], "vault": resources["vault"]}
            )
            with pytest.raises(Exception, match="127.0.0.1|connect|refused"):
                reconcile(context)  # the pipeline is unreachable: the housekeeping happened first anyway
        assert _left(files) == KEPT
    finally:
        get_settings.cache_clear()
