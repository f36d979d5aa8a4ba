"""Verification, crypto-shredding and the signing key."""

from __future__ import annotations

import base64
import shutil
from datetime import UTC, datetime

from fastapi import APIRouter

from lucid_assets.core import keys
from lucid_assets.core.states import State, VerifyStatus
from lucid_assets.models import ShredResult, SigningKey, VerificationSummary, VerifyReport
from lucid_assets.trust import API, DAGSTER
from lucid_assets.verification import verify_stored
from services.common.errors import ERRORS, ApiError
from services.common.guard import allow

from ..deps import Ctx, Sid

router = APIRouter(tags=["integrity"], responses=ERRORS, dependencies=[allow(API, DAGSTER)])


@router.post("/sessions/{session_id}/verify", response_model=VerifyReport)
def verify(sid: Sid, ctx: Ctx):
    """The full report, recorded by this service itself as the session's last verification (the
    pipeline takes no one else's word for it). A session not sealed (or deleted) yet is `pending`:
    reported, never recorded, so no result of an unfinished session outlives its seal."""
    session = ctx.pipeline.session(sid)
    events = [e.model_dump() for e in ctx.pipeline.events(sid)]
    report = verify_stored(
        ctx.store,
        ctx.keyring,
        ctx.public_key,
        sid,
        audit_rows=events,
        registry_manifest_sha256=session.manifest_sha256,
        state=session.state,
    )
    if report.status != VerifyStatus.PENDING:
        ctx.pipeline.record_verification(
            sid,
            VerificationSummary(
                status=report.status,
                problems=len(report.problems),
                at=datetime.now(UTC).isoformat(timespec="seconds"),
            ),
        )
    return report.as_dict()


@router.delete("/sessions/{session_id}/data", response_model=ShredResult)
def shred(sid: Sid, ctx: Ctx):
    """Crypto-shred a session the pipeline has marked deleted: destroy its data key, remove its
    envelopes and staging files, drop its chunk rows and stamp its catalog row. Idempotent."""
    state = ctx.pipeline.session(sid).state
    if state != State.DELETED:
        raise ApiError(409, "not_deleted", f"session {sid} is {state}; delete it through the API first", state=state)
    result = ctx.store.shred(sid)  # the data key, envelopes, export plans and insight records
    ctx.search_keys.forget(sid)
    ctx.text_index.drop_session(sid)  # unlinkable to any word since the key went; now gone as well
    staging = ctx.recordings / sid
    result["staging_removed"] = staging.exists()
    shutil.rmtree(staging, ignore_errors=True)
    result.update(ctx.lake.mark_deleted(sid, datetime.now(UTC)))
    return result


@router.get("/keys/signing", response_model=SigningKey)
def signing_key(ctx: Ctx):
    raw = keys.public_key_bytes(ctx.public_key)
    return {
        "alg": "Ed25519",
        "key_id": keys.public_key_id(ctx.public_key),
        "public_key": base64.b64encode(raw).decode(),
    }
