"""Typed HTTP clients of the internal services, shared by Dagster's resources, the gateway and the
recorder: one method per endpoint, bodies and answers as the wire models of `models`. No FastAPI,
no Dagster: an error answer is a `ServiceError` carrying the peer's status and JSON body unchanged
(the services pass it on as it is; Dagster fails the step with it)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from .core.states import Event
from .models import (
    Activity,
    AuditEntry,
    AuditNote,
    AuditReceipt,
    CheckpointList,
    CreateSession,
    CredentialIn,
    CredentialInfo,
    CredentialList,
    CredentialSecret,
    EventList,
    IndexText,
    Lease,
    LeaseRenewal,
    ManifestSummary,
    Marked,
    OpenCredential,
    PendingPage,
    Proof,
    RecorderBeat,
    RecorderInfo,
    RecorderList,
    RegisterChunk,
    RegisteredChunk,
    RegisteredChunkList,
    Registration,
    SearchQuery,
    SearchResult,
    Session,
    SessionPage,
    SessionSpans,
    ShredResult,
    Staged,
    StoredMark,
    StoredMarks,
    TextIndexed,
    TextPage,
    Transition,
    VerificationSummary,
    VerifyReport,
    WorkClaim,
    WorkItem,
    WorkPage,
)

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class ServiceError(Exception):
    """A peer answered with an error (status, its JSON body), or could not be reached (503)."""

    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"{body.get('error')}: {body.get('detail')} ({status})")

    @property
    def state(self) -> str | None:
        return self.body.get("state")


ACTOR_HEADER = "X-Lucid-Actor"


def _on_behalf(actor: str | None) -> dict[str, str]:
    return {ACTOR_HEADER: actor} if actor else {}


class ServiceClient:
    """JSON over one shared connection pool; thread-safe."""

    def __init__(self, url: str, *, token: str, timeout: httpx.Timeout = TIMEOUT):
        """`token`: this component's service token (lucid_assets.trust.own_token)."""
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, **kwargs) -> dict:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(
                503,
                {
                    "error": "service_unavailable",
                    "detail": f"{self.url.split('/')[2]} is unreachable: {type(exc).__name__}",
                },
            ) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                if not isinstance(body, dict) or "error" not in body:
                    raise ValueError
            except ValueError:
                body = {"error": "upstream_error", "detail": r.text[:500]}
            raise ServiceError(r.status_code, body)
        return r.json() if r.content else {}

    def send(self, method: str, path: str, body: BaseModel | None = None, **kwargs) -> dict:
        if body is not None:
            kwargs["json"] = body.model_dump(mode="json", exclude_none=True)
        return self.request(method, path, **kwargs)

    def close(self) -> None:
        self.http.close()


