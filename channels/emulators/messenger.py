"""Facebook Messenger Send API and Page feed emulator (Graph API).

Speaks:

- ``POST /v{N}/{PAGE_ID}/messages`` (also unversioned, and ``me`` for the page) with the page
  access token as ``?access_token=`` (or in the body, or ``Authorization: Bearer``), body JSON or
  form (form fields ``recipient``/``message`` JSON-encoded):
  ``{"recipient":{"id":PSID},"messaging_type":"RESPONSE|UPDATE|MESSAGE_TAG",
  "message":{"text":".."},"tag":".."}`` → ``{"recipient_id":"..","message_id":"m_.."}``.
- ``POST /v{N}/{PAGE_ID}/feed`` with ``message`` → ``{"id":"{page}_{post}"}``.
- Errors: ``{"error":{"message","type","code","error_subcode","fbtrace_id"}}`` (subcode only when
  there is one), HTTP 400/403/500/503 depending on the error; classify on code/subcode.

Enforced: the token (190; expired 190/463, also after n more calls with
``expire_token_after(n)``; revoked 190/460; missing 104), the page the token
belongs to (100/33), ``messaging_type`` and tags, text ≤ 2000 characters (100), the 24 h window
since the user's last message (10/2018278; ``MESSAGE_TAG`` with ``CONFIRMED_EVENT_UPDATE``,
``POST_PURCHASE_UPDATE``, ``ACCOUNT_UPDATE`` is allowed outside it, ``HUMAN_AGENT`` for 7 days),
unknown PSIDs (100/2018001), unreachable people (551/1545041 & co.), a permission the app or
Page lacks (:meth:`MessengerEmulator.restrict`: 200/2018028, 10/2018065, 230 & co., for every
recipient), and the call rates: per page
(613, default 300/s) and per app (4, off by default: the real one depends on the app's users).
Every row of the contract's table can be scripted per PSID: ``script(psid, error(1200))``.
The error objects are held to the providers' material in
``tests/channels/contracts/messenger.json``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .base import (
    LOCALHOST,
    BodyError,
    Clock,
    Delivery,
    Emulator,
    Monotonic,
    Reply,
    maybe_json,
    parse_body,
)

MAX_TEXT = 2000
MAX_POST = 63206
WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
MESSAGING_TYPES = ("RESPONSE", "UPDATE", "MESSAGE_TAG")
TAGS = ("CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE", "HUMAN_AGENT")

# (code, subcode) → (HTTP status, error type, message)
ERRORS: dict[tuple[int, int | None], tuple[int, str, str]] = {
    (10, 2018278): (
        400,
        "OAuthException",
        "(#10) This message is sent outside of allowed window. Learn more about the new policy "
        "here: https://developers.facebook.com/docs/messenger-platform/policy-overview",
    ),
    (551, 1545041): (400, "OAuthException", "This person isn't available right now."),
    (200, 1545041): (
        403,
        "OAuthException",
        "Message Not Sent: This person isn't receiving messages from you right now.",
    ),
    (10, 2018108): (
        400,
        "OAuthException",
        "This Person Cannot Receive Messages: This person isn't receiving messages from you "
        "right now.",
    ),
    # Account-wide permission faults: the app or the Page, not the recipient.
    (10, None): (
        403,
        "OAuthException",
        "(#10) Application does not have permission for this action",
    ),
    (10, 2018065): (
        403,
        "OAuthException",
        "This message is sent outside of allowed window. You need page_messaging_subscriptions "
        "permission to be able to do it.",
    ),
    (200, 2018028): (
        403,
        "OAuthException",
        "Cannot message users who are not admins, developers or testers of the app until "
        "pages_messaging permission is reviewed and the app is live.",
    ),
    (200, 2018027): (
        403,
        "OAuthException",
        "Cannot message users who are not admins, developers or testers of the app until "
        "pages_messaging_phone_number permission is reviewed and the app is live.",
    ),
    (200, 2018021): (
        403,
        "OAuthException",
        "Requires phone matching access fee to be paid by this page unless the recipient user "
        "is an admin, developer, or tester of the app.",
    ),
    (230, None): (
        403,
        "OAuthException",
        "Requires pages_messaging permission to manage the object",
    ),
    (190, None): (
        400,
        "OAuthException",
        "Invalid OAuth access token - Cannot parse access token",
    ),
    (190, 463): (
        400,
        "OAuthException",
        "Error validating access token: Session has expired.",
    ),
    (190, 460): (
        400,
        "OAuthException",
        "Error validating access token: The session has been invalidated because the user "
        "changed their password or Facebook has changed the session for security reasons.",
    ),
    (104, None): (
        400,
        "OAuthException",
        "An access token is required to request this resource.",
    ),
    (4, None): (403, "OAuthException", "(#4) Application request limit reached"),
    (17, None): (403, "OAuthException", "(#17) User request limit reached"),
    (32, None): (403, "OAuthException", "(#32) Page request limit reached"),
    (613, None): (400, "OAuthException", "(#613) Calls to this api have exceeded the rate limit."),
    (80001, None): (
        400,
        "OAuthException",
        "(#80001) There have been too many calls to this Page account. Wait a bit and try again.",
    ),
    (1200, None): (
        500,
        "OAuthException",
        "(#1200) Temporary send message failure. Please try again later",
    ),
    (1, None): (500, "OAuthException", "An unknown error has occurred."),
    (2, None): (
        503,
        "OAuthException",
        "An unexpected error has occurred. Please retry your request later.",
    ),
    (368, None): (
        400,
        "OAuthException",
        "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
    ),
    (100, None): (400, "OAuthException", "(#100) Invalid parameter"),
    (100, 2018001): (400, "OAuthException", "(#100) No matching user found"),
    (100, 33): (
        400,
        "GraphMethodException",
        "Unsupported post request. Object with ID '{id}' does not exist, cannot be loaded due "
        "to missing permissions, or does not support this operation. Please read the Graph API "
        "documentation at https://developers.facebook.com/docs/graph-api",
    ),
    (2500, None): (400, "OAuthException", "Unknown path components: {id}"),
}
_TRANSIENT = {1, 2, 4, 17, 32, 613, 1200, 80001}


def fbtrace_id() -> str:
    return secrets.token_urlsafe(8)[:11]


def error(
    code: int,
    subcode: int | None = None,
    message: str | None = None,
    *,
    status: int | None = None,
    error_type: str | None = None,
) -> Reply:
    """A Graph API error. Defaults (status, type, message) come from :data:`ERRORS`."""
    known = ERRORS.get((code, subcode)) or ERRORS.get((code, None))
    default_status, default_type, default_message = known or (400, "OAuthException", "")
    detail: dict[str, Any] = {
        "message": message if message is not None else default_message,
        "type": error_type or default_type,
        "code": code,
    }
    if subcode is not None:
        detail["error_subcode"] = subcode
    if code in _TRANSIENT:
        detail["is_transient"] = True
    detail["fbtrace_id"] = fbtrace_id()
    headers: dict[str, str] = {}
    if code in (190, 104):
        headers["WWW-Authenticate"] = (
            f'OAuth "Facebook Platform" "invalid_token" "{detail["message"]}"'
        )
    return Reply(status or default_status, {"error": detail}, headers=headers)


def outside_window() -> Reply:
    return error(10, 2018278)


def no_matching_user() -> Reply:
    return error(100, 2018001)


def unavailable(code: int = 551, subcode: int = 1545041) -> Reply:
    """The person can't be reached: (551|200, 1545041) or (10, 2018108)."""
    return error(code, subcode)


