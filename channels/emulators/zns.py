"""ZNS (ZBS Template Message by phone) emulator: the Zalo OA emulator plus
``POST /message/template`` of ``business.openapi.zalo.me``, on the same port and behind the
same Official Account access token (ZNS has no credential of its own).

- ``POST /message/template``, header ``access_token``, JSON
  ``{"phone":"84…","template_id":"..","template_data":{..},"tracking_id":".."}`` (optionally
  ``"mode":"development"``) → ``{"error":0,"message":"Success","data":{"msg_id":"..",
  "sent_time":"<epoch ms>","sending_mode":"1","quota":{"dailyQuota":"500",
  "remainingQuota":"499"}}}`` (the compilation's §7.3; tests/channels/fixtures/zalo_contract.json).

Enforced, with Zalo's ZNS codes (https://zalo.cloud/zns/guidelines/handle-error-code and the
compilation's §14.3): the token (-124), an account-wide set-up fault (``break_account``), the
phone (-108: Zalo takes ``84…``, ``0…`` or the bare number), a phone with no Zalo account
(-118, :meth:`ZnsEmulator.without_zalo`), a person who cannot receive (-114 / -119 / -141,
:meth:`ZnsEmulator.refuse`), the template (unknown -109, not approved -131, its parameters
-111 / -1121 / -1122 / -1124 as on the OA template route), development mode only to
administrators (-127), and the OA's daily quota (-144 once ``daily_quota`` messages went out;
:meth:`ZnsEmulator.reset_quotas` starts a new day). A missing or over-long ``tracking_id``
(Zalo requires it, at most 48 characters) is answered -201: Zalo's code for it is not
published. Everything can also be scripted per phone: ``script("84912345678", error(-115))``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .base import BodyError, Delivery, Reply, parse_body
from .zalo import ZaloEmulator, error, template_data_error

ZNS_ERRORS: dict[int, str] = {
    -108: "Phone number invalid",
    -109: "Template ID invalid",
    -114: (
        "User is inactive, or reject the message, or using an outdated Zalo version, "
        "or other internal errors"
    ),
    -115: "Out of quota",
    -118: "Zalo account not existed",
    -119: "Account can not receive message",
    -124: "Access token invalid",
    -127: "Test template can only be sent to administrators",
    -131: "ZNS template not approved",
    -135: "OA has no permission to send ZNS",
    -141: "User refused ZNS from this OA",
    -144: "OA has exceeded the daily ZNS quota",
}
_PHONE = re.compile(r"^(84|0)?([35789][0-9]{8})$")


def zns_error(code: int, message: str | None = None) -> Reply:
    return error(code, message or ZNS_ERRORS.get(code))


def zalo_phone(raw: Any) -> str | None:
    """The ``84…`` form Zalo reads ``raw`` as, or None (-108)."""
    if not isinstance(raw, str | int):
        return None
    match = _PHONE.match(str(raw).removeprefix("+"))
    return None if match is None else "84" + match[2]


class ZnsEmulator(ZaloEmulator):
    def __init__(
        self,
        *,
        daily_quota: int = 500,
        zalo_phones: Iterable[str] | None = None,
        admins: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        """``zalo_phones``: None means every valid mobile number has a Zalo account;
        ``admins``: the phones of the app's / OA's administrators (development mode)."""
        super().__init__(**kwargs)
        self.daily_quota = daily_quota
        self._zns_sent = 0
        self._zalo_phones = None if zalo_phones is None else set(zalo_phones)
        self._admins = set(admins)
        self._phone_refusals: dict[str, int] = {}

    def without_zalo(self, phone: str) -> None:
        """No Zalo account on this phone: -118."""
        with self._lock:
            if self._zalo_phones is None:
                self._phone_refusals[phone] = -118
            else:
                self._zalo_phones.discard(phone)

    def refuse(self, phone: str, code: int = -114) -> None:
        """The person cannot (or will not) receive ZNS: -114, -119 or -141."""
        with self._lock:
            self._phone_refusals[phone] = code

    def reset_quotas(self) -> None:
        super().reset_quotas()
        with self._lock:
            self._zns_sent = 0

    @property
    def remaining_quota(self) -> int:
        with self._lock:
            return max(self.daily_quota - self._zns_sent, 0)

    def build_app(self) -> ASGIApp:
        app = super().build_app()
        assert isinstance(app, Starlette)
        app.router.routes.append(Route("/message/template", self._zns, methods=["POST"]))
        return app

    async def _zns(self, request: Request) -> Response:
        if self._token_error(request.headers.get("access_token")) is not None:
            return zns_error(-124).to_response()
        with self._lock:
            fault = self._account_fault
        if fault is not None:
            return zns_error(fault).to_response()
        try:
            body = parse_body(request.headers.get("content-type"), await request.body())
        except BodyError:
            return error(-122, "Body request is not valid JSON").to_response()
        phone = zalo_phone(body.get("phone"))
        if phone is None:
            return zns_error(-108).to_response()
        tracking = body.get("tracking_id")
        if not isinstance(tracking, str) or not tracking or len(tracking) > 48:
            return error(-201, "tracking_id is invalid!").to_response()
        template = self.template(str(body.get("template_id", "")), body.get("template_data"))
        if template is None:
            return zns_error(-109).to_response()
        if template.status != "ENABLE":
            return zns_error(-131).to_response()
        broken = template_data_error(template, body.get("template_data"))
        if broken is not None:
            return broken.to_response()
        if body.get("mode") == "development" and phone not in self._admins:
            return zns_error(-127).to_response()
        scripted = await self.next_outcome(phone)
        if scripted is not None:
            return scripted.to_response()
        with self._lock:
            refusal = self._phone_refusals.get(phone)
            if refusal is None and self._zalo_phones is not None and phone not in self._zalo_phones:
                refusal = -118
            if refusal is None and self._zns_sent >= self.daily_quota:
                refusal = -144
            if refusal is None:
                self._zns_sent += 1
            remaining = self.daily_quota - self._zns_sent
        if refusal is not None:
            return zns_error(refusal).to_response()
        msg_id = secrets.token_hex(10)
        now = self.clock()
        self.deliver(
            Delivery(
                address=phone,
                text=None,
                kind="zns",
                message_id=msg_id,
                at=now,
                tag=tracking,
                payload=body,
            )
        )
        return Reply(
            200,
            {
                "error": 0,
                "message": "Success",
                "data": {
                    "msg_id": msg_id,
                    "sent_time": str(int(now.timestamp() * 1000)),
                    "sending_mode": "1",
                    "quota": {
                        "dailyQuota": str(self.daily_quota),
                        "remainingQuota": str(remaining),
                    },
                },
            },
        ).to_response()
