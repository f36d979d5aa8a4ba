"""The search log (issue 15): one row per search across recordings, who asked what. Read by admins
through /v1/search/log. What was found is not kept, not even a count: that the words were on someone's
screen is itself screen content."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class SearchLogRow(SQLModel, table=True):
    __tablename__ = "search_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    actor: str = Field(index=True)
    role: str
    query: str
    filters: str
    sessions_searched: int
