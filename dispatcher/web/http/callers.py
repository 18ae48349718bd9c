"""Request dependencies that say who is calling and refuse the wrong role.

A key comes as ``Authorization: Bearer <key>``, or, for the dashboard, in the
``dispatcher_key`` cookie; a person signed in to the dashboard with a password (and a TOTP
code) has a ``dispatcher_session`` cookie instead (dispatcher.auth.people). Missing or
unusable: 401. Usable but the wrong role: 403.

A browser sends the cookie with every request to this site, whoever wrote the page that makes
it. A change (POST, PUT, PATCH, DELETE) carried by the cookie alone is therefore accepted only
when its Origin (or, lacking one, its Referer) names the host it was sent to: 403 otherwise.
Browsers set Origin on every cross-site and every form POST, and a page cannot forge it.
Requests with a bearer key are not concerned (another site cannot make a browser send one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from dispatcher.auth.people import session_caller
from dispatcher.auth.service import STAFF, Caller, Role, Unauthenticated, authenticate
from dispatcher.core.config import get_settings
from dispatcher.core.db import get_database
from dispatcher.engine import backends
from dispatcher.engine.ratelimit import MemoryBucket, take_now
from dispatcher.kit.errors import answers
from dispatcher.units import scope as scopes

COOKIE = "dispatcher_key"
# A person's dashboard session (signed; not a key): read from the request, not documented in
# the OpenAPI document, which is about keys.
SESSION_COOKIE = "dispatcher_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer bhxh_…`")
_cookie = APIKeyCookie(name=COOKIE, auto_error=False, description="The dashboard's session")


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, detail=reason, headers={"WWW-Authenticate": "Bearer"})


class CrossSiteRequest(HTTPException):
    """A change carried by the dashboard's cookie that does not come from this site."""

    def __init__(self) -> None:
        super().__init__(
            403,
            detail="a change made with the dashboard's cookie must come from this site's own "
            "pages: the Origin (or Referer) header must name this host. API clients send "
            "Authorization: Bearer <key> instead",
        )


def same_host(request: Request) -> bool:
    """Whether the request's Origin (or, lacking it, its Referer) names the host it came to."""
    host = request.headers.get("host", "").lower()
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    if not host or not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host


def current_caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> Caller:
    key = bearer.credentials if bearer is not None else cookie
    signed_in = None if key else request.cookies.get(SESSION_COOKIE)
    if not key and not signed_in:
        raise _unauthorized("an API key is required: Authorization: Bearer <key>")
    if bearer is None and request.method not in SAFE_METHODS and not same_host(request):
        raise CrossSiteRequest()
    try:
        # A short transaction of its own: the request's session may not exist (streaming
        # endpoints manage their own) and must not be held open around a long body.
        with get_database().transaction() as session:
            if key:
                caller = authenticate(session, key)
            else:
                assert signed_in is not None
                caller = session_caller(session, get_settings(), signed_in)
            # What the caller sees, once per request: every query of the request's session
            # is narrowed to it (dispatcher.units.scope; deps.py attaches it).
            request.state.scope = scopes.for_unit(session, caller.unit_id)
    except Unauthenticated as exc:
        raise _unauthorized(str(exc)) from None
    request.state.caller = caller
    return caller


def require(*roles: Role) -> Callable[[Caller], Caller]:
    """A dependency letting through the given roles, and admins."""
    allowed = {Role.admin, *roles}
    names = " or ".join(r.value for r in roles) if roles else Role.admin.value

    def check(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if not caller.roles & allowed:
            held = ", ".join(sorted(r.value for r in caller.roles))
            raise HTTPException(
                403, detail=f"this needs the {names} role; {caller.label} is {held}"
            )
        return caller

    return check


Editor = Annotated[Caller, Depends(require(Role.editor))]
Approver = Annotated[Caller, Depends(require(Role.approver))]
Operator = Annotated[Caller, Depends(require(Role.operator))]
Admin = Annotated[Caller, Depends(require())]
Staff = Annotated[Caller, Depends(require(*STAFF))]
EditorOrOperator = Annotated[Caller, Depends(require(Role.editor, Role.operator))]
Sender = Annotated[Caller, Depends(require(Role.sender))]
SenderOrOperator = Annotated[Caller, Depends(require(Role.sender, Role.operator))]

_memory_bucket = MemoryBucket()


@answers(429, "The sender key is over its rate; Retry-After says when to try again.")
def sender_within_rate(caller: Sender) -> Caller:
    """A sender key may send ``messages_per_second_per_key`` (a burst of ``..._burst``)."""
    queue = backends.current()
    key = f"api-key:{caller.key_id}"
    rate = queue.settings.messages_per_second_per_key
    burst = queue.settings.messages_burst_per_key
    if queue.redis is not None:
        wait = take_now(queue.redis, queue.settings.redis_namespace, key, rate, burst)
    else:
        wait = _memory_bucket.take_now(key, rate, burst)
    if wait > 0:
        raise HTTPException(
            429,
            detail=f"{caller.label} is over its rate of {rate:g} messages/s; retry shortly",
            headers={"Retry-After": str(max(1, round(wait + 0.5)))},
        )
    return caller


RateLimitedSender = Annotated[Caller, Depends(sender_within_rate)]
