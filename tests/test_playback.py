"""The read path's building blocks on real envelopes: every chunk is released as a memoryview
(what HTTP responses and PyAV take), compressed or not; damage stops the stream at that chunk."""

import io
import os
import random
import re
import struct
import uuid

import av
import pytest

from lucid_assets.core import envelope, fmp4, mpegts
from lucid_assets.keyring import Keyring
from lucid_assets.playback import (
    ChunkPlan,
    DamagedChunk,
    Mp4Export,
    NotExportable,
    build_fragment,
    chunk_plan,
    coalesce,
    plain_chunks,
    read_chunk_plan,
)
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore
from tests.helpers import record_segments


def test_plain_chunks_are_memoryviews_and_damage_stops_the_stream(tmp_path):
    keyring = Keyring.load(Settings(data_dir=tmp_path, generate_keys=True))
    store, sid = ChunkStore(tmp_path / "chunks"), str(uuid.uuid4())
    dek = store.data_key(sid, keyring, create=True)
    raw = [b"text " * 50000, os.urandom(300_000), b"more text " * 1000]  # compressed, stored as is, compressed
    for seq, data in enumerate(raw):
        store.write_envelope(sid, seq, envelope.seal(data, dek=dek, session_id=uuid.UUID(sid), seq=seq))
    out = list(plain_chunks(store, keyring, sid, range(3)))
    assert all(isinstance(c, memoryview) for c in out) and [bytes(c) for c in out] == raw
    damaged = bytearray(store.read_envelope(sid, 1))
    damaged[100] ^= 1
    store.write_envelope(sid, 1, bytes(damaged))
    it = plain_chunks(store, keyring, sid, range(3))
    assert bytes(next(it)) == raw[0]
    with pytest.raises(DamagedChunk, match="chunk 1"):
        next(it)


