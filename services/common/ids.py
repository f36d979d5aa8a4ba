"""Path parameters every service checks at its edge, before they reach a URL, a file path or SQL:
a session id is a UUID (answered in canonical form) and a chunk seq a bounded integer. A bad id is a
404 with a reason (no session can have it), a seq out of range a 422, both in our error body."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Header, Path
from pydantic import StringConstraints

from lucid_assets.models import LABEL_KEY

from .errors import ApiError

MAX_SEQ = 10_000_000  # far beyond any real session (10 s chunks: over three years)
MAX_OFFSET = 2**31 - 1  # list offsets and cursors: fits every database's integer
MAX_CHUNK_DURATION_MS = 24 * 3600 * 1000  # a pushed chunk's declared duration: at most a day


def session_id(
    session_id: Annotated[
        str,
        Path(
            description="a session id: a UUID",
            json_schema_extra={"format": "uuid"},
            examples=["6e2149fb-6ef9-47a9-855b-d1cbebe62829"],
        ),
    ],
) -> str:
    """The path's session id in canonical form; 404 for anything that is not a UUID."""
    try:
        if len(session_id) != 36:  # only the canonical 8-4-4-4-12 form, not braces/urn/hex-only
            raise ValueError(session_id)
        return str(uuid.UUID(session_id))
    except ValueError:
        shown = session_id[:40].encode("unicode_escape").decode("ascii")
        raise ApiError(404, "not_found", f"no session has the id {shown!r}: a session id is a UUID") from None


SessionId = Annotated[str, Depends(session_id)]
Seq = Annotated[int, Path(ge=0, le=MAX_SEQ, description="the chunk's sequence number, dense from 0")]

# a label filter: `key` (has the label) or `key=value`; the key as labels allow it, checked before it
# becomes a JSON path in SQL
LabelFilter = Annotated[str, StringConstraints(pattern=LABEL_KEY.pattern[:-1] + r"(=[\s\S]{0,256})?$")]

# a pushed chunk's headers (gateway and recorder alike), and its body as the OpenAPI document shows it
ChunkSha256 = Annotated[
    str, Header(alias="x-content-sha256", description="SHA-256 of the body, hex", pattern="^[0-9a-fA-F]{64}$")
]
ChunkDurationMs = Annotated[
    int, Header(alias="x-chunk-duration-ms", description="the chunk's duration", ge=0, le=MAX_CHUNK_DURATION_MS)
]
CHUNK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
