"""The keyed-token search index over text seen on screen (issue 15).

Text on screen is the most sensitive data Lucid holds, so the index stores no words: every term is
replaced by a token, HMAC-SHA256 under a per-session key derived from the session's data key (DEK),
truncated to 16 bytes. The same word in two sessions gives unrelated tokens, so the file shows no
frequency or co-occurrence across sessions, and once a session's DEK is destroyed (crypto-shredding)
its tokens cannot be linked to any word even from a copy of the file taken earlier.

Granularity is the chunk: a posting says "chunk `seq` of this session showed this word". Times,
boxes and snippets are not here: the caller resolves them from the chunk's sealed text, and checks
the hit there with `Query.matches` (phrases are only known to co-occur in one chunk, and a prefix
longer than 12 characters is only known to share its first 12).

Layout (SQLite, WAL):

- `sessions(sid INTEGER PRIMARY KEY, session TEXT UNIQUE)`: a small number per indexed session.
- `postings(sid, token BLOB(16), seqs BLOB) WITHOUT ROWID`, key (sid, token): one row per distinct
  token of a session, `seqs` the ascending chunk numbers as a packed uint16 (or uint32) array with
  a one-byte width tag. Keyed by session first: a query computes each session's token anyway, so a
  lookup is one B-tree seek per session and term, and dropping a session is one key range.
- `chunks(sid, seq, refs BLOB) WITHOUT ROWID`: per chunk, the first 2 bytes of each of its tokens.
  Replacing a chunk reads its refs and visits only the rows in (sid, ref*) ranges (about one row per
  ref); removing a seq from a row that does not hold it is a no-op, so a shared 2-byte ref is
  harmless, and the table is 8x smaller than full tokens.

`PRAGMA secure_delete` is on, so a dropped session's cells are zeroed in the file, not left in
free pages. One writer process; readers in other processes see committed data (WAL, busy timeout).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import sqlite3
import threading
import unicodedata
import uuid
from array import array
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_WORD = 64  # longer runs of letters/digits are cut to this many characters
MIN_PREFIX = 3  # shortest prefix indexed and accepted in a query (`abc*`)
MAX_PREFIX = 12  # longest prefix indexed; longer query prefixes use their first 12 characters
MAX_QUERY_TOKENS = 16
TOKEN_BYTES = 16
REF_BYTES = 2  # bytes of a token kept in the per-chunk list (see the module docstring)
SEARCH_INFO = b"lucid/search-tokens/v1"
FORMAT_VERSION = 1
_SESSION_BATCH = 256  # sessions looked up per statement in match()


class Kind(enum.Enum):
    """What a token stands for; the value is the HMAC domain, part of the token format."""

    WORD = b"w\0"  # a whole word
    PREFIX = b"p\0"  # a proper prefix of a word, 3..12 characters


def search_key(dek: bytes, session_id: str) -> bytes:
    """The session's token key: HKDF-SHA256 over its DEK, bound to the session id."""
    info = SEARCH_INFO + uuid.UUID(session_id).bytes
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)


def token(key: bytes, kind: Kind, term: str) -> bytes:
    return hmac.digest(key, kind.value + term.encode(), hashlib.sha256)[:TOKEN_BYTES]


def tokens(text: str) -> list[str]:
    """NFKC, casefold, maximal runs of letters/digits (any script), each cut to 64 characters:
    "web01.prod.example.com" -> web01 prod example com; "CUST-48213" -> cust 48213."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    run: list[str] = []
    for ch in text:
        if ch.isalnum():
            run.append(ch)
        elif run:
            out.append("".join(run)[:MAX_WORD])
            run = []
    if run:
        out.append("".join(run)[:MAX_WORD])
    return out


def words(lines: Iterable[dict]) -> set[str]:
    """The distinct words of a chunk's text lines (what the index holds for that chunk)."""
    return {w for line in lines for w in tokens(line["text"])}


def terms_of(word: str) -> Iterator[tuple[Kind, str]]:
    """What one indexed word contributes: itself and its proper prefixes of 3..12 characters."""
    yield Kind.WORD, word
    for n in range(MIN_PREFIX, min(len(word) - 1, MAX_PREFIX) + 1):
        yield Kind.PREFIX, word[:n]


