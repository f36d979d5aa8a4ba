"""The keyed-token search index (issue 15) on a real SQLite file: tokenizer, query parsing, word /
phrase / prefix matches with AND semantics, per-session tokens, chunk replacement, crypto-shred
drop, and a reader in another process while a write is open."""

import hashlib
import hmac
import os
import random
import sqlite3
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lucid_assets.insight.index import (
    MAX_PREFIX,
    Kind,
    TextIndex,
    parse_query,
    search_key,
    token,
    tokens,
)

REPO = Path(__file__).resolve().parent.parent
S1, S2 = "6f2c8a5e-3b1d-4e8f-9a0b-1c2d3e4f5a6b", "0d9e8f7a-6b5c-4d3e-8f1a-2b3c4d5e6f70"
K1, K2 = search_key(b"\x01" * 32, S1), search_key(b"\x02" * 32, S2)
TABLES = ("sessions", "postings", "chunks")


@pytest.fixture
def ix(tmp_path):
    index = TextIndex(tmp_path / "search.sqlite")
    yield index
    index.close()


def put(ix, session, key, chunks: dict[int, str]) -> None:
    ix.put_chunks(session, key, {seq: tokens(text) for seq, text in chunks.items()})


def find(ix, q: str, keys=None, **kw) -> dict[str, list[int]]:
    return ix.match(parse_query(q), keys if keys is not None else {S1: K1, S2: K2}, **kw)


def raw(ix) -> sqlite3.Connection:
    return sqlite3.connect(ix.path)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("web01.prod.example.com", ["web01", "prod", "example", "com"]),
        ("CUST-48213", ["cust", "48213"]),
        ("Error: connection REFUSED (code 111)", ["error", "connection", "refused", "code", "111"]),
        ("ＷＥＢ０１ ﬁle", ["web01", "file"]),  # NFKC: full-width letters and digits, the fi ligature
        ("Straße", ["strasse"]),  # casefold, not lower
        ("Привет, мир! 東京タワー", ["привет", "мир", "東京タワー"]),  # any script
        ("/var/log/syslog.1", ["var", "log", "syslog", "1"]),
        ("  ..--  ", []),
        ("x" * 70 + " y", ["x" * 64, "y"]),
    ],
)
def test_tokenizer(text, want):
    assert tokens(text) == want


def test_search_key_is_hkdf_sha256_of_the_dek_bound_to_the_session():
    """Checked against RFC 5869 written out with hmac (salt None = 32 zero bytes)."""
    dek = bytes(range(32))
    prk = hmac.digest(b"\0" * 32, dek, hashlib.sha256)
    info = b"lucid/search-tokens/v1" + uuid.UUID(S1).bytes
    okm = hmac.digest(prk, info + b"\x01", hashlib.sha256)
    assert search_key(dek, S1) == okm
    assert search_key(dek, S2) != okm
    assert token(okm, Kind.WORD, "error") == hmac.digest(okm, b"w\0error", hashlib.sha256)[:16]
    assert token(okm, Kind.PREFIX, "err") == hmac.digest(okm, b"p\0err", hashlib.sha256)[:16]


def test_parse_query():
    q = parse_query('deploy "connection refused" web01.prod* CUST-48213')
    assert q.words == ("deploy", "connection", "refused", "web01", "cust", "48213")
    assert q.prefixes == ("prod",)
    assert q.phrases == (("connection", "refused"), ("web01", "prod"), ("cust", "48213"))
    assert q.phrase_prefix == (False, True, False)
    assert q.required == [(Kind.WORD, w) for w in q.words] + [(Kind.PREFIX, "prod")]
    assert parse_query('"foo bar*"').prefixes == ("bar",)
    assert parse_query('"foo bar"*').prefixes == ("bar",)
    assert parse_query('"unclosed phrase').phrases == (("unclosed", "phrase"),)
    assert parse_query("a a a").required == [(Kind.WORD, "a")]


@pytest.mark.parametrize(
    ("q", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('!!! "" --', "empty"),
        ("ab*", "at least 3"),
        ("*", "at least 3"),
        ('"foo b"*', "at least 3"),
        (" ".join(f"w{i}" for i in range(17)), "at most 16"),
        ("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", "at most 16"),
    ],
)
def test_bad_queries_say_why(q, why):
    with pytest.raises(ValueError, match=why):
        parse_query(q)


