"""The registry's rules: transitions (through the core state machine), the audit chain, chunk
registration and the work queue. Every change happens in one write transaction."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from lucid_assets.core import audit, states
from lucid_assets.core.states import ChunkState, Event, Note, State, WorkReason
from lucid_assets.models import CreateSession, ManifestSummary, RegisterChunk, StoredMark, Transition
from services.common.errors import ApiError, not_found

from .models import AuditRow, ChunkRow, ClaimRow, SessionRow, WorkItem, now


def _iso(dt):
    return dt.isoformat() if dt else None


iso = _iso  # what the routes answer times with


def get_row(s: Session, session_id: str, *, lock: bool = False) -> SessionRow:
    try:
        uuid.UUID(session_id)
    except ValueError:
        raise not_found(f"session {session_id!r} does not exist (not a session id)") from None
    q = select(SessionRow).where(SessionRow.id == session_id)
    row = s.exec(q.with_for_update() if lock else q).first()
    if row is None:
        raise not_found(f"session {session_id} does not exist")
    return row


def totals(s: Session, ids: list[str]) -> dict[str, dict]:
    q = (
        select(
            ChunkRow.session_id,
            func.count(),
            func.coalesce(func.sum(ChunkRow.size), 0),
            func.coalesce(func.sum(ChunkRow.stored_size), 0),
            func.coalesce(func.sum(ChunkRow.duration_ms), 0),
            func.coalesce(func.sum(ChunkRow.dropped_frames), 0),
            func.sum(case((ChunkRow.state == ChunkState.STORED, 1), else_=0)),
        )
        .where(ChunkRow.session_id.in_(ids))
        .group_by(ChunkRow.session_id)
    )
    return {
        sid: {
            "chunk_count": n,
            "raw_bytes": raw,
            "stored_bytes": stored,
            "duration_ms": dur,
            "dropped_frames": dropped,
            "chunks_stored": int(done or 0),
        }
        for sid, n, raw, stored, dur, dropped, done in s.exec(q)
    }


def to_dict(row: SessionRow, t: dict | None) -> dict:
    t = t or {
        "chunk_count": 0,
        "raw_bytes": 0,
        "stored_bytes": 0,
        "duration_ms": 0,
        "dropped_frames": 0,
        "chunks_stored": 0,
    }
    return {
        "id": row.id,
        "name": row.name,
        "state": row.state,
        "labels": row.labels,
        "source": row.source,
        "video": row.video,
        "encoder": row.encoder,
        "chunk_seconds": row.chunk_seconds,
        "retention_days": row.retention_days,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "stopped_at": _iso(row.stopped_at),
        "sealed_at": _iso(row.sealed_at),
        "expected_chunks": row.expected_chunks,
        **t,
        "merkle_root": row.merkle_root,
        "manifest_version": row.manifest_version,
        "manifest_sha256": row.manifest_sha256,
        "failure_reason": row.failure_reason,
        "end_reason": row.end_reason,
        "recorder": row.recorder,
        "verification": row.verification,
        "updated_at": _iso(row.updated_at),
    }


def session_dict(s: Session, row: SessionRow) -> dict:
    return to_dict(row, totals(s, [row.id]).get(row.id))


def append_audit(s: Session, session_id: str, entry: dict) -> AuditRow:
    last = s.exec(
        select(AuditRow).where(AuditRow.session_id == session_id).order_by(AuditRow.idx.desc()).limit(1)
    ).first()
    idx, prev = (last.idx + 1, last.hash) if last else (0, audit.GENESIS)
    entry = {"session_id": session_id, "idx": idx, "at": now().isoformat(), **entry}
    row = AuditRow(session_id=session_id, idx=idx, entry=entry, prev_hash=prev, hash=audit.entry_hash(prev, entry))
    s.add(row)
    return row


def create(s: Session, body: CreateSession, actor: str) -> SessionRow:
    row = SessionRow(
        id=str(uuid.uuid4()),
        name=body.name,
        state=State.CREATED.value,
        labels=body.labels,
        source=body.source.model_dump(),
        video=body.video.model_dump(),
        chunk_seconds=body.chunk_seconds,
        retention_days=body.retention_days,
    )
    s.add(row)
    s.flush()
    append_audit(
        s, row.id, {"event": Note.CREATE, "from": None, "to": row.state, "actor": actor, "detail": {"name": body.name}}
    )
    return row


def transition(s: Session, row: SessionRow, t: Transition, actor: str) -> None:
    events = [t.event]
    if t.event == Event.SEAL and row.state == State.FAILED:
        events = [Event.RETRY, Event.SEAL]  # a successful rerun of a failed session heals it
    for event in events:
        try:
            new = states.next_state(row.state, event)
        except states.IllegalTransition as exc:
            raise ApiError(409, "illegal_transition", str(exc), state=row.state) from None
        _apply(s, row, event, new, t, actor)


def _apply(s: Session, row: SessionRow, event: Event, new: State, t: Transition, actor: str) -> None:
    ts = now()
    detail: dict = {}
    if event == Event.START:
        row.started_at = ts
        if t.encoder:
            row.encoder = detail["encoder"] = t.encoder
    elif event == Event.STOP:
        row.stopped_at = ts
        row.end_reason = t.reason or "stopped"
    elif event == Event.FINALIZE:
        n = t.expected_chunks
        if n is None:
            raise ApiError(422, "invalid_request", "finalize needs expected_chunks")
        have = s.exec(select(ChunkRow.seq).where(ChunkRow.session_id == row.id)).all()
        if sorted(have) != list(range(n)):
            raise ApiError(
                409, "incomplete", f"finalize expects chunks 0..{n - 1}, registry has {sorted(have)}", state=row.state
            )
        row.expected_chunks = detail["expected_chunks"] = n
        s.add(WorkItem(session_id=row.id, up_to_seq=n - 1, reason=WorkReason.FINAL))
    elif event == Event.SEAL:
        if not row.manifest_sha256:
            raise ApiError(409, "no_manifest", "cannot seal a session whose manifest was not recorded", state=row.state)
        row.sealed_at = ts
        detail = {"merkle_root": row.merkle_root, "manifest_version": row.manifest_version}
    elif event == Event.FAIL:
        row.failure_reason = t.reason or "unspecified failure"
    elif event == Event.RETRY:
        row.failure_reason = None
        s.add(WorkItem(session_id=row.id, up_to_seq=(row.expected_chunks or 0) - 1, reason=WorkReason.RETRY))
    if t.reason:
        detail["reason"] = t.reason
    append_audit(s, row.id, {"event": event, "from": row.state, "to": new.value, "actor": actor, "detail": detail})
    row.state = new.value
    row.updated_at = ts
    s.add(row)


def register_chunk(s: Session, row: SessionRow, c: RegisterChunk) -> tuple[ChunkRow, bool]:
    existing = s.get(ChunkRow, (row.id, c.seq))
    if existing is not None:
        if existing.sha256 == c.sha256 and existing.size == c.size:
            return existing, False
        raise ApiError(409, "chunk_conflict", f"chunk {c.seq} is already registered with other bytes", state=row.state)
    if row.state not in states.REGISTRABLE:
        raise ApiError(
            409,
            "illegal_state",
            f"chunks can only be registered while recording or finalizing, not while {row.state}",
            state=row.state,
        )
    chunk = ChunkRow(session_id=row.id, **c.model_dump())
    s.add(chunk)
    if row.state != State.FINALIZING:  # live processing; the final batch is queued by finalize
        s.add(WorkItem(session_id=row.id, up_to_seq=c.seq, reason=WorkReason.CHUNKS))
    return chunk, True


def mark_stored(s: Session, body: StoredMark) -> ChunkRow:
    session_id, seq = body.session_id, body.seq
    chunk = s.get(ChunkRow, (session_id, seq))
    if chunk is None:
        raise not_found(f"chunk {seq} of session {session_id} is not registered")
    if chunk.state == ChunkState.STORED and chunk.envelope_sha256 != body.envelope_sha256:
        append_audit(
            s,
            session_id,
            {
                "event": Note.CHUNK_RESTORED,
                "from": None,
                "to": None,
                "actor": "processor",
                "detail": {"seq": seq, "old": chunk.envelope_sha256, "new": body.envelope_sha256},
            },
        )
    chunk.state, chunk.stored_at = ChunkState.STORED.value, now()
    chunk.envelope_sha256, chunk.stored_size, chunk.compressed = body.envelope_sha256, body.stored_size, body.compressed
    s.add(chunk)
    return chunk


def record_manifest(s: Session, row: SessionRow, body: ManifestSummary) -> None:
    if row.manifest_sha256 == body.manifest_sha256:
        return
    append_audit(
        s, row.id, {"event": Note.MANIFEST, "from": None, "to": None, "actor": "processor", "detail": body.model_dump()}
    )
    row.merkle_root, row.manifest_version, row.manifest_sha256 = body.merkle_root, body.version, body.manifest_sha256
    s.add(row)


def chunk_dict(c: ChunkRow) -> dict:
    return {
        "seq": c.seq,
        "sha256": c.sha256,
        "size": c.size,
        "duration_ms": c.duration_ms,
        "frames": c.frames,
        "dropped_frames": c.dropped_frames,
        "salvaged": c.salvaged,
        "state": c.state,
        "path": c.path,
        "registered_at": _iso(c.registered_at),
        "stored_at": _iso(c.stored_at),
        "envelope_sha256": c.envelope_sha256,
        "stored_size": c.stored_size,
        "compressed": c.compressed,
    }


def audit_dicts(rows: list[AuditRow]) -> list[dict]:
    return [{"entry": r.entry, "prev_hash": r.prev_hash, "hash": r.hash} for r in rows]


Page = list[tuple[dict, list[dict], bool]]


def pending(s: Session, limit: int, *, held_by_others: str | None = None) -> tuple[Page, bool]:
    """Sessions with work for a processing batch: finalized and not sealed first, then those with
    chunks not stored yet, the longest waiting first; each with its chunks. (page, more). With
    `held_by_others` (a holder), the sessions another holder's live claim holds are left out."""
    waiting = (
        select(ChunkRow.session_id, func.min(ChunkRow.registered_at).label("since"))
        .where(ChunkRow.state == ChunkState.REGISTERED)
        .group_by(ChunkRow.session_id)
        .subquery()
    )
    live = (State.RECORDING, State.PAUSED, State.FINALIZING)
    q = (
        select(SessionRow)
        .outerjoin(waiting, waiting.c.session_id == SessionRow.id)
        .where(
            or_(
                SessionRow.state == State.PROCESSING,
                and_(SessionRow.state.in_(live), waiting.c.session_id.is_not(None)),
            )
        )
        .order_by(case((SessionRow.state == State.PROCESSING, 0), else_=1), waiting.c.since, SessionRow.id)
        .limit(limit + 1)
    )
    if held_by_others is not None:
        held = select(ClaimRow.session_id).where(ClaimRow.expires_at > now(), ClaimRow.holder != held_by_others)
        q = q.where(SessionRow.id.not_in(held))
    rows = list(s.exec(q).all())
    more, rows = len(rows) > limit, rows[:limit]
    ids = [r.id for r in rows]
    chunks: dict[str, list[dict]] = {}
    for c in s.exec(select(ChunkRow).where(ChunkRow.session_id.in_(ids)).order_by(ChunkRow.session_id, ChunkRow.seq)):
        chunks.setdefault(c.session_id, []).append(chunk_dict(c))
    t = totals(s, ids)
    return [(to_dict(r, t.get(r.id)), chunks.get(r.id, []), r.state == State.PROCESSING) for r in rows], more