@dataclass(frozen=True)
class Query:
    """A parsed search: every term must occur in one chunk (AND).

    `words` are whole tokens, `prefixes` the tokens given with a trailing `*` (full length, as
    typed), `phrases` the token lists that must be consecutive (a quoted phrase, or one query word
    the tokenizer split, like "CUST-48213"); the last token of a phrase may be a prefix
    (`phrase_prefix`). The index only knows that all terms occur in a chunk: `matches` checks the
    chunk's decrypted text for whole words, real prefixes and adjacency."""

    words: tuple[str, ...]
    prefixes: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]
    phrase_prefix: tuple[bool, ...]  # per phrase: is its last token a prefix

    @property
    def required(self) -> list[tuple[Kind, str]]:
        """Every (kind, term) a chunk must hold, deduplicated, in query order."""
        seen: dict[tuple[Kind, str], None] = {}
        for w in self.words:
            seen[(Kind.WORD, w)] = None
        for p in self.prefixes:
            seen[(Kind.PREFIX, p)] = None
        return list(seen)

    def matches(self, text: str) -> bool:
        have = tokens(text)
        present = set(have)
        if any(w not in present for w in self.words):
            return False
        if any(not any(t.startswith(p) for t in present) for p in self.prefixes):
            return False
        return all(_has_run(have, ph, pre) for ph, pre in zip(self.phrases, self.phrase_prefix))


def _has_run(have: list[str], phrase: tuple[str, ...], last_is_prefix: bool) -> bool:
    n = len(phrase)
    for i in range(len(have) - n + 1):
        if have[i : i + n - 1] != list(phrase[:-1]):
            continue
        last = have[i + n - 1]
        if last == phrase[-1] or (last_is_prefix and last.startswith(phrase[-1])):
            return True
    return False


def _split_terms(q: str) -> list[str]:
    """Whitespace-separated terms; "double quoted" text is one term (an unclosed quote runs to the
    end). A `*` right after the closing quote stays with the term."""
    out: list[str] = []
    i, n = 0, len(q)
    while i < n:
        if q[i].isspace():
            i += 1
        elif q[i] == '"':
            j = q.find('"', i + 1)
            j = n if j < 0 else j
            term, i = q[i : j + 1], j + 1
            while i < n and not q[i].isspace() and q[i] != '"':
                term, i = term + q[i], i + 1
            out.append(term)
        else:
            j = i
            while j < n and not q[j].isspace() and q[j] != '"':
                j += 1
            out.append(q[i:j])
            i = j
    return out


def parse_query(q: str) -> Query:
    """Parse a search box: whitespace-separated terms, "quoted phrases", a trailing `*` for a
    prefix (at least 3 characters before it). Raises ValueError with a message fit for a user."""
    words: list[str] = []
    prefixes: list[str] = []
    phrases: list[tuple[str, ...]] = []
    phrase_prefix: list[bool] = []
    count = 0
    for term in _split_terms(q):
        prefix = term.rstrip('"').endswith("*")
        toks = tokens(term)
        if not toks:
            if prefix:
                raise ValueError(f"a prefix needs at least {MIN_PREFIX} letters or digits before '*': {term!r}")
            continue
        if prefix and len(toks[-1]) < MIN_PREFIX:
            raise ValueError(f"a prefix needs at least {MIN_PREFIX} letters or digits before '*': {term!r}")
        count += len(toks)
        if count > MAX_QUERY_TOKENS:
            raise ValueError(f"a query may have at most {MAX_QUERY_TOKENS} words")
        words.extend(toks[:-1] if prefix else toks)
        if prefix:
            prefixes.append(toks[-1])
        if len(toks) > 1:
            phrases.append(tuple(toks))
            phrase_prefix.append(prefix)
    if not count:
        raise ValueError("the query is empty: give at least one word of letters or digits")
    return Query(tuple(words), tuple(prefixes), tuple(phrases), tuple(phrase_prefix))


def _alternatives(key: bytes, kind: Kind, term: str) -> tuple[bytes, ...]:
    """Tokens any one of which satisfies a required term in a session with this key."""
    if kind is Kind.WORD:
        return (token(key, Kind.WORD, term),)
    if len(term) > MAX_PREFIX:  # only the first 12 characters are indexed: the caller verifies the rest
        return (token(key, Kind.PREFIX, term[:MAX_PREFIX]),)
    return token(key, Kind.WORD, term), token(key, Kind.PREFIX, term)  # the word itself, or longer ones


def _pack(seqs: Iterable[int]) -> bytes:
    s = sorted(seqs)
    a = array("H" if s[-1] < 0x10000 else "I", s)
    return bytes([a.itemsize]) + a.tobytes()


def _unpack(blob: bytes) -> array:
    a = array("H" if blob[0] == 2 else "I")
    a.frombytes(blob[1:])
    return a


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (sid INTEGER PRIMARY KEY, session TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS postings (sid INTEGER NOT NULL, token BLOB NOT NULL,"
    " seqs BLOB NOT NULL, PRIMARY KEY (sid, token)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS chunks (sid INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " refs BLOB NOT NULL, PRIMARY KEY (sid, seq)) WITHOUT ROWID",
)


