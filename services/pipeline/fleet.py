"""Many recorders (issue 17): each recorder announces itself with a heartbeat (where the gateway reaches
it, its capacity, the source kinds it opens); the session a recorder starts is its own, and no other
recorder may drive or feed it; a recorder whose heartbeat lapses has its live sessions finalized from
the chunks it registered (or failed when some are missing), with an end reason that names it. The
other recorders' sessions are untouched.

Who a recorder is comes from its service token (`recorder`, `recorder-<id>`: lucid_assets/trust.py),
never from a request body."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, select

from lucid_assets.core.states import LIVE, Event, State
from lucid_assets.models import RecorderBeat, Transition
from lucid_assets.trust import RECORDER, role_of
from services.common.db import Database
from services.common.errors import ApiError
from services.common.guard import refuse_other_recorder

from . import registry
from .models import ChunkRow, RecorderRow, SessionRow, now

log = logging.getLogger("lucid.fleet")
ACTOR = "pipeline"  # the audit log's name for what the pipeline does on its own (a lapsed recorder)


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; every stored one is UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def heartbeat(s: Session, name: str, beat: RecorderBeat) -> RecorderRow:
    row = s.get(RecorderRow, name)
    if row is None:
        row = RecorderRow(name=name, url=beat.url, capacity=beat.capacity, sources=[])
        log.info("recorder %s announced itself at %s", name, beat.url)
    elif row.lapsed_at is not None:
        log.warning("recorder %s is back after its heartbeat lapsed at %s", name, row.lapsed_at)
    row.url, row.capacity, row.sources = beat.url, beat.capacity, [str(k) for k in beat.sources]
    row.heartbeat_at, row.lapsed_at = now(), None
    s.add(row)
    return row


def infos(s: Session, lapse_seconds: float) -> list[dict]:
    live = dict(
        s.exec(
            select(SessionRow.recorder, func.count())
            .where(SessionRow.recorder.is_not(None), SessionRow.state.in_([str(x) for x in LIVE]))
            .group_by(SessionRow.recorder)
        ).all()
    )
    cutoff = now() - timedelta(seconds=lapse_seconds)
    out = []
    for r in s.exec(select(RecorderRow).order_by(RecorderRow.name)).all():
        beat = _aware(r.heartbeat_at)
        out.append(
            {
                "name": r.name,
                "url": r.url,
                "capacity": r.capacity,
                "sources": r.sources,
                "live": live.get(r.name, 0),
                "alive": r.lapsed_at is None and beat >= cutoff,
                "first_seen": registry.iso(_aware(r.first_seen)),
                "heartbeat_at": registry.iso(beat),
                "lapsed_at": registry.iso(_aware(r.lapsed_at)),
            }
        )
    return out


def check_owner(row: SessionRow, who: str, event: Event | None = None) -> None:
    """A recorder drives and feeds only its own sessions; its start makes a session its own."""
    if role_of(who) != RECORDER:
        return
    if event == Event.START and row.state == State.CREATED:
        row.recorder = who
        return
    refuse_other_recorder(row, who)


def _orphaned(s: Session, row: SessionRow, name: str, since: datetime, lapse: float) -> None:
    """Finalize one session of a lapsed recorder from the chunks it registered."""
    reason = (
        f"recorder {name} lapsed: no heartbeat since {since.isoformat()} (over {lapse:g} s); "
        "finalized from the chunks it had uploaded"
    )
    if row.state in (State.RECORDING, State.PAUSED):
        registry.transition(s, row, Transition(event=Event.STOP, reason=reason), ACTOR)
    seqs = sorted(s.exec(select(ChunkRow.seq).where(ChunkRow.session_id == row.id)).all())
    if seqs == list(range(len(seqs))):
        registry.transition(s, row, Transition(event=Event.FINALIZE, expected_chunks=len(seqs), reason=reason), ACTOR)
    else:
        missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
        failed = Transition(event=Event.FAIL, reason=f"{reason}; chunks {missing} never arrived")
        registry.transition(s, row, failed, ACTOR)


def reap(db: Database, lapse_seconds: float) -> list[str]:
    """Mark recorders whose heartbeat lapsed and finalize their live sessions; returns the sessions."""
    cutoff = now() - timedelta(seconds=lapse_seconds)
    with db.write() as s:
        lapsed = [
            (r.name, _aware(r.heartbeat_at))
            for r in s.exec(select(RecorderRow).where(RecorderRow.lapsed_at.is_(None))).all()
            if _aware(r.heartbeat_at) < cutoff
        ]
        for name, _ in lapsed:
            row = s.get(RecorderRow, name)
            row.lapsed_at = now()
            s.add(row)
    done = []
    for name, since in lapsed:
        log.warning("recorder %s: no heartbeat since %s; finalizing its live sessions", name, since)
        with db.read() as s:
            ids = s.exec(
                select(SessionRow.id).where(
                    SessionRow.recorder == name, SessionRow.state.in_([str(x) for x in LIVE | {State.FINALIZING}])
                )
            ).all()
        for sid in ids:
            try:
                with db.write() as s:
                    row = registry.get_row(s, sid, lock=True)
                    if row.state in LIVE | {State.FINALIZING} and row.recorder == name:
                        _orphaned(s, row, name, since, lapse_seconds)
                        done.append(sid)
            except ApiError as exc:  # changed meanwhile (stopped by the recorder's last words): left as it is
                log.warning("session %s of lapsed recorder %s: %s", sid, name, exc.detail)
    return done


def watch(db: Database, lapse_seconds: float, stop: threading.Event) -> None:
    """The pipeline's own watch over the recorders' heartbeats (a thread for the process's life)."""
    period = max(1.0, min(5.0, lapse_seconds / 4))
    while not stop.wait(period):
        try:
            reap(db, lapse_seconds)
        except Exception:  # a database hiccup: the next round tries again
            log.exception("recorder heartbeat check failed")
