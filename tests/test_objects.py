"""The object-store contract (lucid_assets/objects.py) on both backends: a local directory and a real
S3 endpoint (SeaweedFS). Whatever the chunk store and the credentials rely on is checked here."""

import threading

import pytest

from lucid_assets.objects import LocalObjects, ObjectStoreError, S3Objects, open_objects
from tests.conftest import settings_for


@pytest.fixture
def objects(backend, tmp_path):
    settings = settings_for(tmp_path, backend)
    return open_objects(settings.chunk_store_location, settings)


def test_backend_is_the_one_asked_for(objects, backend):
    assert isinstance(objects, S3Objects if backend else LocalObjects)
    assert objects.uri("a/b.json").startswith("s3://lucid/t-" if backend else "file:///")


def test_put_get_and_exclusive_first_writer_wins(objects):
    assert objects.get("s/dek.json") is None and objects.stat("s/dek.json") is None
    assert objects.put("s/dek.json", b"first", exclusive=True)
    assert not objects.put("s/dek.json", b"second", exclusive=True)
    assert objects.get("s/dek.json") == b"first"
    assert objects.put("s/dek.json", b"replaced")  # an ordinary put replaces
    assert objects.get("s/dek.json") == b"replaced" and objects.stat("s/dek.json").size == 8


def test_compare_and_swap(objects):
    assert objects.put("c/x.json", b"v1")
    data, tag = objects.get_tagged("c/x.json")
    assert data == b"v1"
    assert objects.put("c/x.json", b"v2", if_match=tag)
    assert not objects.put("c/x.json", b"v3", if_match=tag), "a stale tag must not overwrite"
    assert objects.get("c/x.json") == b"v2"
    assert not objects.put("c/missing.json", b"v", if_match=tag), "a tag does not create"


def test_concurrent_compare_and_swap_loses_no_update(objects):
    objects.put("n", b"0")

    def bump():
        for _ in range(5):
            while True:
                data, tag = objects.get_tagged("n")
                if objects.put("n", str(int(data) + 1).encode(), if_match=tag):
                    break

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert objects.get("n") == b"20"


def test_ranges_heads_and_tails(objects):
    objects.put("e/1.luce", bytes(range(100)))
    assert objects.read_range("e/1.luce", 0, 10) == bytes(range(10))
    assert objects.read_range("e/1.luce", 90, 50) == bytes(range(90, 100))
    assert objects.read_range("e/1.luce", -16, 16) == bytes(range(84, 100))
    assert objects.read_range("e/1.luce", -200, 200) is None, "shorter than the tail asked for"
    assert objects.read_range("e/missing", 0, 10) is None


def test_list_dirs_delete_and_move(objects):
    for key in ("a/chunks/00000000.luce", "a/chunks/00000001.luce", "a/manifest.v1.json", "b/dek.json", "top"):
        objects.put(key, key.encode())
    everything = ["a/chunks/00000000.luce", "a/chunks/00000001.luce", "a/manifest.v1.json"]
    assert [e.key for e in objects.list("a")] == everything
    assert [e.key for e in objects.list("a/chunks/")] == ["a/chunks/00000000.luce", "a/chunks/00000001.luce"]
    assert objects.list("nothing") == [] and objects.dirs("nothing") == []
    assert objects.dirs("") == ["a", "b"] and objects.dirs("a") == ["chunks"]
    assert [e.key for e in objects.files("a")] == ["a/manifest.v1.json"], "not the subdirectory's objects"
    assert [e.key for e in objects.files("")] == ["top"] and objects.files("nothing") == []
    assert [e.key for e in objects.files("a/chunks/")] == everything[:2]
    assert all(e.mtime > 1e9 and e.size > 0 for e in objects.list(""))
    assert objects.move_prefix("a/chunks", "a/chunks.superseded-x") == 2
    assert objects.list("a/chunks/") == [] and len(objects.list("a/chunks.superseded-x")) == 2
    assert objects.get("a/chunks.superseded-x/00000001.luce") == b"a/chunks/00000001.luce"
    assert objects.delete("b/dek.json", scrub=True) and not objects.delete("b/dek.json")
    assert objects.get("b/dek.json") is None
    assert objects.delete_prefix("a") == 3 and objects.list("a") == []
    assert [e.key for e in objects.list("")] == ["top"]


def test_keys_cannot_escape(objects):
    for bad in ("../x", "/etc/passwd", "a/../../x", "a//b", "", "a\\b", ".", "a/./b", "a/.."):
        with pytest.raises(ValueError):
            objects.put(bad, b"x")
        with pytest.raises(ValueError):
            objects.get(bad)
    assert objects.put("a/b.c/..d", b"x") and objects.get("a/b.c/..d") == b"x"  # dots inside names are names


def test_ready_check(objects):
    ok, detail = objects.check()
    assert ok, detail


def test_unreachable_endpoint_is_a_clear_error(seaweed, monkeypatch, tmp_path):
    from lucid_assets.settings import Settings

    s = Settings(
        data_dir=tmp_path, s3_endpoint="http://127.0.0.1:9", s3_access_key_id="k", s3_secret_access_key="sek-ret"
    )
    bad = open_objects("s3://lucid/x", s)
    with pytest.raises(ObjectStoreError) as err:
        bad.get("a")
    assert "sek-ret" not in str(err.value) and "s3://lucid" in str(err.value)
    ok, detail = bad.check()
    assert not ok and "sek-ret" not in detail and "not writable" in detail