class TextIndex:
    """The index file. `key` arguments are search keys (`search_key(dek, session)`), never DEKs."""

    _terms_of = staticmethod(terms_of)  # bench/search.py swaps it to measure a words-only index

    def __init__(self, path: Path):
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # SQLite gives -wal/-shm the same mode
        os.close(fd)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._sids: tuple[tuple, dict[str, int]] | None = None  # (what it was read at, session -> sid)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")
        if not self._db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'meta'").fetchone():
            with self._tx():  # only the first opener writes: a reader never waits for the writer here
                for ddl in _SCHEMA:
                    self._db.execute(ddl)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        (version,) = self._db.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()
        if version != FORMAT_VERSION:
            raise ValueError(f"{self.path}: search index format {version}, this code reads {FORMAT_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction: a search sees one committed state across its statements."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _sid(self, session_id: str, create: bool) -> int | None:
        row = self._db.execute("SELECT sid FROM sessions WHERE session = ?", (session_id,)).fetchone()
        if row or not create:
            return row[0] if row else None
        return self._db.execute("INSERT INTO sessions (session) VALUES (?)", (session_id,)).lastrowid

    def put_chunk(self, session_id: str, seq: int, key: bytes, words: Iterable[str]) -> None:
        """Set the words of one chunk, replacing what it had (one transaction)."""
        self.put_chunks(session_id, key, {seq: words})

    def put_chunks(self, session_id: str, key: bytes, chunks: Mapping[int, Iterable[str]]) -> None:
        """Set the words (already `tokens()`) of several chunks of one session, replacing what those
        chunks had, in one transaction. A chunk with no words is recorded as indexed and empty."""
        session_id = str(uuid.UUID(session_id))
        new: dict[bytes, list[int]] = {}
        refs: dict[int, bytes] = {}
        for seq, words in chunks.items():
            if not 0 <= seq < 2**32:
                raise ValueError(f"chunk seq out of range: {seq}")
            toks = {token(key, kind, term) for w in set(words) for kind, term in self._terms_of(w[:MAX_WORD])}
            for t in toks:
                new.setdefault(t, []).append(seq)
            refs[seq] = b"".join(sorted(t[:REF_BYTES] for t in toks))
        with self._tx():
            sid = self._sid(session_id, create=True)
            replaced = self._replaced(sid, refs)
            rows: dict[bytes, set[int]] = {}
            if replaced:
                rows = self._rows_touched(sid, replaced)
                for seqs in rows.values():
                    seqs.difference_update(replaced)
                for t in new.keys() - rows.keys():
                    got = self._db.execute("SELECT seqs FROM postings WHERE sid = ? AND token = ?", (sid, t)).fetchone()
                    if got:
                        rows[t] = set(_unpack(got[0])) - replaced.keys()
            elif self._db.execute("SELECT 1 FROM chunks WHERE sid = ? LIMIT 1", (sid,)).fetchone():
                for t in new:  # new chunks of a session that has others: merge with its rows
                    got = self._db.execute("SELECT seqs FROM postings WHERE sid = ? AND token = ?", (sid, t)).fetchone()
                    if got:
                        rows[t] = set(_unpack(got[0]))
            for t, seqs in new.items():
                rows.setdefault(t, set()).update(seqs)
            self._db.executemany(
                "DELETE FROM postings WHERE sid = ? AND token = ?", [(sid, t) for t, s in rows.items() if not s]
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO postings VALUES (?, ?, ?)", [(sid, t, _pack(s)) for t, s in rows.items() if s]
            )
            chunk_rows = [(sid, s, r) for s, r in refs.items()]
            self._db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", chunk_rows)

    def _replaced(self, sid: int, refs: Mapping[int, bytes]) -> dict[int, bytes]:
        """The old refs of the chunks being written that were indexed before."""
        old = {}
        for seq in refs:
            got = self._db.execute("SELECT refs FROM chunks WHERE sid = ? AND seq = ?", (sid, seq)).fetchone()
            if got:
                old[seq] = got[0]
        return old

    def _rows_touched(self, sid: int, old: Mapping[int, bytes]) -> dict[bytes, set[int]]:
        """Every posting row whose token starts with one of the old refs and holds a replaced seq."""
        prefixes = {blob[i : i + REF_BYTES] for blob in old.values() for i in range(0, len(blob), REF_BYTES)}
        rows: dict[bytes, set[int]] = {}
        for p in prefixes:
            hi = (int.from_bytes(p) + 1).to_bytes(REF_BYTES + 1)[1:] if p != b"\xff" * REF_BYTES else None
            sql = "SELECT token, seqs FROM postings WHERE sid = ? AND token >= ?" + (" AND token < ?" if hi else "")
            for t, blob in self._db.execute(sql, (sid, p, hi) if hi else (sid, p)):
                seqs = set(_unpack(blob))
                if not seqs.isdisjoint(old):
                    rows[t] = seqs
        return rows

    def drop_session(self, session_id: str) -> int:
        """Remove every row of the session (postings, chunk lists, its number); returns how many.
        The freed cells are zeroed (secure_delete) and the WAL is checkpointed and truncated."""
        session_id = str(uuid.UUID(session_id))
        with self._tx():
            sid = self._sid(session_id, create=False)
            if sid is None:
                return 0
            n = self._db.execute("DELETE FROM postings WHERE sid = ?", (sid,)).rowcount
            n += self._db.execute("DELETE FROM chunks WHERE sid = ?", (sid,)).rowcount
            n += self._db.execute("DELETE FROM sessions WHERE sid = ?", (sid,)).rowcount
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # best effort while readers are active
        return n

    def sessions(self) -> set[str]:
        """Sessions with at least one indexed chunk."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session FROM sessions s WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.sid = s.sid)"
            ).fetchall()
        return {r[0] for r in rows}

    def _sid_map(self) -> dict[str, int]:
        """Session -> sid, read again only when the sessions table changed (a row added or dropped;
        a dropped newest sid that is reused shows as another session at the top). Every session row
        has chunk rows: put_chunks writes both in one transaction, drop_session removes both."""
        mark = self._db.execute(
            "SELECT max(sid), count(*), (SELECT session FROM sessions ORDER BY sid DESC LIMIT 1) FROM sessions"
        ).fetchone()
        if self._sids is None or self._sids[0] != mark:
            self._sids = (mark, dict(self._db.execute("SELECT session, sid FROM sessions").fetchall()))
        return self._sids[1]

    def sessions_newest_first(self) -> list[str]:
        """The indexed sessions, the one indexed first last (what a search without filters walks)."""
        with self._lock:
            sids = self._sid_map()
        return sorted(sids, key=sids.__getitem__, reverse=True)

    def indexed_chunks(self, session_id: str) -> set[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.seq FROM chunks c JOIN sessions s ON s.sid = c.sid WHERE s.session = ?",
                (str(uuid.UUID(session_id)),),
            ).fetchall()
        return {r[0] for r in rows}

    def match(self, query: Query, keys: Mapping[str, bytes], limit_chunks: int = 1000) -> dict[str, list[int]]:
        """Session -> ascending seqs of its chunks that hold every term of the query, for the sessions
        in `keys` (session -> search key) only. Sessions are visited in the order of `keys` and the
        search stops once `limit_chunks` chunks were found (the last session's list is cut to fit):
        pass the keys newest session first to get the newest hits. The caller checks every hit
        against the chunk's text with `query.matches` (adjacency, prefixes over 12 characters)."""
        with self._lock, self._snapshot():
            sids = self._sid_map()
            wanted = [(s, sid, k) for s, k in keys.items() if (sid := sids.get(s) or sids.get(_canonical(s)))]
            required = query.required
            found: dict[str, list[int]] = {}
            total = 0
            for i in range(0, len(wanted), _SESSION_BATCH):
                batch = wanted[i : i + _SESSION_BATCH]
                for session, seqs in self._match_batch(batch, required):
                    found[session] = seqs[: limit_chunks - total]
                    total += len(found[session])
                    if total >= limit_chunks:
                        return found
            return found

    def _match_batch(
        self, batch: list[tuple[str, int, bytes]], required: list[tuple[Kind, str]]
    ) -> list[tuple[str, list[int]]]:
        alive: dict[int, set[int] | None] = {sid: None for _, sid, _ in batch}  # None: no term seen yet
        for kind, term in required:
            want: dict[tuple[int, bytes], int] = {}
            for _, sid, key in batch:
                if sid in alive:
                    for t in _alternatives(key, kind, term):
                        want[(sid, t)] = sid
            hits: dict[int, set[int]] = {}
            for sid, blob in self._lookup(list(want)):
                hits.setdefault(sid, set()).update(_unpack(blob))
            for sid in list(alive):
                cur = alive[sid]
                got = hits.get(sid, set())
                got = got if cur is None else cur & got
                if got:
                    alive[sid] = got
                else:
                    del alive[sid]
            if not alive:
                return []
        return [(session, sorted(alive[sid])) for session, sid, _ in batch if alive.get(sid)]

    def _lookup(self, pairs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if not pairs:
            return []
        values = ",".join(["(?,?)"] * len(pairs))
        args = [x for pair in pairs for x in pair]
        sql = (  # VALUES joined to the key: one primary-key seek per pair (`(sid, token) IN` scans)
            f"SELECT p.sid, p.seqs FROM (VALUES {values}) v"
            " CROSS JOIN postings p ON p.sid = v.column1 AND p.token = v.column2"
        )
        return self._db.execute(sql, args).fetchall()


def _canonical(session_id: str) -> str:
    return str(uuid.UUID(session_id))
