"""The wire models: every request and response body that crosses an HTTP hop between the gateway,
the services and Dagster (validated at the edge and again by the owner of the data), typed with the
one vocabulary of `core.states`. FastAPI routes declare them, so /openapi.json describes every body."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    field_serializer,
    field_validator,
    model_validator,
)

from .core import manifest
from .core.states import (
    ChunkState,
    CredentialKind,
    Event,
    Note,
    ShareStatus,
    SourceKind,
    State,
    VerifyStatus,
    WorkReason,
)

LABEL_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatternSource(Strict):
    """FFmpeg's synthetic test pattern (lavfi), paced to real time: demos and tests."""

    kind: Literal["testsrc"] = "testsrc"
    pattern: Literal["testsrc", "testsrc2", "smptebars", "rgbtestsrc"] = "testsrc"


class X11Source(Strict):
    """An X display (e.g. an xrdp session's) captured with x11grab, cursor included."""

    kind: Literal["x11"]
    display: str = Field(..., pattern=r"^[A-Za-z0-9._\-]*:\d{1,4}(\.\d{1,2})?$", examples=[":10.0"])
    offset_x: StrictInt = Field(0, ge=0, le=16384)
    offset_y: StrictInt = Field(0, ge=0, le=16384)
    capture_width: StrictInt | None = Field(None, ge=16, le=16384, description="default: the video width")
    capture_height: StrictInt | None = Field(None, ge=16, le=16384, description="default: the video height")
    draw_mouse: bool = True


class UrlSource(Strict):
    """Anything FFmpeg opens: a file under LUCID_URL_FILE_ROOTS, http(s)://, rtsp://, rtmp://, srt://."""

    kind: Literal["url"]
    url: str = Field(..., min_length=1, max_length=4096)
    realtime: StrictBool = Field(True, description="read files at their own speed (like ffmpeg -re)")


class PushSource(Strict):
    """An external agent uploads the chunks itself: PUT /v1/sessions/{id}/chunks/{seq}."""

    kind: Literal["push"]


CREDENTIAL_NAME = r"^[a-z0-9][a-z0-9_.\-]{0,62}$"
HOST = r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]{2,45}\]?$"


class RemoteDesktop(Strict):
    """A remote desktop, watched by a real viewer (TigerVNC's, FreeRDP's) rendering into a private
    X display that the x11 capture records. Private addresses need LUCID_URL_ALLOW_HOSTS."""

    host: str = Field(..., min_length=1, max_length=253, pattern=HOST, examples=["10.0.0.5"])
    credential: str | None = Field(
        None, pattern=CREDENTIAL_NAME, description="name of a stored credential (POST /v1/credentials, admin)"
    )
    reconnect_seconds: StrictInt = Field(
        60, ge=0, le=3600, description="how long a dropped connection is retried (the gap is recorded as a gap)"
    )


class VncSource(RemoteDesktop):
    """A VNC (RFB) server's desktop, view-only and shared: nobody at the desktop is disturbed."""

    kind: Literal["vnc"]
    port: StrictInt = Field(5900, ge=1, le=65535)


class RdpSource(RemoteDesktop):
    """An RDP server's desktop (NLA, TLS or RDP security as the server asks). RDP has no view-only
    mode: Lucid sends no input, but logging in takes over the user's console session."""

    kind: Literal["rdp"]
    port: StrictInt = Field(3389, ge=1, le=65535)
    credential: str = Field(..., pattern=CREDENTIAL_NAME, description="name of a stored credential (admin)")


Source = Annotated[
    PatternSource | X11Source | UrlSource | PushSource | VncSource | RdpSource, Field(discriminator="kind")
]


class Video(Strict):
    width: StrictInt = Field(1280, ge=64, le=3840, multiple_of=2)
    height: StrictInt = Field(720, ge=64, le=2160, multiple_of=2)
    fps: StrictInt = Field(30, ge=1, le=60)
    encoders: list[Literal["libx264", "h264_v4l2m2m", "h264_nvenc"]] | None = Field(
        None,
        min_length=1,
        description="preference order; default LUCID_ENCODERS "
        "(h264_v4l2m2m, h264_nvenc, libx264): the first that opens is used",
    )