def test_words_phrases_prefixes_and_and(ix):
    put(ix, S1, K1, {0: "ssh root@web01.prod.example.com", 1: "connection refused by db02", 2: "Deployment done"})
    put(ix, S1, K1, {3: "refused connection to deploy host"})
    assert find(ix, "connection") == {S1: [1, 3]}
    assert find(ix, "connection refused") == {S1: [1, 3]}  # AND: both words in the chunk
    assert find(ix, "connection web01") == {}
    assert find(ix, '"connection refused"') == {S1: [1, 3]}  # co-occurrence only: the caller checks order
    assert find(ix, "deploy*") == {S1: [2, 3]}  # the word itself and longer words
    assert find(ix, "dep*") == {S1: [2, 3]}
    assert find(ix, "deploym*") == {S1: [2]}
    assert find(ix, "web01.prod.example.com") == {S1: [0]}
    assert find(ix, "web0*") == {S1: [0]}
    assert find(ix, "web") == {}  # a whole word, not a prefix
    assert find(ix, "nowhere") == {}


def test_prefix_longer_than_twelve_uses_its_first_twelve(ix):
    put(ix, S1, K1, {0: "internationalization", 1: "internationally", 2: "internationa"})
    q = parse_query("internationaliz*")
    assert find(ix, "internationaliz*") == {S1: [0, 1]}  # both share "internationa" + one more char
    assert q.matches("internationalization") and not q.matches("internationally")
    assert find(ix, "internationa*") == {S1: [0, 1, 2]}
    assert len("internationa") == MAX_PREFIX


def test_query_matches_checks_the_text():
    q = parse_query('"connection refused" db0*')
    assert q.matches("error: Connection refused by db02")
    assert not q.matches("refused connection by db02")  # not in that order
    assert not q.matches("connection was refused by db02")  # not consecutive
    assert not q.matches("connection refused by d")  # the prefix is not there
    assert parse_query("CUST-48213").matches("ticket cust 48213 open")
    assert not parse_query("CUST-48213").matches("cust 9 48213")
    assert parse_query('"tail -f /var/sysl"*').matches("$ tail -f /var/syslog.1")
    assert not parse_query("log").matches("logs")  # words are whole


def test_two_sessions_same_words_unrelated_tokens(ix, tmp_path):
    text = "quarterly revenue report for customer 48213"
    put(ix, S1, K1, {0: text})
    put(ix, S2, K2, {0: text})
    with raw(ix) as db:
        sids = dict(db.execute("SELECT session, sid FROM sessions"))
        by = {s: {t for (t,) in db.execute("SELECT token FROM postings WHERE sid = ?", (sids[s],))} for s in (S1, S2)}
    assert len(by[S1]) == len(by[S2]) > len(tokens(text))  # the words and their prefixes
    assert not by[S1] & by[S2]
    assert find(ix, "revenue") == {S1: [0], S2: [0]}
    assert find(ix, "revenue", {S2: K2}) == {S2: [0]}  # only the sessions whose keys are passed
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("search.sqlite"))
    assert b"revenue" not in data and b"quarterly" not in data and b"48213" not in data


def test_a_wrong_key_finds_nothing(ix):
    put(ix, S1, K1, {0: "secret project apollo"})
    assert find(ix, "apollo", {S1: K1}) == {S1: [0]}
    assert find(ix, "apollo", {S1: K2}) == {}
    assert find(ix, "apollo", {S1: search_key(b"\x01" * 32, S2)}) == {}  # right DEK, other session's key


def test_put_chunk_replaces_stale_postings(ix):
    put(ix, S1, K1, {0: "alpha beta gamma", 1: "beta delta"})
    with raw(ix) as db:
        before = db.execute("SELECT count(*) FROM postings").fetchone()[0]
    ix.put_chunk(S1, 0, K1, tokens("alpha epsilon"))  # a rerun with a better OCR model
    assert find(ix, "gamma") == {}
    assert find(ix, "gam*") == {}
    assert find(ix, "beta") == {S1: [1]}
    assert find(ix, "alpha") == {S1: [0]}
    assert find(ix, "epsilon") == {S1: [0]}
    assert find(ix, "delta") == {S1: [1]}
    with raw(ix) as db:
        after = db.execute("SELECT count(*) FROM postings").fetchone()[0]
    # gamma, gam, gamm go; epsilon, eps, epsi, epsil, epsilo come; beta's row stays (chunk 1)
    assert after == before - 3 + 5
    ix.put_chunk(S1, 0, K1, tokens("delta"))  # a word another chunk already has
    assert find(ix, "delta") == {S1: [0, 1]}
    assert find(ix, "alpha") == {} and find(ix, "epsilon") == {}
    ix.put_chunk(S1, 1, K1, [])
    assert find(ix, "beta") == {} and find(ix, "delta") == {S1: [0]}
    assert ix.indexed_chunks(S1) == {0, 1}  # an empty chunk is still indexed


