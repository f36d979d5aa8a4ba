"""The read path's building blocks on real envelopes: every chunk is released as a memoryview
(what HTTP responses and PyAV take), compressed or not; damage stops the stream at that chunk."""
import os
import uuid

import pytest

from lucid_assets.core import envelope
from lucid_assets.keyring import Keyring
from lucid_assets.playback import DamagedChunk, plain_chunks
from lucid_assets.settings import Settings
from lucid_assets.store import ChunkStore


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
