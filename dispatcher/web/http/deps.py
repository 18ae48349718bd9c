"""Request dependencies: one database session per request, committed before the response.

A request's session is narrowed to its caller's scope (``dispatcher.units.scope``): the
caller's dependency (``callers.current_caller``) works it out, and every statement the session
runs is filtered by it. A request without a caller (the unsubscribe pages, signing in) is not
narrowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import get_database
from dispatcher.kit.cursors import CURSOR
from dispatcher.units import scope as scopes


def request_scope(request: Request) -> scopes.Scope | None:
    """The scope the request's caller dependency worked out (None: no caller)."""
    return getattr(request.state, "scope", None)


def get_session(request: Request) -> Iterator[Session]:
    """Commit when the endpoint returns (jobs it buffered go out after that), else roll back."""
    with get_database().transaction() as session:
        scopes.attach(session, lambda: request_scope(request))
        yield session


DbSession = Annotated[Session, Depends(get_session, scope="function")]


def get_reading_session(request: Request) -> Iterator[Session]:
    """A read-only session: on SQLite it reads beside the workers instead of queueing for the
    write lock (pages that only read, and the dashboard's polls)."""
    with get_database().reading() as session:
        scopes.attach(session, lambda: request_scope(request))
        yield session


ReadSession = Annotated[Session, Depends(get_reading_session, scope="function")]

# Ids are 64-bit in the database: anything larger is a 422, never a driver overflow.
MAX_ID = 2**63 - 1
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
QueryId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Cursor = Annotated[
    str | None, Query(pattern=CURSOR, description="The next_cursor of the previous page.")
]
AppSettings = Annotated[Settings, Depends(get_settings)]