class PipelineClient(ServiceClient):
    """lucid-session-pipeline: sessions, chunks, transitions, audit log, work queue."""

    def create_session(self, body: CreateSession, *, actor: str) -> Session:
        """`actor`: the gateway's authenticated API key (the pipeline takes it only from the gateway)."""
        return Session.model_validate(self.send("POST", "/sessions", body, headers=_on_behalf(actor)))

    def sessions(
        self,
        *,
        state: str | None = None,
        labels: Iterable[str] = (),
        limit: int = 50,
        offset: int = 0,
        changed_since: datetime | None = None,
    ) -> SessionPage:
        params = {"limit": limit, "offset": offset, "label": list(labels)}
        if state:
            params["state"] = str(state)
        if changed_since is not None:
            params["changed_since"] = changed_since.isoformat()
        return SessionPage.model_validate(self.request("GET", "/sessions", params=params))

    def spans(self, *, labels: Iterable[str] = ()) -> SessionSpans:
        """Every matching session's id, name and recording span, newest first (no paging)."""
        return SessionSpans.model_validate(self.request("GET", "/sessions/spans", params={"label": list(labels)}))

    def all_sessions(self, state: str | None = None, *, changed_since: datetime | None = None) -> list[Session]:
        """Every session in `state` (and whose state changed since `changed_since`), page by page."""
        out: list[Session] = []
        while True:
            page = self.sessions(state=state, limit=500, offset=len(out), changed_since=changed_since)
            out += page.items
            if len(out) >= page.total or not page.items:
                return out

    def session(self, session_id: str) -> Session:
        return Session.model_validate(self.request("GET", f"/sessions/{session_id}"))

    def transition(
        self,
        session_id: str,
        event: Event,
        *,
        actor: str | None = None,
        reason: str | None = None,
        expected_chunks: int | None = None,
        encoder: str | None = None,
    ) -> Session:
        """The audit log names the authenticated caller; the gateway adds the API key it acts for
        (`actor`), which the pipeline accepts from the gateway alone."""
        body = Transition(event=event, reason=reason, expected_chunks=expected_chunks, encoder=encoder)
        return Session.model_validate(
            self.send("POST", f"/sessions/{session_id}/transitions", body, headers=_on_behalf(actor))
        )

    def register_chunk(self, session_id: str, chunk: RegisterChunk) -> Registration:
        return Registration.model_validate(self.send("POST", f"/sessions/{session_id}/chunks", chunk))

    def chunks(self, session_id: str) -> list[RegisteredChunk]:
        return RegisteredChunkList.model_validate(self.request("GET", f"/sessions/{session_id}/chunks")).items

    def mark_stored(self, marks: list[StoredMark]) -> int:
        """A batch's stored chunks, any sessions, in one call and one transaction."""
        return Marked.model_validate(self.send("POST", "/work/stored", StoredMarks(items=marks))).marked

    def pending(self, *, limit: int = 200) -> PendingPage:
        """Sessions with work for a processing batch, sealing first, then the longest waiting."""
        return PendingPage.model_validate(self.request("GET", "/work/pending", params={"limit": limit}))

    def claim(self, holder: str, *, limit: int = 200, lease_seconds: int = 120) -> PendingPage:
        """Pending sessions no other run holds, now held by `holder` (issue 17)."""
        body = WorkClaim(holder=holder, limit=limit, lease_seconds=lease_seconds)
        return PendingPage.model_validate(self.send("POST", "/work/claims", body))

    def renew_claims(self, holder: str, *, lease_seconds: int = 120) -> Lease:
        body = LeaseRenewal(lease_seconds=lease_seconds)
        return Lease.model_validate(self.send("PUT", f"/work/claims/{holder}", body))

    def release_claims(self, holder: str) -> Lease:
        return Lease.model_validate(self.request("DELETE", f"/work/claims/{holder}"))

    def record_manifest(self, session_id: str, summary: ManifestSummary) -> Session:
        return Session.model_validate(self.send("PUT", f"/sessions/{session_id}/manifest", summary))

    def record_verification(self, session_id: str, summary: VerificationSummary) -> VerificationSummary:
        return VerificationSummary.model_validate(self.send("PUT", f"/sessions/{session_id}/verification", summary))

    def audit_note(self, session_id: str, note: AuditNote, *, actor: str | None = None) -> AuditReceipt:
        """`actor`: from the gateway, the key or share it authenticated (`key:<id>`, `share:<id>`)."""
        return AuditReceipt.model_validate(
            self.send("POST", f"/sessions/{session_id}/audit", note, headers=_on_behalf(actor))
        )

    def events(self, session_id: str) -> list[AuditEntry]:
        return EventList.model_validate(self.request("GET", f"/sessions/{session_id}/events")).items

    def beat(self, beat: RecorderBeat) -> RecorderInfo:
        """A recorder's heartbeat (who it is, the pipeline takes from its token)."""
        return RecorderInfo.model_validate(self.send("PUT", "/recorders/self", beat))

    def recorders(self) -> list[RecorderInfo]:
        return RecorderList.model_validate(self.request("GET", "/recorders")).items

    def work(self, *, after: int, limit: int = 500) -> list[WorkItem]:
        return WorkPage.model_validate(self.request("GET", "/work", params={"after": after, "limit": limit})).items