class CreateSession(Strict):
    name: str = Field(..., min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    source: Source = Field(default_factory=PatternSource)
    video: Video = Field(default_factory=Video)
    chunk_seconds: StrictInt = Field(10, ge=1, le=600)
    retention_days: StrictInt | None = Field(None, ge=1, le=36500)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not LABEL_KEY.match(k):
                raise ValueError(f"label key {k!r} must match {LABEL_KEY.pattern}")
            if len(val) > 256:
                raise ValueError(f"label {k!r} value is longer than 256 characters")
        return v


class Transition(Strict):
    event: Event
    reason: str | None = Field(None, max_length=2000)
    expected_chunks: StrictInt | None = Field(None, ge=0)
    encoder: str | None = Field(None, max_length=100)


class RegisterChunk(Strict):
    seq: StrictInt = Field(..., ge=0)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    size: StrictInt = Field(..., ge=0)
    duration_ms: StrictInt = Field(0, ge=0)
    frames: StrictInt = Field(0, ge=0)
    path: str = Field(..., min_length=1, max_length=4096)
    dropped_frames: StrictInt = Field(0, ge=0, description="frames the recorder could not capture in this chunk's span")
    salvaged: bool = Field(False, description="cut short by a recorder crash, kept up to its last complete frame")


class StoredMark(Strict):
    """A chunk now durable in the chunk store and catalogued (what a processing batch reports)."""

    session_id: str = Field(..., min_length=36, max_length=36)
    seq: StrictInt = Field(..., ge=0)
    envelope_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    stored_size: StrictInt = Field(..., ge=0)
    compressed: bool


class ManifestSummary(Strict):
    version: StrictInt = Field(..., ge=1)
    merkle_root: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    manifest_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class StoredMarks(Strict):
    """A processing batch's stored chunks, over many sessions, marked in one call and one transaction."""

    items: list[StoredMark] = Field(..., max_length=100_000)


class VerificationSummary(Strict):
    status: VerifyStatus
    problems: StrictInt = Field(..., ge=0)
    at: str = Field(..., max_length=40)


class AuditNote(Strict):
    event: Literal[
        Note.REPROCESS,
        Note.SHARE_CREATED,
        Note.SHARE_REVOKED,
        Note.SHARE_USED,
        Note.EVIDENCE,
        Note.SOURCE_LOST,
        Note.SOURCE_BACK,
        Note.MARKER,
    ]
    detail: dict = Field(default_factory=dict)

    @field_validator("detail")
    @classmethod
    def _canonical(cls, v: dict) -> dict:
        manifest.no_floats(v)  # the audit chain hashes canonical JSON: a float is refused here, not a 500
        return v


# --- responses ---------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every 4xx/5xx: a stable code, a sentence saying what and why, sometimes more (e.g. `state`)."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(..., examples=["illegal_transition"])
    detail: str = Field(..., examples=["cannot stop a session that is created; allowed: start, delete"])
    state: State | None = Field(None, description="the session's current state, for refused transitions")


Iso = Annotated[str, Field(description="ISO 8601 time", examples=["2026-12-01T16:45:32.123456+00:00"])]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Session(BaseModel):
    id: str
    name: str
    state: State
    labels: dict[str, str]
    source: dict[str, Any] = Field(..., description="the source as created (see CreateSession.source)")
    video: dict[str, Any]
    encoder: str | None = Field(None, description="the encoder that opened (`push` for pushed chunks)")
    chunk_seconds: int
    retention_days: int | None
    created_at: Iso
    started_at: Iso | None
    stopped_at: Iso | None
    sealed_at: Iso | None
    expected_chunks: int | None = Field(None, description="known once the recorder has finalized")
    chunk_count: int
    raw_bytes: int
    stored_bytes: int
    duration_ms: int
    dropped_frames: int = Field(0, description="frames the recorder could not capture, over every chunk")
    chunks_stored: int
    merkle_root: Sha256 | None
    manifest_version: int | None
    manifest_sha256: Sha256 | None
    failure_reason: str | None
    end_reason: str | None
    recorder: str | None = Field(None, description="the recorder that records (or recorded) it")
    verification: VerificationSummary | None = Field(None, description="the last verification's outcome")
    updated_at: Iso


class SessionSpan(BaseModel):
    id: str
    name: str
    created_at: Iso
    started_at: Iso | None
    stopped_at: Iso | None


class SessionSpans(BaseModel):
    items: list[SessionSpan]


class SessionPage(BaseModel):
    items: list[Session]
    total: int
    limit: int
    offset: int


class Chunk(BaseModel):
    seq: int
    sha256: Sha256 = Field(..., description="SHA-256 of the chunk's bytes as recorded")
    size: int
    duration_ms: int
    frames: int
    dropped_frames: int = Field(0, description="frames the recorder could not capture in this chunk's span")
    salvaged: bool = Field(False, description="cut short by a recorder crash, kept up to its last complete frame")
    state: ChunkState
    registered_at: Iso
    stored_at: Iso | None
    envelope_sha256: Sha256 | None
    stored_size: int | None
    compressed: bool | None


class RegisteredChunk(Chunk):
    """A chunk as the services see it: with the staging file on the recordings volume."""

    path: str


class ChunkList(BaseModel):
    items: list[Chunk]


class RegisteredChunkList(BaseModel):
    items: list[RegisteredChunk]


class Registration(BaseModel):
    created: bool = Field(..., description="false: identical bytes were already registered under this seq")
    chunk: RegisteredChunk


class RecorderBeat(Strict):
    """A recorder's heartbeat (issue 17): where the gateway reaches it and what it takes. Who it is
    comes from its service token, not from this body."""

    url: str = Field(..., pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=512)
    capacity: StrictInt = Field(..., ge=1, le=1024, description="sessions it records at once")
    sources: list[SourceKind] = Field(..., max_length=16, description="the source kinds it can open")


class RecorderInfo(BaseModel):
    name: str
    url: str
    capacity: int
    sources: list[SourceKind]
    live: int = Field(..., description="its sessions now recording or paused")
    alive: bool = Field(..., description="heartbeat within the lapse time")
    first_seen: Iso
    heartbeat_at: Iso
    lapsed_at: Iso | None


class RecorderList(BaseModel):
    items: list[RecorderInfo]


class Staged(BaseModel):
    """A recorder's segment, sealed in the chunk store's staging area (issue 17: hosts share no
    filesystem): what the recorder registers as the chunk's path."""

    path: str = Field(..., description="the staged object's reference, registered as the chunk's path")
    sha256: str
    size: int
    created: bool = Field(..., description="false: identical bytes were already staged under this seq")


class PushResult(BaseModel):
    created: bool = Field(..., description="false: identical bytes were already stored under this seq")
    chunk: Chunk


class AuditEntry(BaseModel):
    entry: dict[str, Any] = Field(..., description="session_id, idx, at, event, from, to, actor, detail")
    prev_hash: Sha256
    hash: Sha256


class EventList(BaseModel):
    items: list[AuditEntry]


class AuditReceipt(BaseModel):
    entry: dict[str, Any]
    hash: Sha256


class WorkItem(BaseModel):
    id: int
    session_id: str
    up_to_seq: int
    reason: WorkReason
    created_at: Iso


class WorkPage(BaseModel):
    items: list[WorkItem]


class Pending(BaseModel):
    """A session with work for a processing batch: chunks not stored yet, or finalized and not sealed."""

    session: Session
    chunks: list[RegisteredChunk] = Field(..., description="every registered chunk, in seq order")
    final: bool = Field(..., description="finalized: store what is left, then seal")
    claimed_by: str | None = Field(None, description="the processing run that holds it now (issue 17)")


class PendingPage(BaseModel):
    items: list[Pending]
    more: bool = Field(..., description="more sessions are waiting than this page holds")


HOLDER = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"


class WorkClaim(Strict):
    """A processing run asks for sessions with work that no other run holds (issue 17)."""

    holder: str = Field(..., pattern=HOLDER, description="who takes them: the run's id")
    limit: StrictInt = Field(200, ge=1, le=2000, description="sessions at most")
    lease_seconds: StrictInt = Field(120, ge=1, le=7200, description="held this long unless renewed")


class LeaseRenewal(Strict):
    lease_seconds: StrictInt = Field(120, ge=1, le=7200)


class Lease(BaseModel):
    holder: str
    sessions: int = Field(..., description="sessions it holds")
    expires_at: Iso | None = Field(None, description="when they lapse unless renewed (none held: null)")


class Marked(BaseModel):
    marked: int


class Signed(BaseModel):
    """A signed document (manifest or checkpoint): canonical-JSON body and its Ed25519 signature."""

    model_config = ConfigDict(extra="allow")
    body: dict[str, Any]
    signature: dict[str, Any]


class CheckpointList(BaseModel):
    items: list[Signed]


class Proof(BaseModel):
    session_id: str
    seq: int
    leaf: Sha256 = Field(..., description="SHA-256 of the chunk's envelope")
    tree_size: int
    root: Sha256
    proof: list[Sha256] = Field(..., description="RFC 6962 audit path, leaf to root")
    anchor: Literal["manifest", "checkpoint"]
    signed: Signed


class VerifyReport(BaseModel):
    session_id: str
    ok: bool
    status: VerifyStatus
    problems: list[str]
    checks: list[dict[str, Any]]
    chunks: list[dict[str, Any]]


class ShredResult(BaseModel):
    data_key_destroyed: bool
    envelopes_removed: int
    staging_removed: bool
    chunk_rows_removed: int
    session_rows_marked: int


class DeletedSession(Session):
    shredded: ShredResult


class SigningKey(BaseModel):
    alg: Literal["Ed25519"]
    key_id: str
    public_key: str = Field(..., description="raw 32-byte public key, base64")


class PlaylistItem(BaseModel):
    seq: int
    duration_ms: int
    size: int


class Playlist(BaseModel):
    items: list[PlaylistItem]


class CaptureInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: str
    encoder: str


class CaptureList(BaseModel):
    items: list[CaptureInfo]


# --- share links (issue 16) -------------------------------------------------------------------
class ShareWindow(Strict):
    """A stretch of the recording, in ms from its start: the chunks overlapping [from_ms, to_ms)."""

    from_ms: int = Field(..., ge=0)
    to_ms: int = Field(..., gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ShareWindow:
        if self.to_ms <= self.from_ms:
            raise ValueError("window.to_ms must be greater than window.from_ms")
        return self


class CreateShare(Strict):
    expires_in: int = Field(
        7 * 24 * 3600, ge=1, description="seconds the link lives; at most LUCID_SHARE_MAX_SECONDS (default 30 days)"
    )
    window: ShareWindow | None = Field(None, description="only this part of the recording (default: all of it)")
    may_download: StrictBool = Field(False, description="the MP4, MPEG-TS and evidence bundle may be downloaded")
    note: str | None = Field(None, max_length=500, description="e.g. who the link is for")


class ShareInfo(BaseModel):
    """What a share's holder sees of it."""

    id: str
    expires_at: Iso
    window: ShareWindow | None
    may_download: bool
    note: str | None


class Share(ShareInfo):
    """What an operator sees of it (never the token)."""

    session_id: str
    created_by: str = Field(..., description="key:<id> of the API key that made it")
    created_at: Iso
    status: ShareStatus


class NewShare(Share):
    token: str = Field(..., description="the share credential: shown this once, stored only as a hash")
    url: str = Field(..., description="the viewer's address for it: /viewer/#share=<token>")


class ShareList(BaseModel):
    items: list[Share]


class SharedSession(BaseModel):
    """What a share shows of its session: no source, no labels."""

    id: str
    name: str
    state: State
    created_at: Iso
    started_at: Iso | None
    stopped_at: Iso | None
    sealed_at: Iso | None
    chunk_count: int
    verification: VerificationSummary | None


class ShareChunks(BaseModel):
    first_seq: int
    last_seq: int


class ShareView(BaseModel):
    share: ShareInfo
    session: SharedSession
    chunks: ShareChunks | None = Field(..., description="the window's chunks; null: none yet")


class ShareLinks(BaseModel):
    expires_at: int = Field(..., description="unix time: 15 minutes, or the share's expiry if sooner")
    token: str
    hls: str
    mp4: str | None
    ts: str | None
    evidence: str | None


# --- remote-desktop credentials (issue 18) ----------------------------------------------------
class CredentialIn(Strict):
    """A remote desktop's login, stored sealed under the KEK by the storage service. The password
    is write-only: no answer, log line or error ever carries it."""

    kind: CredentialKind = Field(..., description="the session source kind it serves: vnc or rdp")
    username: str | None = Field(None, min_length=1, max_length=256, description="not secret (RDP; most VNC: none)")
    domain: str | None = Field(None, min_length=1, max_length=256, description="not secret (RDP)")
    password: SecretStr = Field(..., min_length=1, max_length=1024, description="write-only")

    def wire(self) -> dict:
        """The body as the gateway forwards it to storage: the one place the password is revealed."""
        body = self.model_dump(mode="json", exclude_none=True, include=set(CredentialIn.model_fields))
        return {**body, "password": self.password.get_secret_value()}


class NewCredential(CredentialIn):
    name: str = Field(..., pattern=CREDENTIAL_NAME, description="how session sources name it")


class CredentialInfo(BaseModel):
    """A stored credential's metadata: never its password."""

    name: str
    kind: CredentialKind
    username: str | None
    domain: str | None
    kek_id: str = Field(..., description="the key-encryption key its key is wrapped under")
    created_at: Iso
    updated_at: Iso
    updated_by: str | None = Field(None, description="key:<id> of the API key that last wrote it")


class CredentialList(BaseModel):
    items: list[CredentialInfo]


class OpenCredential(Strict):
    session_id: str = Field(..., max_length=100, description="the session the recorder opens it for")


class CredentialSecret(BaseModel):
    """What the recorder receives for one session (POST /credentials/{name}/open at storage): the
    only answer that carries a password. Its repr hides the password; JSON shows it."""

    kind: CredentialKind
    username: str | None
    domain: str | None
    password: SecretStr

    @field_serializer("password", when_used="json")
    def _reveal(self, v: SecretStr) -> str:
        return v.get_secret_value()


# --- insight (issue 15): what happened inside a recording -------------------------------------
class TextWord(BaseModel):
    text: str
    box: list[int] = Field(..., description="x, y, width, height in video pixels")
    conf: float


class TextLine(BaseModel):
    t_ms: int = Field(..., description="when the line appeared, ms from the recording's first frame")
    seq: int = Field(..., description="the chunk it appeared in")
    text: str
    box: list[int] = Field(..., description="x, y, width, height in video pixels")
    conf: float = Field(..., description="recognition confidence, 0-1")
    words: list[TextWord]


class IndexText(Strict):
    """Chunks whose text records a processing run just (re)wrote (issue 17: with a bucket, the storage
    service indexes them from the bucket, whichever host derived them)."""

    seqs: list[Annotated[StrictInt, Field(ge=0, lt=2**32)]] = Field(..., max_length=100_000)


class TextIndexed(BaseModel):
    indexed: int = Field(..., description="chunks (re)indexed by this call: the given ones and any not indexed yet")
    chunks_indexed: int = Field(..., description="the session's chunks in the search index now")


class TextPage(BaseModel):
    items: list[TextLine]
    chunks_derived: int = Field(..., description="chunks whose text is derived (the rest follow while it records)")


class Activity(BaseModel):
    seconds: list[float] = Field(..., description="per second of recording: the share of the screen that changed, 0-1")
    idle: list[list[int]] = Field(..., description="[start_ms, end_ms) spans where nothing changed for idle_seconds")
    scenes: list[int] = Field(..., description="ms where most of the screen changed at once")
    active_seconds: int
    idle_seconds: int


class SearchQuery(Strict):
    """What the gateway asks the storage service (which holds the keys)."""

    q: str = Field(..., min_length=1, max_length=500)
    sessions: list[uuid.UUID] | None = Field(
        None, max_length=1_000_000, description="search only these, in this order; None: every indexed one"
    )
    limit: StrictInt = Field(50, ge=1, le=200)

    @field_validator("q")
    @classmethod
    def _encodable(cls, v: str) -> str:
        try:
            v.encode()
        except UnicodeEncodeError:
            raise ValueError("q is not valid Unicode text (a lone surrogate)") from None
        return v

    @field_serializer("sessions")
    def _ids(self, v: list[uuid.UUID] | None) -> list[str] | None:
        return None if v is None else [str(x) for x in v]


class SearchHit(BaseModel):
    session_id: str
    t_ms: int
    seq: int
    text: str = Field(..., description="the line that matched (the snippet)")
    box: list[int]
    session_name: str | None = None
    thumbnail: str | None = Field(None, description="the gateway URL of the thumbnail nearest t_ms")
    play: str | None = Field(None, description="the viewer at that second")


class SearchResult(BaseModel):
    items: list[SearchHit]
    sessions_searched: int


class MarkerIn(Strict):
    t_ms: StrictInt = Field(..., ge=0, le=10**10, description="ms from the recording's first frame")
    note: str = Field("", max_length=500)


class Marker(BaseModel):
    t_ms: int
    note: str
    actor: str
    at: str
    idx: int = Field(..., description="its entry in the session's audit chain")


class MarkerList(BaseModel):
    items: list[Marker]