def claim(s: Session, holder: str, limit: int, lease_seconds: int) -> tuple[Page, bool]:
    """Pending sessions no other live claim holds, now held by `holder` for `lease_seconds` (its own
    earlier claims renewed). One atomic upsert decides each session: a claim that another holder
    took meanwhile (another pipeline process, PostgreSQL) is not overwritten, and that session is
    left out of the answer. (page, more)."""
    t = now()
    s.exec(delete(ClaimRow).where(ClaimRow.expires_at <= t))
    page, more = pending(s, limit, held_by_others=holder)
    if not page:
        return [], more
    until = t + timedelta(seconds=lease_seconds)
    table = ClaimRow.__table__
    insert = (postgresql if s.get_bind().dialect.name == "postgresql" else sqlite).insert(table)
    stmt = (
        insert.values(
            [{"session_id": ses["id"], "holder": holder, "claimed_at": t, "expires_at": until} for ses, _, _ in page]
        )
        .on_conflict_do_update(
            index_elements=[table.c.session_id],
            set_={"holder": insert.excluded.holder, "claimed_at": t, "expires_at": until},
            where=or_(table.c.holder == holder, table.c.expires_at <= t),
        )
        .returning(table.c.session_id)
    )
    won = set(s.exec(stmt).scalars())
    return [item for item in page if item[0]["id"] in won], more


def renew(s: Session, holder: str, lease_seconds: int) -> tuple[int, datetime | None]:
    """Extend every claim `holder` still holds; (sessions held, new expiry)."""
    t = now()
    until = t + timedelta(seconds=lease_seconds)
    n = s.exec(
        update(ClaimRow).where(ClaimRow.holder == holder, ClaimRow.expires_at > t).values(expires_at=until)
    ).rowcount
    return n, (until if n else None)


def release(s: Session, holder: str) -> int:
    return s.exec(delete(ClaimRow).where(ClaimRow.holder == holder)).rowcount


def holders(s: Session, ids: list[str]) -> dict[str, str]:
    """The live claim's holder of each of these sessions that has one."""
    rows = s.exec(select(ClaimRow).where(ClaimRow.session_id.in_(ids), ClaimRow.expires_at > now()))
    return {r.session_id: r.holder for r in rows}
