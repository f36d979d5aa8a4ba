"""The pipeline's request dependencies: its database, the authenticated caller and the actor."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request

from lucid_assets.clients import ACTOR_HEADER
from lucid_assets.core.states import Event, Note
from lucid_assets.trust import API, DAGSTER, RECORDER, STORAGE, role_of
from services.common.db import Database
from services.common.errors import ApiError
from services.common.guard import allow, caller

_KEY_ACTOR = re.compile(r"(key|share):[A-Za-z0-9_-]{1,64}")
ANY = allow(API, RECORDER, STORAGE, DAGSTER)


def get_db(request: Request) -> Database:
    return request.app.state.db


Db = Annotated[Database, Depends(get_db)]


def actor_of(request: Request) -> str:
    """Who the audit log names: the authenticated caller service, or, for the gateway alone, the
    API key or share link it authenticated (`X-Lucid-Actor: key:<id>` or `share:<id>`). Nothing in
    a request body is an actor."""
    who = caller(request)
    if who != API:
        return who
    claimed = request.headers.get(ACTOR_HEADER)
    if claimed is None or not _KEY_ACTOR.fullmatch(claimed):
        raise ApiError(
            400,
            "no_actor",
            f"the gateway must name the API key or share it acts for in {ACTOR_HEADER}: key:<id> or share:<id>",
        )
    return claimed


Actor = Annotated[str, Depends(actor_of)]
Caller = Annotated[str, Depends(caller)]

# which service may drive which transition: the gateway deletes on an operator's request (start,
# pause, resume and stop go through the recorder), the recorder drives a recording's life, Dagster
# seals, fails, retries and applies retention
EVENTS_BY_CALLER: dict[str, frozenset[Event]] = {
    API: frozenset({Event.DELETE}),
    RECORDER: frozenset({Event.START, Event.PAUSE, Event.RESUME, Event.STOP, Event.FINALIZE, Event.FAIL}),
    DAGSTER: frozenset({Event.SEAL, Event.FAIL, Event.RETRY, Event.DELETE}),
}


# which service may write which audit note: the gateway the share and evidence notes (it
# authenticated the key or share that acted), Dagster a forced reprocess, the recorder a remote
# desktop's lost and restored connection
NOTES_BY_CALLER: dict[str, frozenset[Note]] = {
    API: frozenset({Note.SHARE_CREATED, Note.SHARE_REVOKED, Note.SHARE_USED, Note.EVIDENCE, Note.MARKER}),
    DAGSTER: frozenset({Note.REPROCESS}),
    RECORDER: frozenset({Note.SOURCE_LOST, Note.SOURCE_BACK}),
}


def may_note(who: str, note: Note) -> None:
    if note not in NOTES_BY_CALLER.get(role_of(who), frozenset()):
        raise ApiError(403, "forbidden", f"the {who} service may not write a {note.value} audit note")


def may(who: str, event: Event) -> None:
    if event not in EVENTS_BY_CALLER.get(role_of(who), frozenset()):
        raise ApiError(403, "forbidden", f"the {who} service may not {event.value} a session")
