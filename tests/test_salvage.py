"""A recorder crash loses at most ~1 s, and dropped frames are visible (#14).

Salvage: the recorder's muxer flushes every frame to the segment file as it is muxed and declares
each PES length, so a segment cut short by SIGKILL is kept up to its last complete frame
(`mpegts.salvage`, recovery's `salvage_partial`), every frame of it decodes with PyAV, and it is
registered as a `salvaged` chunk, stored, Merkle'd and verified like any other. Drops: frames the
capture could not take (a starved recorder) are counted per chunk and per session."""

import os
import random
import signal
import time
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.video.frame import PictureType

from lucid_assets.core import mpegts
from services.recorder.capture import SegmentWriter, open_encoder
from services.recorder.recovery import decoded_frames, salvage_partial, segment_of
from tests.helpers import create, decode, download, wait_state

FPS = 10


def write_partial(directory: Path, frames: int, *, skip: range = range(0)) -> tuple[Path, list[int]]:
    """A segment the real writer is still writing (never closed, as a killed recorder leaves it):
    its path and the file's size after each frame was muxed. Frames whose slots are in `skip` are
    dropped (a gap in pts, noted to the writer as the capture does)."""
    codec = open_encoder({"width": 320, "height": 240, "fps": FPS, "encoders": ["libx264"]}, FPS * 100)
    writer = SegmentWriter(directory, codec, FPS, lambda seg: None)
    src = av.open(f"testsrc2=size=320x240:rate={FPS},format=yuv420p", format="lavfi")
    sizes, slot = [], 0
    for frame in src.decode(video=0):
        if len(sizes) == frames:
            break
        dropped = 0
        while slot in skip:
            slot, dropped = slot + 1, dropped + 1
        writer.dropped(slot, dropped)
        frame.pts, frame.time_base = slot, Fraction(1, FPS)
        frame.pict_type = PictureType.I if slot == 0 else PictureType.NONE
        for pkt in codec.encode(frame):
            writer.write(pkt)
        sizes.append(writer.tmp.stat().st_size)
        slot += 1
    src.close()
    return writer.tmp, sizes


def test_every_muxed_frame_is_in_the_file_at_once(tmp_path):
    """No muxer buffer holds frames back: what a SIGKILL can lose is only what was not encoded yet."""
    _, sizes = write_partial(tmp_path, 20)
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[0] > 0 and all(s % mpegts.PACKET == 0 for s in sizes)


def test_salvage_keeps_exactly_the_complete_frames_at_any_cut(tmp_path):
    partial, sizes = write_partial(tmp_path, 25)
    data = partial.read_bytes()
    rng = random.Random(14)
    cuts = (
        {0, 100, len(data)} | {s + d for s in sizes for d in (-1, 0, 1)} | {rng.randrange(len(data)) for _ in range(40)}
    )
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        got = mpegts.salvage(data[:cut])
        whole = sum(1 for s in sizes if s <= cut)
        assert got.units == whole, (cut, got, whole)
        assert got.size + got.cut == cut and got.size % mpegts.PACKET == 0
        if whole:  # from the end of the last whole frame up to the next frame's PES (PSI between is kept)
            assert sizes[whole - 1] <= got.size <= (sizes + [len(data)])[whole], (cut, got)
        else:
            assert got.size == 0
    for cut in sorted(rng.sample(sorted(cuts - {0, 100}), 8)):  # and PyAV decodes every one of them
        got = mpegts.salvage(data[:cut])
        (tmp_path / "cut.ts").write_bytes(data[: got.size])
        if got.units:
            assert decoded_frames(tmp_path / "cut.ts") == got.units, cut


def test_salvage_refuses_what_is_not_a_segment():
    assert mpegts.salvage(b"") == mpegts.Salvage(0, 0, 0)
    assert mpegts.salvage(b"\x47" + bytes(500)).units == 0
    assert mpegts.salvage(os.urandom(188 * 50)).units == 0


def test_a_partial_segment_is_salvaged_under_its_final_name(tmp_path):
    partial, sizes = write_partial(tmp_path, 23, skip=range(5, 8))
    data = partial.read_bytes()
    partial.write_bytes(data[: sizes[-1] - 1000])  # the last frame torn
    final = salvage_partial(partial)
    assert final == tmp_path / "00000000.ts" and not partial.exists()
    assert not list(tmp_path.glob(".*"))
    frames = decode(final)
    assert len(frames) == 22  # the torn 23rd frame is cut, every other one decodes
    seg = segment_of(final, FPS, salvaged=True)
    # slots 0..24 minus 5..7 dropped: 22 frames over a 25-frame span
    assert (seg.seq, seg.frames, seg.duration_ms, seg.dropped_frames, seg.salvaged) == (0, 22, 2500, 3, True)
    assert round((frames[-1].time - frames[0].time) * FPS) + 1 == 25


def test_a_partial_segment_without_a_whole_frame_is_discarded(tmp_path):
    partial, sizes = write_partial(tmp_path, 1)
    partial.write_bytes(partial.read_bytes()[: sizes[0] - 500])
    assert salvage_partial(partial) is None
    assert list(tmp_path.iterdir()) == []


