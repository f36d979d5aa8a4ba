"""The chaos suite's short CI variant (#14): the supervised platform (what `lucid up` runs) with a few
sessions recording, every component killed once with SIGKILL at a random moment - recorder,
pipeline, storage, gateway, Dagster daemon, Dagster webserver, a run worker - then every session
stopped. Nothing may be lost but the recorder's unfinished frames: every session sealed and
verified, no chunk lost, at most ~1 s of video per recorder kill, no duplicate catalog row.
bench/chaos.py (`components`) is the full benchmark; this calls the same code, small."""

import importlib.util
import sys

import pytest

from services.launcher import REPO

spec = importlib.util.spec_from_file_location("bench_chaos", REPO / "bench" / "chaos.py")
chaos = sys.modules["bench_chaos"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(chaos)


@pytest.mark.e2e
@pytest.mark.slow
def test_every_component_killed_once_loses_nothing_but_the_recorders_last_second(tmp_path):
    report = chaos.run_components(
        sessions=3,
        kills_each=1,
        size="160x120",
        fps=10,
        chunk_seconds=2,
        gap=(2, 6),
        seed=14,
        catch_up_timeout=None,  # the next kill does not wait for the work to catch up: all is checked at the end
        data_dir=tmp_path,
    )
    assert sorted(k["component"] for k in report["kills"]) == sorted(chaos.COMPONENTS)
    assert report["sessions_total"] >= 6  # the recorder kill ended the first three; three more recorded
    assert report["sessions_sealed_verified"] == report["sessions_total"], report["not_sealed"]
    assert report["chunks_registered"] > 0
    assert report["chunks_lost"] == 0, report
    assert report["duplicate_catalog_rows"] == 0
    lost = report["video_lost_per_recorder_kill_s"]
    assert lost["sessions"] == 3 and lost["max"] <= 1.0, lost