class StorageClient(ServiceClient):
    """lucid-session-storage: what the gateway and Dagster ask of it as JSON (byte streams go
    through the gateway's async proxy instead)."""

    def proof(self, session_id: str, seq: int) -> Proof:
        return Proof.model_validate(self.request("GET", f"/sessions/{session_id}/chunks/{seq}/proof"))

    def checkpoints(self, session_id: str) -> CheckpointList:
        return CheckpointList.model_validate(self.request("GET", f"/sessions/{session_id}/checkpoints"))

    def verify(self, session_id: str) -> VerifyReport:
        return VerifyReport.model_validate(self.request("POST", f"/sessions/{session_id}/verify"))

    def text(self, session_id: str, *, from_ms: int = 0, to_ms: int | None = None) -> TextPage:
        params = {"from_ms": from_ms} | ({"to_ms": to_ms} if to_ms is not None else {})
        return TextPage.model_validate(self.request("GET", f"/sessions/{session_id}/text", params=params))

    def activity(self, session_id: str, *, idle_seconds: int) -> Activity:
        params = {"idle_seconds": idle_seconds}
        return Activity.model_validate(self.request("GET", f"/sessions/{session_id}/activity", params=params))

    def search(self, query: SearchQuery) -> SearchResult:
        return SearchResult.model_validate(self.send("POST", "/search", query))

    def stage(self, session_id: str, seq: int, path: Path, sha256: str) -> Staged:
        """Upload a finished segment file (the recorder, issue 17): streamed, checked against sha256."""
        with open(path, "rb") as f:
            return Staged.model_validate(
                self.request(
                    "PUT",
                    f"/sessions/{session_id}/staging/{seq}",
                    content=f,
                    headers={"X-Content-SHA256": sha256, "Content-Length": str(path.stat().st_size)},
                    timeout=httpx.Timeout(300.0, connect=5.0),
                )
            )

    def index_text(self, session_id: str, seqs: list[int]) -> TextIndexed:
        """Have storage index these chunks' text records (and any it has not indexed yet) from the bucket."""
        return TextIndexed.model_validate(self.send("POST", f"/sessions/{session_id}/text-index", IndexText(seqs=seqs)))

    def shred(self, session_id: str) -> ShredResult:
        return ShredResult.model_validate(
            self.request("DELETE", f"/sessions/{session_id}/data", timeout=httpx.Timeout(120.0, connect=5.0))
        )

    # --- remote-desktop credentials (issue 18) --------------------------------------------------
    def credentials(self) -> list[CredentialInfo]:
        return CredentialList.model_validate(self.request("GET", "/credentials")).items

    def credential(self, name: str) -> CredentialInfo:
        return CredentialInfo.model_validate(self.request("GET", f"/credentials/{quote(name, safe='')}"))

    def put_credential(
        self, name: str, body: CredentialIn, *, actor: str, exists: bool | None = None
    ) -> CredentialInfo:
        """Create or replace; exists=False creates only (409 if there), True replaces only (404 if not)."""
        headers = _on_behalf(actor)
        if exists is not None:
            headers["If-Match" if exists else "If-None-Match"] = "*"
        path = f"/credentials/{quote(name, safe='')}"
        return CredentialInfo.model_validate(self.request("PUT", path, json=body.wire(), headers=headers))

    def delete_credential(self, name: str, *, actor: str) -> CredentialInfo:
        path = f"/credentials/{quote(name, safe='')}"
        return CredentialInfo.model_validate(self.request("DELETE", path, headers=_on_behalf(actor)))

    def open_credential(self, name: str, session_id: str) -> CredentialSecret:
        """The recorder (its own token: trust.own_token(settings, RECORDER)) opens the credential its
        session's source names; storage checks the session names it and has not ended. The answer's
        repr hides the password (`.password.get_secret_value()` reveals it)."""
        path = f"/credentials/{quote(name, safe='')}/open"
        return CredentialSecret.model_validate(self.send("POST", path, OpenCredential(session_id=session_id)))