def test_the_writer_counts_drops_in_the_segment_that_holds_them(tmp_path):
    codec = open_encoder({"width": 160, "height": 120, "fps": FPS, "encoders": ["libx264"]}, FPS)
    segs = []
    writer = SegmentWriter(tmp_path, codec, FPS, segs.append)
    src = av.open(f"testsrc=size=160x120:rate={FPS},format=yuv420p", format="lavfi")
    slots = [s for s in range(30) if s not in (4, 5, 12, 25, 26, 27)]  # 2 + 1 dropped in 0..19, 3 in 20..29
    for slot, frame in zip(slots, src.decode(video=0)):
        prev = slots[slots.index(slot) - 1] if slot else -1
        writer.dropped(slot, slot - prev - 1)
        frame.pts, frame.time_base = slot, Fraction(1, FPS)
        frame.pict_type = PictureType.I if slot in (0, 10, 20) else PictureType.NONE
        for pkt in codec.encode(frame):
            writer.write(pkt)
    for pkt in codec.encode(None):
        writer.write(pkt)
    writer.close_segment()
    src.close()
    assert [(s.frames, s.dropped_frames) for s in segs] == [(8, 2), (9, 1), (7, 3)]
    assert [segment_of(s.path, FPS).dropped_frames for s in segs] == [2, 1, 3]


@pytest.mark.e2e
def test_sigkill_mid_segment_salvages_the_partial_segment(platform, admin, tmp_path):
    """The real recorder killed with SIGKILL 2-3 s into a 5 s segment, restarted: the partial
    segment becomes a salvaged chunk that decodes fully, the session seals and verifies, and the
    video lost (kill time - recording start - time of the last salvaged frame) is reported."""
    sid = create(admin, "killed mid-segment", fps=FPS, chunk_seconds=5, width=320, height=240)
    assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
    time.sleep(7 + random.uniform(0, 1))
    killed_at = time.time()
    platform.restart("recorder", signal.SIGKILL)
    s = wait_state(admin, sid, {"sealed", "failed"}, timeout=240)
    assert s["state"] == "sealed", s["failure_reason"]
    assert "salvaged up to its last complete frame" in s["end_reason"], s["end_reason"]
    chunks = download(admin, sid, tmp_path / "rec.ts")
    assert [c["seq"] for c in chunks] == [0, 1]
    assert [c["salvaged"] for c in chunks] == [False, True]
    assert chunks[1]["frames"] > 0
    frames = decode(tmp_path / "rec.ts")
    assert len(frames) == sum(c["frames"] for c in chunks)  # every frame of the salvaged chunk decodes
    one = admin.get(f"/v1/sessions/{sid}/chunks/1").content
    (tmp_path / "1.ts").write_bytes(one)
    assert decoded_frames(tmp_path / "1.ts") == chunks[1]["frames"]
    recorded = float(frames[-1].time - frames[0].time) + 1 / FPS
    assert s["duration_ms"] == sum(c["duration_ms"] for c in chunks)
    assert abs(s["duration_ms"] / 1000 - recorded) <= 1 / FPS
    # lost: from the moment the last salvaged frame was captured to the kill (an upper bound: the
    # first frame is captured a little after started_at; a paced source's frame k comes at k / fps)
    started = datetime.fromisoformat(s["started_at"]).timestamp()
    lost = killed_at - started - float(frames[-1].time - frames[0].time)
    print(f"\nrecorder SIGKILL at {killed_at - started:.2f} s: {recorded:.2f} s recorded, {lost:.2f} s lost")
    assert lost < killed_at - started - 5  # less than the partial segment's length in time: it was kept
    assert not list((Path(platform.data_dir) / "recordings" / sid).glob(".*partial*"))
    report = admin.post(f"/v1/sessions/{sid}/verify").json()
    assert report.get("ok"), report


@pytest.mark.e2e
def test_dropped_frames_reach_the_chunks_and_the_session(platform, admin):
    """A recorder starved of CPU (stopped with SIGSTOP for 2 s, as a host overloaded for 2 s) drops
    the frame slots it missed: counted in the chunk that holds the gap, summed in the session."""
    sid = create(admin, "starved", fps=FPS, chunk_seconds=2)
    assert admin.post(f"/v1/sessions/{sid}/start").status_code == 200
    time.sleep(3)
    recorder = platform.procs["recorder"].pid
    os.killpg(recorder, signal.SIGSTOP)
    try:
        time.sleep(2)
    finally:
        os.killpg(recorder, signal.SIGCONT)
    time.sleep(3)
    assert admin.post(f"/v1/sessions/{sid}/stop").status_code == 200
    s = wait_state(admin, sid, {"sealed", "failed"})
    assert s["state"] == "sealed", s["failure_reason"]
    chunks = admin.get(f"/v1/sessions/{sid}/chunks").json()["items"]
    assert s["dropped_frames"] == sum(c["dropped_frames"] for c in chunks)
    assert s["dropped_frames"] >= FPS  # ~2 s of slots missed
    assert sum(1 for c in chunks if c["dropped_frames"]) >= 1 and not any(c["salvaged"] for c in chunks)
    print(f"\n{s['dropped_frames']} frames dropped over {len(chunks)} chunks")
