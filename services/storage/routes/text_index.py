"""The search index's one writer when the chunk store is a bucket (issue 17): processing runs on any
host write a chunk's sealed text record into the bucket and tell this service which chunks; it reads
those records with the keys it holds and indexes them. So one index answers for every host's work,
and the words never cross the network: only chunk numbers do. (With a local store the runs share
this host's index file and write it themselves.)"""

from __future__ import annotations

from fastapi import APIRouter

from lucid_assets.core.states import Insight
from lucid_assets.insight import index
from lucid_assets.insight.records import Records, unpack
from lucid_assets.insight.session import VERSIONS
from lucid_assets.models import IndexText, TextIndexed
from lucid_assets.trust import DAGSTER
from services.common.errors import ERRORS
from services.common.guard import allow
from services.common.ids import SessionId

from ..deps import Ctx

router = APIRouter(tags=["insight"], responses=ERRORS, dependencies=[allow(DAGSTER)])


@router.post("/sessions/{session_id}/text-index", response_model=TextIndexed)
def index_text(session_id: SessionId, body: IndexText, ctx: Ctx):
    """Index the current text records of `seqs`, and of every chunk that has one but is not indexed
    yet (so a call that failed earlier is made good by the next). 410 once shredded."""
    dek = ctx.dek(session_id)
    recs, version = Records(ctx.store, session_id), VERSIONS[Insight.TEXT]
    current = recs.current(Insight.TEXT, version)
    todo = (set(body.seqs) & current) | (current - ctx.text_index.indexed_chunks(session_id))
    found = {}
    for seq in sorted(todo):
        if (raw := recs.read(Insight.TEXT, seq, version, dek=dek)) is not None:
            found[seq] = index.words(unpack(raw)[0]["lines"])
    if found:
        ctx.text_index.put_chunks(session_id, index.search_key(dek, session_id), found)
    return {"indexed": len(found), "chunks_indexed": len(ctx.text_index.indexed_chunks(session_id))}