def _boxes(data: bytes, at: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in data[at:end], by their own size fields."""
    out, end = [], len(data) if end is None else end
    while at < end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        assert size >= 8 and at + size <= end, (kind, at, size)
        out.append((kind, at, size))
        at += size
    return out


@pytest.fixture(scope="module")
def mp4_session(tmp_path_factory):
    """Real libx264 segments (the recorder's own encoder setup) sealed into a store."""
    tmp = tmp_path_factory.mktemp("mp4")
    segs = record_segments(tmp / "segs", fps=10, seconds=9, chunk_seconds=2, size=(320, 240))
    keyring = Keyring.load(Settings(data_dir=tmp, generate_keys=True))
    store, sid = ChunkStore(tmp / "chunks"), str(uuid.uuid4())
    dek = store.data_key(sid, keyring, create=True)
    paths = sorted((tmp / "segs").glob("*.ts"))
    for seq, p in enumerate(paths):
        store.write_envelope(sid, seq, envelope.seal(p.read_bytes(), dek=dek, session_id=uuid.UUID(sid), seq=seq))
    return store, keyring, sid, paths, segs


def test_mp4_layout_is_what_gets_built(mp4_session, tmp_path):
    store, keyring, sid, paths, _ = mp4_session
    export = Mp4Export(store, keyring, sid, list(range(len(paths))))
    assert (export.width, export.height) == (320, 240)
    whole = b"".join(export.byte_range(0, export.size - 1))
    assert len(whole) == export.size
    top = _boxes(whole)
    assert [k for k, _, _ in top] == [b"ftyp", b"moov", b"sidx"] + [b"moof", b"mdat"] * len(paths)
    # each fragment starts where the layout says, and the sidx references add up to the fragments
    assert [o for k, o, _ in top if k == b"moof"] == export.offsets
    sidx = whole[top[2][1] : top[2][1] + top[2][2]]
    refs = [struct.unpack(">III", sidx[40 + 12 * i : 52 + 12 * i]) for i in range(len(paths))]
    assert [r[0] for r in refs] == [top[3 + 2 * i][2] + top[4 + 2 * i][2] for i in range(len(paths))]
    assert sum(r[1] for r in refs) == export.layout.duration == 9 * 90_000
    # the same bytes again (deterministic), and any range is the same slice of them
    assert b"".join(Mp4Export(store, keyring, sid, list(range(len(paths)))).byte_range(0, export.size - 1)) == whole
    for start, end in (
        (0, 0),
        (5, 700),
        (export.offsets[1] - 1, export.offsets[2] + 3),
        (export.size - 1, export.size - 1),
    ):
        assert b"".join(export.byte_range(start, end)) == whole[start : end + 1], (start, end)
    # what FFmpeg makes of it: every frame, the right duration, seekable to a fragment
    (tmp_path / "s.mp4").write_bytes(whole)
    with av.open(str(tmp_path / "s.mp4")) as c:
        assert abs(c.duration / 1e6 - 9.0) < 0.01
        assert sum(1 for _ in c.decode(video=0)) == 90
    with av.open(str(tmp_path / "s.mp4")) as c:
        c.seek(6_500_000)
        assert float(next(c.decode(video=0)).time) == 6.0  # the keyframe that starts chunk 3
    # the plans were sealed beside the envelopes, and a missing one is made again identically
    dek = store.data_key(sid, keyring)
    cached = read_chunk_plan(store, sid, 2, dek=dek).to_bytes()
    store.drop_mp4_index(sid, 2)
    assert Mp4Export(store, keyring, sid, list(range(len(paths)))).size == export.size
    assert read_chunk_plan(store, sid, 2, dek=dek).to_bytes() == cached


def test_a_plan_that_does_not_open_cannot_change_the_mp4(mp4_session):
    """Plans are sealed under the data key and bound to their chunk and envelope: a damaged plan,
    one copied from another chunk or one left from a replaced envelope is made again from the
    chunk, and the MP4 stays byte for byte what it was."""
    store, keyring, sid, paths, _ = mp4_session
    seqs = list(range(len(paths)))
    good = b"".join(Mp4Export(store, keyring, sid, seqs).byte_range(0, Mp4Export(store, keyring, sid, seqs).size - 1))
    damaged = bytearray(store.read_mp4_index(sid, 1))
    damaged[60] ^= 1
    store.write_mp4_index(sid, 1, bytes(damaged))
    store.write_mp4_index(sid, 3, store.read_mp4_index(sid, 2))  # another chunk's (valid) plan
    export = Mp4Export(store, keyring, sid, seqs)
    before = export.etag
    assert b"".join(export.byte_range(0, export.size - 1)) == good
    assert store.read_mp4_index(sid, 1) != bytes(damaged) and store.read_mp4_index(sid, 3) != store.read_mp4_index(
        sid, 2
    )
    # the envelope sealed again (reprocessing: new nonce, new tag): its old plan is stale
    dek = store.data_key(sid, keyring)
    old_plan = store.read_mp4_index(sid, 0)
    store.write_envelope(sid, 0, envelope.seal(paths[0].read_bytes(), dek=dek, session_id=uuid.UUID(sid), seq=0))
    export = Mp4Export(store, keyring, sid, seqs)
    assert store.read_mp4_index(sid, 0) != old_plan and export.etag != before  # a cached copy is not reused
    assert b"".join(export.byte_range(0, export.size - 1)) == good


def _ts(tmp_path, name, **opts) -> bytes:
    """A short MPEG-TS made by FFmpeg's libx264 with the given options (B-frames, slices...)."""
    path = tmp_path / name
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=25, options=opts)
        st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
        with av.open("testsrc2=size=320x240:rate=25", format="lavfi") as src:
            for i, frame in enumerate(src.decode(video=0)):
                if i == 50:
                    break
                frame.pts = None
                out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path.read_bytes()


def _pyav_samples(data: bytes) -> tuple[list[tuple], bytes]:
    """What FFmpeg's own demuxer sees: (dts, pts, key, size) per access unit, and the MP4 sample
    data (Annex-B start codes -> 4-byte lengths, trailing zeros and delimiters dropped), by the
    obvious method."""
    samples, out = [], []
    with av.open(io.BytesIO(data), format="mpegts") as src:
        for pkt in src.demux(video=0):
            if pkt.dts is None or pkt.size == 0:
                continue
            raw, unit = bytes(pkt), []
            starts = [m.end() for m in re.finditer(b"\x00\x00\x01", raw)]
            for a, b in zip(starts, starts[1:] + [len(raw) + 3]):
                nal = raw[a : b - 3].rstrip(b"\x00")
                if nal and nal[0] & 0x1F != 9:  # access unit delimiters are left out
                    unit.append(struct.pack(">I", len(nal)) + nal)
            samples.append((pkt.dts, pkt.pts, bool(pkt.is_keyframe), sum(map(len, unit))))
            out.extend(unit)
    return samples, b"".join(out)


@pytest.mark.parametrize(
    "opts",
    [
        {"preset": "ultrafast", "tune": "zerolatency"},  # the recorder's kind: no B-frames
        {"preset": "fast", "bf": "3"},  # B-frames: dts != pts
        {"preset": "fast", "x264-params": "slices=4"},  # several slices (3-byte start codes) per frame
    ],
    ids=["no-bframes", "bframes", "slices"],
)
def test_mpegts_plan_matches_ffmpeg_and_the_fast_gather(tmp_path, opts):
    data = _ts(tmp_path, "c.ts", **opts)
    plan = mpegts.plan(data)
    samples, mdat = _pyav_samples(data)
    assert [(u.dts, u.pts, u.key, u.size) for u in plan.units] == samples
    assert mpegts.gather_reference(data, plan) == mdat
    cp = chunk_plan(data, b"t" * 16)
    assert ChunkPlan.from_bytes(cp.to_bytes()) == cp
    frag = build_fragment(cp, memoryview(bytearray(data)), 1, 0, None)
    assert frag.endswith(mdat) and len(frag) == fmp4.fragment_size(cp.index)
    # the head's trun, built with numpy, is the reference's byte for byte (last sample: either way)
    c = cp.samples
    units = list(map(fmp4.Sample, c.dts.tolist(), c.pts.tolist(), c.key.tolist(), c.size.tolist()))
    assert [(u.dts, u.pts, u.key, u.size) for u in units] == samples
    for next_dts, last in ((None, cp.index.last_duration), (units[-1].dts + 1234, 1234)):
        entries = fmp4.trun_entries(units, [b.dts - a.dts for a, b in zip(units, units[1:])] + [last])
        assert cp.samples.trun(next_dts, cp.index.last_duration) == entries
    head = fmp4.fragment_head(1, 0, len(units), cp.samples.trun(None, cp.index.last_duration), len(mdat))
    assert frag == head + mdat
    if opts.get("bf"):
        assert any(u.dts != u.pts for u in plan.units)
    # both ways a length reaches the mdat are exercised: written in place, or from `prefixes`
    assert plan.patch_at
    if "slices" in opts.get("x264-params", ""):
        assert plan.prefixes  # 3-byte start codes between the slices of a frame


def test_a_fragment_whose_chunk_or_plan_disagree_is_refused(tmp_path):
    """A plan that does not fit its chunk (a shorter chunk, a run outside it, an empty or reversed
    run) is a DamagedChunk: never an IndexError, never a fragment of other bytes."""
    data = _ts(tmp_path, "c.ts", preset="ultrafast", tune="zerolatency")
    cp = chunk_plan(data, b"t" * 16)
    with pytest.raises(DamagedChunk):
        build_fragment(cp, memoryview(data[: len(data) - 188 * 40]), 1, 0, None)
    with pytest.raises(DamagedChunk):
        build_fragment(cp, memoryview(data[:-1]), 1, 0, None)
    last = cp.rows[-1]
    for bad in ((last[0], len(data) // 188 + 1), (last[1], last[0]), (last[0], last[0]), (-1, last[1])):
        broken = ChunkPlan.from_bytes(cp.to_bytes())
        broken.rows = [*cp.rows[:-1], bad]
        with pytest.raises(DamagedChunk):
            build_fragment(broken, memoryview(data), 1, 0, None)
    broken.rows = [(last[1], last[0])]  # nothing but a reversed run: refused before any buffer is sized
    with pytest.raises(DamagedChunk):
        build_fragment(broken, memoryview(data), 1, 0, None)
    assert build_fragment(cp, memoryview(data), 1, 0, None)  # the plan itself still fits


def _packet(ts: bytes, pid: int) -> int:
    """Offset of the first packet of `pid`."""
    return next(k * 188 for k in range(len(ts) // 188) if ((ts[k * 188 + 1] & 0x1F) << 8 | ts[k * 188 + 2]) == pid)


def test_mpegts_plan_meets_damaged_headers_with_tserror_only(tmp_path):
    """Pushed chunks are input: damaged PSI or PES headers make a chunk not exportable (TsError ->
    422, no plan), never an IndexError in the processing run, a 500, or a plan of garbage times."""
    good = bytes(
        record_segments(tmp_path / "s", fps=10, seconds=2, chunk_seconds=2, size=(160, 120))[0].path.read_bytes()
    )
    pmt = bytearray(good)
    at = _packet(good, 0x1000) + 4 + 1 + good[_packet(good, 0x1000) + 4]  # FFmpeg's PMT PID; its section
    pmt[at + 1], pmt[at + 2] = pmt[at + 1] & 0xF0, 5  # section_length 5: a PMT too short to read
    with pytest.raises(mpegts.TsError, match="truncated PMT"):
        mpegts.plan(bytes(pmt))
    pes = bytearray(good)
    at = _packet(good, 0x100)  # the video PID's first packet: its PES header after the adaptation field
    at += 4 + (1 + good[at + 4] if good[at + 3] & 0x20 else 0)
    assert pes[at : at + 3] == b"\x00\x00\x01" and pes[at + 7] >> 6 in (2, 3)
    pes[at + 8] = 0  # PES_header_data_length 0: no room for the time stamps its flags announce
    with pytest.raises(mpegts.TsError, match="shorter than its time stamps"):
        mpegts.plan(bytes(pes))
    n, rng = len(good) // 188, random.Random(2)
    for _ in range(1000):  # and header bytes damaged at random
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(min(n, 12)) if rng.random() < 0.7 else rng.randrange(n)
            b[k * 188 + rng.randrange(1, 24)] = rng.randrange(256)
        try:
            mpegts.plan(bytes(b))
        except mpegts.TsError:
            pass


def test_mpegts_plan_refuses_what_it_cannot_describe():
    with pytest.raises(mpegts.TsError, match="whole number"):
        mpegts.plan(b"\x47" * 200)
    with pytest.raises(mpegts.TsError, match="sync byte"):
        mpegts.plan(b"\x00" * 188)
    with pytest.raises(mpegts.TsError, match="no PAT/PMT"):
        mpegts.plan(b"\x47\x1f\xff\x10" + bytes(184))  # a null packet only


def test_mp4_refuses_what_is_not_h264(tmp_path):
    keyring = Keyring.load(Settings(data_dir=tmp_path, generate_keys=True))
    store, sid = ChunkStore(tmp_path / "chunks"), str(uuid.uuid4())
    dek = store.data_key(sid, keyring, create=True)
    store.write_envelope(
        sid, 0, envelope.seal(b"not a transport stream" * 100, dek=dek, session_id=uuid.UUID(sid), seq=0)
    )
    with pytest.raises(NotExportable):
        Mp4Export(store, keyring, sid, [0])


def test_coalesce_joins_small_pieces_and_passes_large_ones():
    big = memoryview(b"x" * 100)
    out = list(coalesce([b"a" * 10, b"b" * 10, b"c" * 10, big, b"d" * 5], at_least=25))
    assert out == [b"a" * 10 + b"b" * 10 + b"c" * 10, big, b"d" * 5]
    assert out[1] is big  # no copy for a piece that is large enough alone
    assert b"".join(coalesce([b"q"] * 1000, at_least=64)) == b"q" * 1000
    header, body = b"h" * 5, memoryview(b"y" * 100)  # a tar header before a chunk: the chunk is not copied
    out = list(coalesce([header, body, b"p" * 3], at_least=25))
    assert out == [header, body, b"p" * 3] and out[1] is body


def test_layout_facts_are_cached_per_manifest_and_a_replaced_envelope_is_still_caught(mp4_session):
    store, keyring, sid, paths, _ = mp4_session
    seqs = list(range(len(paths)))
    first = Mp4Export(store, keyring, sid, seqs, cache_key="manifest-a")
    whole = b"".join(first.byte_range(0, first.size - 1))
    for seq in seqs:
        store.drop_mp4_index(sid, seq)
    again = Mp4Export(store, keyring, sid, seqs, cache_key="manifest-a")  # no plan read: none exist
    assert again.etag == first.etag and not any(store.read_mp4_index(sid, s) for s in seqs)
    assert b"".join(again.byte_range(0, again.size - 1)) == whole  # full plans made again as needed
    # an envelope replaced behind the cache's back (same bytes, new nonce: a new tag)
    dek = store.data_key(sid, keyring)
    store.write_envelope(sid, 1, envelope.seal(paths[1].read_bytes(), dek=dek, session_id=uuid.UUID(sid), seq=1))
    stale = Mp4Export(store, keyring, sid, seqs, cache_key="manifest-a")
    with pytest.raises(DamagedChunk, match="changed since"):
        b"".join(stale.byte_range(stale.offsets[1], stale.offsets[1] + 10))
    fresh = Mp4Export(store, keyring, sid, seqs, cache_key="manifest-b")  # a new manifest: read again
    assert b"".join(fresh.byte_range(0, fresh.size - 1)) == whole


def test_lucid_plans_makes_what_a_store_lacks(tmp_path):
    """`lucid plans`: an upgraded store's sessions get their plans ahead of their first export."""
    from services.cli import main as lucid

    segs = record_segments(tmp_path / "segs", fps=10, seconds=4, chunk_seconds=2, size=(160, 120))
    settings = Settings(data_dir=tmp_path, generate_keys=True)
    keyring = Keyring.load(settings)
    store, sid = ChunkStore.from_settings(settings), str(uuid.uuid4())
    dek = store.data_key(sid, keyring, create=True)
    for seq, s in enumerate(segs):
        store.write_envelope(sid, seq, envelope.seal(s.path.read_bytes(), dek=dek, session_id=uuid.UUID(sid), seq=seq))
    assert not any(store.read_mp4_index(sid, seq) for seq in range(len(segs)))
    legacy = store.session_dir(sid) / "mp4" / "00000000.json"  # the earlier release's plain index
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text('{"v": 1, "samples": 20}')
    assert lucid(["--data-dir", str(tmp_path), "plans"]) == 0
    assert not legacy.exists()
    plans = [read_chunk_plan(store, sid, seq, dek=dek) for seq in range(len(segs))]
    assert all(p is not None for p in plans)
    assert lucid(["--data-dir", str(tmp_path), "plans", sid]) == 0  # nothing to do the second time
    assert [read_chunk_plan(store, sid, seq, dek=dek) for seq in range(len(segs))] == plans