def test_drop_session_removes_every_row_and_leaves_no_bytes(ix, tmp_path):
    put(ix, S1, K1, {0: "alpha beta", 1: "gamma"})
    put(ix, S2, K2, {0: "alpha", 5: "delta"})
    with raw(ix) as db:
        (sid,) = db.execute("SELECT sid FROM sessions WHERE session = ?", (S1,)).fetchone()
        rows = sum(db.execute(f"SELECT count(*) FROM {t} WHERE sid = ?", (sid,)).fetchone()[0] for t in TABLES)
        gone = [t for (t,) in db.execute("SELECT token FROM postings WHERE sid = ?", (sid,))]
    assert ix.sessions() == {S1, S2}
    assert ix.drop_session(S1) == rows
    assert ix.drop_session(S1) == 0
    with raw(ix) as db:
        for t in TABLES:
            assert db.execute(f"SELECT count(*) FROM {t} WHERE sid = ?", (sid,)).fetchone()[0] == 0, t
        assert db.execute("SELECT count(*) FROM sessions WHERE session = ?", (S1,)).fetchone()[0] == 0
    assert ix.sessions() == {S2}
    assert ix.indexed_chunks(S1) == set()
    assert find(ix, "alpha") == {S2: [0]}
    assert find(ix, "delta") == {S2: [5]}
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("search.sqlite"))
    assert not [t for t in gone if t in data]  # zeroed in the file (secure_delete), not left in free pages


def test_limit_chunks_stops_in_the_order_of_the_keys(ix):
    put(ix, S1, K1, dict.fromkeys(range(10), "busy"))
    put(ix, S2, K2, dict.fromkeys(range(10), "busy"))
    assert find(ix, "busy", {S2: K2, S1: K1}, limit_chunks=15) == {S2: list(range(10)), S1: list(range(5))}
    assert find(ix, "busy", {S1: K1, S2: K2}, limit_chunks=3) == {S1: [0, 1, 2]}
    assert find(ix, "busy", {S1: K1, S2: K2}) == {S1: list(range(10)), S2: list(range(10))}


def test_sessions_and_chunks_and_file_mode(ix, tmp_path):
    put(ix, S1, K1, {0: "a", 7: "b", 70000: "c"})  # seqs past 65535 switch to wide arrays
    assert ix.indexed_chunks(S1) == {0, 7, 70000}
    assert find(ix, "c") == {S1: [70000]}
    put(ix, S1, K1, {1: "c"})
    assert find(ix, "c") == {S1: [1, 70000]}
    assert ix.sessions() == {S1}
    assert ix.indexed_chunks(S2) == set()
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


READER = """
import sys
from pathlib import Path
from lucid_assets.insight.index import TextIndex, parse_query, search_key
ix = TextIndex(Path(sys.argv[1]))
key = search_key(b"\\x01" * 32, sys.argv[2])
mode = ix._db.execute("PRAGMA journal_mode").fetchone()[0]
print(mode, ix.match(parse_query(sys.argv[3]), {sys.argv[2]: key}))
"""


def read_elsewhere(path: Path, word: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", READER, str(path), S1, word],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_reader_in_another_process_while_a_write_is_open(ix):
    put(ix, S1, K1, {0: "committed words"})
    with ix._tx():  # the writer is inside a transaction, like a long put_chunks
        ix._db.execute("DELETE FROM postings")
        ix._db.execute("DELETE FROM chunks")
        # the reader opens the file and searches without waiting for the writer; it sees what
        # was committed
        assert read_elsewhere(ix.path, "committed") == f"wal {{'{S1}': [0]}}"
    assert read_elsewhere(ix.path, "committed") == "wal {}"
    put(ix, S1, K1, {3: "later words"})
    assert read_elsewhere(ix.path, "later") == f"wal {{'{S1}': [3]}}"


def test_random_puts_and_drops_agree_with_a_plain_model(ix):
    """Chunks written, rewritten, emptied and sessions dropped at random, in batches and one by one:
    every word and prefix query answers what a dict of the chunks' words says."""
    rnd = random.Random(15)
    vocab = ["alpha", "alpine", "alps", "beta", "betamax", "gamma", "delta", "deltas", "x1", "404"]
    model: dict[str, dict[int, set[str]]] = {S1: {}, S2: {}}
    keys = {S1: K1, S2: K2}
    for _ in range(300):
        s = rnd.choice((S1, S2))
        if rnd.random() < 0.03:
            ix.drop_session(s)
            model[s] = {}
            continue
        batch = {rnd.randrange(12): rnd.sample(vocab, rnd.randrange(4)) for _ in range(rnd.randrange(1, 4))}
        ix.put_chunks(s, keys[s], batch)
        model[s].update({seq: set(ws) for seq, ws in batch.items()})
        term = rnd.choice(vocab + ["alp*", "bet*", "delt*", "gam*"])
        want = {}
        for session, chunks in model.items():
            if hit := sorted(q for q, ws in chunks.items() if any(_holds(w, term) for w in ws)):
                want[session] = hit
        assert find(ix, term) == want, term
    assert ix.sessions() == {s for s, chunks in model.items() if chunks}


def _holds(word: str, term: str) -> bool:
    return word.startswith(term[:-1]) if term.endswith("*") else word == term
