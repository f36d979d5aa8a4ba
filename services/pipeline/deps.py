"""The pipeline's request dependencies: its database and the session a path names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.db import Database


def get_db(request: Request) -> Database:
    return request.app.state.db


Db = Annotated[Database, Depends(get_db)]
