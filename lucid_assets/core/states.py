"""The platform's one vocabulary: session states and events (the one state machine: every
transition in the platform is checked here), chunk states, work reasons and verification
statuses. Both sides of every HTTP hop use these enums; no other module spells their values."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    CREATED = "created"
    RECORDING = "recording"
    PAUSED = "paused"
    FINALIZING = "finalizing"
    PROCESSING = "processing"
    SEALED = "sealed"
    FAILED = "failed"
    DELETED = "deleted"


class Event(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    FINALIZE = "finalize"  # the recorder has flushed and registered its last segment
    SEAL = "seal"  # the manifest is signed and catalogued
    FAIL = "fail"
    RETRY = "retry"
    DELETE = "delete"


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CREATED, E.START): S.RECORDING,
    (S.RECORDING, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.RESUME): S.RECORDING,
    (S.RECORDING, E.STOP): S.FINALIZING,
    (S.PAUSED, E.STOP): S.FINALIZING,
    (S.FINALIZING, E.FINALIZE): S.PROCESSING,
    (S.PROCESSING, E.SEAL): S.SEALED,
    (S.RECORDING, E.FAIL): S.FAILED,
    (S.FINALIZING, E.FAIL): S.FAILED,
    (S.PROCESSING, E.FAIL): S.FAILED,
    (S.FAILED, E.RETRY): S.PROCESSING,
    (S.CREATED, E.DELETE): S.DELETED,
    (S.SEALED, E.DELETE): S.DELETED,
    (S.FAILED, E.DELETE): S.DELETED,
}

# states in which the recorder may register chunks (a stop still flushes the last segment)
REGISTRABLE = frozenset({S.RECORDING, S.PAUSED, S.FINALIZING})
# states in which a session's recording has ended for good (players stop polling)
ENDED = frozenset({S.SEALED, S.FAILED, S.DELETED})
# states from which the recorder still owes a finalize (crash recovery, push ingest)
LIVE = frozenset({S.RECORDING, S.PAUSED})


class ChunkState(StrEnum):
    REGISTERED = "registered"  # the recorder wrote and registered it; staging file on the recordings volume
    STORED = "stored"  # enveloped, durable in the chunk store and catalogued


class WorkReason(StrEnum):
    """Why the pipeline queued work for Dagster (the work-queue item's reason, a run's tag)."""

    CHUNKS = "chunks"  # new chunks while recording: a live batch
    FINAL = "final"  # the recorder finalized the session: store the rest and seal
    RETRY = "retry"  # a failed session was retried
    RECONCILE = "reconcile"  # the reconciling sensor found stalled work


class Note(StrEnum):
    """Audit-log events that are not transitions."""

    CREATE = "create"  # the session was created (its first entry)
    MANIFEST = "manifest"  # a (new version of the) signed manifest was recorded
    CHUNK_RESTORED = "chunk_restored"  # a stored chunk was re-enveloped (forced reprocess)
    REPROCESS = "reprocess"  # an operator forced a reprocess
    SHARE_CREATED = "share_created"  # an operator made a share link for the session
    SHARE_REVOKED = "share_revoked"  # a share link was revoked (by an operator, or with its creator's key)
    SHARE_USED = "share_used"  # a share link was used: what it fetched (view, play, download, evidence)
    EVIDENCE = "evidence"  # an evidence bundle was exported (by an API key or a share)
    SOURCE_LOST = "source_lost"  # a remote desktop's connection dropped: nothing is recorded until it is back
    SOURCE_BACK = "source_back"  # ... and came back (the gap between the two is a gap in the recording)
    MARKER = "marker"  # an operator marked a moment of the recording (issue 15): t_ms and a note


class VerifyStatus(StrEnum):
    VERIFIED = "verified"
    FAILED = "failed"
    SHREDDED = "shredded"  # the data key was destroyed: hashes still check, contents are gone
    PENDING = "pending"  # not sealed yet: nothing final to verify (never stored as a failure)


class ShareStatus(StrEnum):
    """A share link's status (gateway, issue 16)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ShareUse(StrEnum):
    """What a share link fetched (the `what` of a share_used audit note)."""

    VIEW = "view"  # GET /v1/share
    PLAY = "play"  # POST /v1/share/links
    MP4 = "mp4"
    TS = "ts"
    EVIDENCE = "evidence"


class ShareRevocation(StrEnum):
    """Why a share link was revoked (the `reason` of a share_revoked audit note)."""

    OPERATOR = "operator"  # DELETE /v1/sessions/{id}/shares/{share_id}
    API_KEY_REVOKED = "api_key_revoked"  # the API key that made it was revoked
    SESSION_DELETED = "session_deleted"  # its session was crypto-shredded


class IllegalTransition(Exception):
    def __init__(self, state: State, event: Event):
        self.state, self.event = State(state), Event(event)
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == self.state)
        super().__init__(
            f"cannot {self.event.value} a session that is {self.state.value}"
            + (f"; allowed: {', '.join(allowed)}" if allowed else "; no transition is allowed")
        )


def next_state(state: State | str, event: Event | str) -> State:
    """The state after `event`, or IllegalTransition."""
    try:
        return TRANSITIONS[(State(state), Event(event))]
    except KeyError:
        raise IllegalTransition(State(state), Event(event)) from None


class SourceKind(StrEnum):
    """What a session records from (the `kind` of its source, lucid_assets/models.py); a recorder
    announces the kinds it can open (issue 17: the gateway places a session on one that can)."""

    TESTSRC = "testsrc"
    X11 = "x11"
    URL = "url"
    PUSH = "push"
    VNC = "vnc"
    RDP = "rdp"


class CredentialKind(StrEnum):
    """What a stored remote-desktop credential is for (issue 18): the same words as the session
    source kinds it serves (`VncSource.kind`, `RdpSource.kind`)."""

    VNC = "vnc"
    RDP = "rdp"


# states in which the recorder may open the credential its session's source names: before the
# first connection (start) and for reconnects while recording or paused; never once it has ended
CREDENTIAL_OPENABLE = frozenset({S.CREATED, S.RECORDING, S.PAUSED})


class Insight(StrEnum):
    """The derived products of a session's stored chunks (issue 15), one sealed record each per chunk
    (`lucid_assets/insight/records.py`); `state` is what the derivation carries from one chunk to the
    next (the last frame seen and the text on screen)."""

    ACTIVITY = "activity"
    THUMBNAILS = "thumbnails"
    TEXT = "text"
    STATE = "state"