def rate_limited(code: int = 613) -> Reply:
    return error(code)


def _fresh(reply: Reply) -> Response:
    """Send a reply; each error answer carries its own fbtrace_id, as Graph's do."""
    body = reply.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        trace = fbtrace_id()
        body = {"error": {**body["error"], "fbtrace_id": trace}}
        headers = {**reply.headers, "x-fb-trace-id": trace}
        return Reply(reply.status, body, headers).to_response()
    return reply.to_response()


_VERSION_RE = re.compile(r"^v[0-9]+\.[0-9]+$")


class MessengerEmulator(Emulator):
    """The Graph API for one Facebook Page and its page access token."""

    def __init__(
        self,
        *,
        page_id: str = "104857600000001",
        page_token: str | None = None,
        users: Iterable[str] | None = None,
        default_in_window: bool = True,
        page_rate: float | None = 300.0,
        page_burst: float | None = None,
        app_rate: float | None = None,
        app_burst: float | None = None,
        clock: Clock | None = None,
        monotonic: Monotonic | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        """``users``: the PSIDs that exist (None: any). ``default_in_window``: whether a PSID
        never seen by :meth:`user_messaged` counts as having written within 24 h."""
        super().__init__(clock=clock, monotonic=monotonic, host=host, port=port)
        self.page_id = page_id
        first = page_token or _new_page_token()
        self._tokens: dict[str, tuple[str, int | None]] = {first: ("valid", None)}
        self._current_token = first
        self._users = None if users is None else set(users)
        self._forgotten: set[str] = set()
        self._unreachable: dict[str, tuple[int, int]] = {}
        self._last_inbound: dict[str, datetime] = {}
        self._restriction: tuple[int, int | None] | None = None
        self.default_in_window = default_in_window
        self.limits.set_rule("page", page_rate, page_burst)
        self.limits.set_rule("app", app_rate, app_burst)

    # -- credentials -------------------------------------------------------------------------

    @property
    def page_token(self) -> str:
        with self._lock:
            return self._current_token

    def expire_token(self, token: str | None = None) -> None:
        """The page token's session expired: 190/463 from now on."""
        with self._lock:
            self._tokens[token or self._current_token] = ("expired", 463)

    def _expire_credential(self, token: str | None) -> None:
        self.expire_token(token)  # 190/463 until issue_token()

    def revoke_token(self, token: str | None = None) -> None:
        """The token was invalidated (password change, app removed): 190/460."""
        with self._lock:
            self._tokens[token or self._current_token] = ("revoked", 460)

    def issue_token(self) -> str:
        """A new valid page token (what an operator would paste in after a 190)."""
        token = _new_page_token()
        with self._lock:
            self._tokens[token] = ("valid", None)
            self._current_token = token
        return token

    # -- the app and the Page ----------------------------------------------------------------

    def restrict(self, code: int = 200, subcode: int | None = 2018028) -> None:
        """The app or the Page lost a permission (not reviewed, not live, removed): every send
        answers ``(code, subcode)`` until :meth:`lift_restriction`, whoever the recipient."""
        with self._lock:
            self._restriction = (code, subcode)

    def lift_restriction(self) -> None:
        with self._lock:
            self._restriction = None

    # -- per-user state ----------------------------------------------------------------------

    def user_messaged(self, psid: str, at: datetime | None = None) -> None:
        """The user wrote to the page at ``at`` (default now): opens the 24 h window."""
        with self._lock:
            self._last_inbound[psid] = at or self.clock()

    def close_window(self, psid: str) -> None:
        """The user's last message is long past: only tagged messages get through."""
        self.user_messaged(psid, self.clock() - timedelta(days=365))

    def forget(self, psid: str) -> None:
        """The PSID no longer matches a user (deleted account, wrong page): 100/2018001."""
        with self._lock:
            self._forgotten.add(psid)

    def make_unavailable(self, psid: str, code: int = 551, subcode: int = 1545041) -> None:
        """The person cannot receive messages from the page: (551|200, 1545041), (10, 2018108)."""
        with self._lock:
            self._unreachable[psid] = (code, subcode)

    def restore(self, psid: str) -> None:
        with self._lock:
            self._forgotten.discard(psid)
            self._unreachable.pop(psid, None)
            self._last_inbound.pop(psid, None)
        self.reset_scripts(psid)

    # -- HTTP ------------------------------------------------------------------------------

    def build_app(self) -> ASGIApp:
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])])

    def _token_error(self, request: Request, params: Mapping[str, Any]) -> Reply | None:
        token = request.query_params.get("access_token") or params.get("access_token")
        auth = request.headers.get("authorization", "")
        if not token and auth.split(" ", 1)[0].lower() in ("bearer", "oauth"):
            token = auth.split(" ", 1)[1].strip() if " " in auth else ""
        if not token:
            return error(104)
        with self._lock:
            state = self._tokens.get(str(token))
            if state is not None and state[0] == "valid":
                self._spend_token_call(str(token))
        if state is None:
            return error(190)
        if state[0] != "valid":
            return error(190, state[1])
        return None

    async def _endpoint(self, request: Request) -> Response:
        parts = [p for p in request.path_params["path"].split("/") if p]
        if parts and _VERSION_RE.match(parts[0]):
            parts = parts[1:]
        try:
            params = parse_body(request.headers.get("content-type"), await request.body())
        except BodyError:
            params = {"__unparsable__": True}
        denied = self._token_error(request, params)
        if denied is not None:
            return _fresh(denied)
        if len(parts) != 2 or parts[1] not in ("messages", "feed") or request.method != "POST":
            path = "/" + "/".join(parts)
            return _fresh(error(2500, message=f"Unknown path components: {path}"))
        node, edge = parts
        if node not in (self.page_id, "me"):
            message = ERRORS[(100, 33)][2].replace("{id}", node)
            return _fresh(error(100, 33, message))
        if "__unparsable__" in params:
            return _fresh(error(100, message="(#100) Invalid JSON for postdata"))
        if edge == "feed":
            return await self._post_to_feed(params)
        return await self._send(params)

    async def _send(self, params: Mapping[str, Any]) -> Response:
        recipient = maybe_json(params.get("recipient"))
        message = maybe_json(params.get("message"))
        messaging_type = params.get("messaging_type")
        tag = params.get("tag")
        if not isinstance(recipient, dict):
            return _fresh(error(100, message="(#100) The parameter recipient is required"))
        psid = recipient.get("id")
        if not isinstance(psid, str | int) or not str(psid).strip():
            return _fresh(
                error(
                    100,
                    message='(#100) Param recipient[id] must be a valid ID string (e.g., "123")',
                )
            )
        psid = str(psid)
        if messaging_type is None:
            return _fresh(error(100, message="(#100) The parameter messaging_type is required"))
        if messaging_type not in MESSAGING_TYPES:
            allowed = ", ".join(MESSAGING_TYPES)
            return _fresh(
                error(100, message=f"(#100) Param messaging_type must be one of {{{allowed}}}")
            )
        if messaging_type == "MESSAGE_TAG" and tag not in TAGS:
            allowed = ", ".join(sorted(TAGS))
            return _fresh(error(100, message=f"(#100) Param tag must be one of {{{allowed}}}"))
        if not isinstance(message, dict):
            return _fresh(error(100, message="(#100) Must send either message or state"))
        text = message.get("text")
        if text is None and message.get("attachment") is None:
            return _fresh(error(100, message="(#100) Must send either text or attachment"))
        if text is not None and (not isinstance(text, str) or not text):
            return _fresh(
                error(
                    100,
                    message="(#100) Param message[text] must be a non-empty UTF-8 encoded string",
                )
            )
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return _fresh(
                error(
                    100,
                    message="(#100) Length of param message[text] must be less than or equal "
                    f"to {MAX_TEXT}",
                )
            )

        scripted = await self.next_outcome(psid)
        if scripted is not None:
            return _fresh(scripted)
        refusal = self._refusal(psid, messaging_type, tag if isinstance(tag, str) else None)
        if refusal is not None:
            return _fresh(refusal)
        limited = self.limits.acquire(("app", ""), ("page", self.page_id))
        if limited is not None:
            return _fresh(error(4 if limited[0] == "app" else 613))

        message_id = "m_" + secrets.token_urlsafe(64)
        self.deliver(
            Delivery(
                address=psid,
                text=text,
                kind=messaging_type,
                tag=tag if isinstance(tag, str) else None,
                message_id=message_id,
                at=self.clock(),
                payload={k: maybe_json(v) for k, v in params.items() if k != "access_token"},
            )
        )
        return Reply(200, {"recipient_id": psid, "message_id": message_id}).to_response()

    def _refusal(self, psid: str, messaging_type: str, tag: str | None) -> Reply | None:
        now = self.clock()
        with self._lock:
            if self._restriction is not None:
                return error(*self._restriction)
            if psid in self._forgotten or (self._users is not None and psid not in self._users):
                return no_matching_user()
            if psid in self._unreachable:
                return unavailable(*self._unreachable[psid])
            last = self._last_inbound.get(psid)
        if last is None:
            last = now if self.default_in_window else now - timedelta(days=3650)
        tagged = messaging_type == "MESSAGE_TAG"
        if tagged and tag != "HUMAN_AGENT":
            return None  # the non-promotional tags are allowed outside the window
        window = HUMAN_AGENT_WINDOW if tagged else WINDOW
        return outside_window() if now - last > window else None

    async def _post_to_feed(self, params: Mapping[str, Any]) -> Response:
        text = params.get("message")
        if not isinstance(text, str) or not text.strip():
            if params.get("link") is None:
                return _fresh(error(100, message="(#100) Missing message or attachment"))
            text = None
        if isinstance(text, str) and len(text) > MAX_POST:
            return _fresh(error(100, message="(#100) The post is too long"))
        scripted = await self.next_outcome(self.page_id)
        if scripted is not None:
            return _fresh(scripted)
        limited = self.limits.acquire(("app", ""), ("page", self.page_id))
        if limited is not None:
            return _fresh(error(4 if limited[0] == "app" else 613))
        post_id = f"{self.page_id}_{secrets.randbelow(9 * 10**15) + 10**15}"
        self.deliver(
            Delivery(
                address=self.page_id,
                text=text,
                kind="feed",
                message_id=post_id,
                at=self.clock(),
                payload={k: v for k, v in params.items() if k != "access_token"},
            )
        )
        return Reply(200, {"id": post_id}).to_response()


def _new_page_token() -> str:
    return "EAAG" + secrets.token_urlsafe(120).replace("-", "A").replace("_", "B")
