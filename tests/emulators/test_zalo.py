"""Tests of the Zalo OA OpenAPI v3 emulator and its OAuth v4 refresh endpoint."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from channels.emulators.base import ANY, Delay, Disconnect, ManualClock
from channels.emulators.zalo import (
    ERRORS,
    VIETNAM,
    Template,
    TemplateParam,
    ZaloEmulator,
    error,
    server_error,
)

from .conftest import START


def send(
    http: httpx.Client,
    emulator: ZaloEmulator,
    user_id: str,
    text: str = "Thông báo BHXH",
    kind: str = "cs",
    token: str | None = None,
) -> dict[str, Any]:
    """cs: free text; transaction / promotion: the structured template those (retired) routes
    took, as zalo-java-sdk built it; anything else: text, to be refused."""
    message: dict[str, Any] = {"text": text}
    if kind in ("transaction", "promotion"):
        template_type = "transaction_order" if kind == "transaction" else "promotion"
        elements = [{"type": "header", "align": "left", "content": text}]
        payload = {"template_type": template_type, "language": "VI", "elements": elements}
        message = {"attachment": {"type": "template", "payload": payload}}
    response = http.post(
        f"{emulator.base_url}/v3.0/oa/message/{kind}",
        headers={"access_token": token if token is not None else emulator.access_token},
        json={"recipient": {"user_id": user_id}, "message": message},
    )
    assert response.status_code == 200, response.text  # Zalo answers errors with HTTP 200
    body: dict[str, Any] = response.json()
    return body


def refresh(
    http: httpx.Client, emulator: ZaloEmulator, presented: str, **overrides: str
) -> dict[str, Any]:
    form = {"app_id": emulator.app_id, "grant_type": "refresh_token", "refresh_token": presented}
    secret = overrides.pop("secret_key", emulator.secret_key)
    form.update(overrides)
    response = http.post(
        f"{emulator.base_url}/v4/oa/access_token", headers={"secret_key": secret}, data=form
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def made_emulator(clock: ManualClock, **kwargs: Any) -> ZaloEmulator:
    return ZaloEmulator(clock=clock, monotonic=clock.monotonic, **kwargs)


# -- sending -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cs", "transaction", "promotion"])
def test_send_each_message_type(zalo: ZaloEmulator, http: httpx.Client, kind: str) -> None:
    body = send(http, zalo, "8412345678901234567", kind=kind)
    assert body["error"] == 0
    assert body["message"] == "Success"
    message_id = body["data"]["message_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", message_id)
    assert body["data"]["user_id"] == "8412345678901234567"
    delivery = zalo.outbox.last()
    assert (delivery.address, delivery.kind, delivery.text) == (
        "8412345678901234567",
        kind,
        "Thông báo BHXH" if kind == "cs" else None,
    )
    assert delivery.message_id == message_id
    assert delivery.at == START


def test_attachment_messages_are_accepted(zalo: ZaloEmulator, http: httpx.Client) -> None:
    template = {
        "type": "template",
        "payload": {
            "template_type": "transaction_billing",
            "elements": [{"type": "header", "content": "Hóa đơn"}],
        },
    }
    response = http.post(
        f"{zalo.base_url}/v3.0/oa/message/transaction",
        headers={"access_token": zalo.access_token},
        json={"recipient": {"user_id": "1"}, "message": {"attachment": template}},
    )
    assert response.json()["error"] == 0
    assert zalo.outbox.last().text is None
    assert zalo.outbox.last().payload["message"]["attachment"] == template


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"message": {"text": "x"}}, -201),
        ({"recipient": {"user_id": ""}, "message": {"text": "x"}}, -201),
        ({"recipient": {"user_id": "1"}}, -201),
        ({"recipient": {"user_id": "1"}, "message": {}}, -201),
        ({"recipient": {"user_id": "1"}, "message": {"text": "   "}}, -201),
    ],
)
def test_invalid_parameters(
    zalo: ZaloEmulator, http: httpx.Client, body: dict[str, Any], code: int
) -> None:
    response = http.post(
        f"{zalo.base_url}/v3.0/oa/message/cs",
        headers={"access_token": zalo.access_token},
        json=body,
    )
    assert response.status_code == 200
    assert response.json()["error"] == code
    assert not zalo.outbox


def test_malformed_json_and_unknown_type(zalo: ZaloEmulator, http: httpx.Client) -> None:
    url = f"{zalo.base_url}/v3.0/oa/message"
    headers = {"access_token": zalo.access_token, "content-type": "application/json"}
    assert http.post(f"{url}/cs", headers=headers, content=b"{not json").json()["error"] == -201
    assert send(http, zalo, "1", kind="broadcast")["error"] == -233


def test_text_limit_is_2000_characters(zalo: ZaloEmulator, http: httpx.Client) -> None:
    assert send(http, zalo, "1", "ệ" * 2000)["error"] == 0
    too_long = send(http, zalo, "1", "ệ" * 2001)
    assert too_long["error"] == -210
    assert len(zalo.outbox) == 1


# -- access token and its refresh ---------------------------------------------------------------


def test_missing_or_wrong_token_is_216(zalo: ZaloEmulator, http: httpx.Client) -> None:
    assert send(http, zalo, "1", token="wrong") == {
        "error": -216,
        "message": ERRORS[-216],
    }
    response = http.post(
        f"{zalo.base_url}/v3.0/oa/message/cs",
        json={"recipient": {"user_id": "1"}, "message": {"text": "x"}},
    )
    assert response.json()["error"] == -216


def test_expired_token_refresh_rotates_single_use_refresh_token(
    zalo: ZaloEmulator, http: httpx.Client
) -> None:
    old_access, old_refresh = zalo.access_token, zalo.refresh_token
    zalo.expire_access_token()
    assert send(http, zalo, "1")["error"] == -220

    fresh = refresh(http, zalo, old_refresh)
    assert set(fresh) == {"access_token", "refresh_token", "expires_in"}
    assert fresh["expires_in"] == "90000"  # a string, as Zalo sends it
    assert fresh["access_token"] != old_access
    assert fresh["refresh_token"] != old_refresh
    assert (zalo.access_token, zalo.refresh_token) == (
        fresh["access_token"],
        fresh["refresh_token"],
    )
    assert zalo.refresh_count == 1
    assert send(http, zalo, "1", token=fresh["access_token"])["error"] == 0

    reused = refresh(http, zalo, old_refresh)
    assert reused["error"] == -14014
    assert "access_token" not in reused
    assert refresh(http, zalo, fresh["refresh_token"])["access_token"]


def test_access_token_expires_after_25_hours(
    zalo: ZaloEmulator, http: httpx.Client, clock: ManualClock
) -> None:
    clock.advance(timedelta(seconds=89_999))
    assert send(http, zalo, "1")["error"] == 0
    clock.advance(timedelta(seconds=1))
    assert send(http, zalo, "1")["error"] == -220


def test_access_token_expires_after_n_calls_and_a_refresh_cures_it(
    zalo: ZaloEmulator, http: httpx.Client
) -> None:
    zalo.expire_token_after(2)
    assert send(http, zalo, "1")["error"] == 0
    assert send(http, zalo, "2", text="x" * 2001)["error"] == -210  # a refused send counts
    assert send(http, zalo, "3") == {"error": -220, "message": ERRORS[-220]}
    assert [d.address for d in zalo.outbox] == ["1"]
    fresh = refresh(http, zalo, zalo.refresh_token)  # the refresh call does not count
    assert zalo.token_calls_left is None
    assert all(send(http, zalo, u, token=fresh["access_token"])["error"] == 0 for u in "345")


def test_expiry_countdown_follows_whichever_token_is_presented(
    zalo: ZaloEmulator, http: httpx.Client
) -> None:
    old = zalo.access_token
    new = refresh(http, zalo, zalo.refresh_token)["access_token"]
    zalo.expire_token_after(2)
    assert send(http, zalo, "1", token=old)["error"] == 0
    assert send(http, zalo, "2", token=new)["error"] == 0  # the last call: this token expires
    assert send(http, zalo, "3", token=new)["error"] == -220
    assert send(http, zalo, "4", token=old)["error"] == 0


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"secret_key": "wrong"}, -14003),
        ({"app_id": "123"}, -14002),
        ({"grant_type": "authorization_code"}, -14004),
        ({"refresh_token": "never-issued"}, -14014),
    ],
)
def test_refresh_errors(
    zalo: ZaloEmulator, http: httpx.Client, overrides: dict[str, str], code: int
) -> None:
    answer = refresh(http, zalo, zalo.refresh_token, **overrides)
    assert answer["error"] == code
    assert {"error_name", "error_reason", "error_description"} <= set(answer)


def test_expired_refresh_token(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.expire_refresh_token()
    assert refresh(http, zalo, zalo.refresh_token)["error"] == -14020


# -- promotion at night ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_time", "code"),
    [
        ((21, 59), 0),
        ((22, 0), -234),
        ((23, 30), -234),
        ((0, 0), -234),
        ((5, 59), -234),
        ((6, 0), 0),
    ],
)
def test_promotion_never_at_night_vietnam_time(
    clock: ManualClock, http: httpx.Client, local_time: tuple[int, int], code: int
) -> None:
    hour, minute = local_time
    when = datetime(2025, 3, 11, hour, minute, tzinfo=VIETNAM)
    clock.set(when)
    with made_emulator(clock) as emulator:
        assert send(http, emulator, "1", kind="promotion")["error"] == code
        assert send(http, emulator, "1", kind="transaction")["error"] == 0  # only promotion


def test_night_is_judged_in_vietnam_whatever_the_clock_zone(http: httpx.Client) -> None:
    # 16:30 UTC is 23:30 in Hanoi; an injected clock may answer in any zone.
    clock = ManualClock(datetime(2025, 3, 10, 16, 30, tzinfo=UTC))
    with made_emulator(clock) as emulator:
        assert send(http, emulator, "1", kind="promotion")["error"] == -234


# -- per-user refusals -------------------------------------------------------------------------


def test_followers_only(clock: ManualClock, http: httpx.Client) -> None:
    with made_emulator(clock, followers={"1"}) as emulator:
        assert send(http, emulator, "1")["error"] == 0
        assert send(http, emulator, "2")["error"] == -213
        emulator.follow("2")
        assert send(http, emulator, "2")["error"] == 0
        emulator.unfollow("1")
        assert send(http, emulator, "1", kind="transaction")["error"] == -213


def test_consultation_window_applies_to_cs_only(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.close_window("1")
    zalo.close_window("2", code=-232)
    assert send(http, zalo, "1", kind="cs")["error"] == -230
    assert send(http, zalo, "2", kind="cs")["error"] == -232
    assert send(http, zalo, "1", kind="transaction")["error"] == 0
    zalo.open_window("1")
    assert send(http, zalo, "1", kind="cs")["error"] == 0


def test_blocked_banned_restricted_and_restore(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.block_oa("1")
    zalo.ban("2")
    zalo.restrict("3")
    assert send(http, zalo, "1")["error"] == -217
    assert send(http, zalo, "2")["error"] == -227
    assert send(http, zalo, "3", kind="promotion")["error"] == -244
    assert send(http, zalo, "3", kind="cs")["error"] == 0
    for user in ("1", "2", "3"):
        zalo.restore(user)
        assert send(http, zalo, user, kind="promotion")["error"] == 0


# -- limits and quotas ---------------------------------------------------------------------------


def test_api_rate_limit_is_32(clock: ManualClock, http: httpx.Client) -> None:
    with made_emulator(clock, api_rate=2) as emulator:
        assert [send(http, emulator, str(u))["error"] for u in range(3)] == [0, 0, -32]
        assert send(http, emulator, "9")["message"] == ERRORS[-32]
        clock.advance(0.5)
        assert send(http, emulator, "9")["error"] == 0


def test_oa_and_user_quotas(clock: ManualClock, http: httpx.Client) -> None:
    with made_emulator(clock, oa_quota=3, user_quota=1) as emulator:
        assert send(http, emulator, "1", kind="promotion")["error"] == 0
        assert send(http, emulator, "1", kind="promotion")["error"] == -218
        assert send(http, emulator, "2", kind="transaction")["error"] == 0
        assert send(http, emulator, "3", kind="promotion")["error"] == 0
        assert send(http, emulator, "4", kind="transaction")["error"] == -211
        assert send(http, emulator, "4", kind="cs")["error"] == 0  # cs costs no quota
        emulator.reset_quotas()
        assert send(http, emulator, "1", kind="promotion")["error"] == 0


# -- scripted outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_contract_code_can_be_scripted_once(
    zalo: ZaloEmulator, http: httpx.Client, code: int
) -> None:
    zalo.script("1", error(code))
    assert send(http, zalo, "1") == {"error": code, "message": ERRORS[code]}
    assert not zalo.outbox
    assert send(http, zalo, "1")["error"] == 0


def test_transient_gateway_failure_then_success(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.script("1", server_error(502), error(-32, "custom text"))
    url = f"{zalo.base_url}/v3.0/oa/message/cs"
    payload = {"recipient": {"user_id": "1"}, "message": {"text": "x"}}
    gateway = http.post(url, headers={"access_token": zalo.access_token}, json=payload)
    assert gateway.status_code == 502
    assert gateway.headers["content-type"].startswith("text/html")
    assert send(http, zalo, "1") == {"error": -32, "message": "custom text"}
    assert send(http, zalo, "1")["error"] == 0


def test_gateway_errors_for_the_next_k_calls_on_any_user(
    zalo: ZaloEmulator, http: httpx.Client
) -> None:
    zalo.script(ANY, *[server_error(503)] * 2)
    url = f"{zalo.base_url}/v3.0/oa/message/cs"
    statuses = [
        http.post(
            url,
            headers={"access_token": zalo.access_token},
            json={"recipient": {"user_id": user}, "message": {"text": "x"}},
        ).status_code
        for user in ("1", "2", "3")
    ]
    assert statuses == [503, 503, 200]
    assert [d.address for d in zalo.outbox] == ["3"]


def test_delay_and_dropped_connection(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.script("1", Delay(0.01), Disconnect())
    assert send(http, zalo, "1")["error"] == 0  # held briefly, then served
    with pytest.raises(httpx.RemoteProtocolError):
        send(http, zalo, "1")
    assert send(http, zalo, "1")["error"] == 0
    assert len(zalo.outbox) == 2


def test_access_token_travels_only_in_its_header(zalo: ZaloEmulator, http: httpx.Client) -> None:
    access = zalo.access_token
    send(http, zalo, "1")
    refresh(http, zalo, zalo.refresh_token)
    message, token = zalo.requests.wait_for(2)
    assert message.mentions(access) == ["headers"]
    assert token.mentions(access) == []
    assert message.path == "/v3.0/oa/message/cs"
    assert message.json() == {"recipient": {"user_id": "1"}, "message": {"text": "Thông báo BHXH"}}
    assert [parts for _, parts in zalo.requests.mentioning(zalo.secret_key)] == [["headers"]]
    assert token.header("content-type") == "application/x-www-form-urlencoded"


# -- what Zalo refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transaction", "promotion"])
def test_text_is_refused_on_the_template_only_routes(
    zalo: ZaloEmulator, http: httpx.Client, kind: str
) -> None:
    response = http.post(
        f"{zalo.base_url}/v3.0/oa/message/{kind}",
        headers={"access_token": zalo.access_token},
        json={"recipient": {"user_id": "1"}, "message": {"text": "Thông báo BHXH"}},
    )
    assert response.status_code == 200
    assert response.json()["error"] == -201
    assert not zalo.outbox


@pytest.mark.parametrize(
    "payload",
    [
        {"template_type": "promotion", "elements": [{"type": "text", "content": "x"}]},
        {"template_type": "transaction_order", "elements": []},
        {"template_type": "transaction_order"},
    ],
    ids=["wrong-type", "no-elements", "elements-missing"],
)
def test_a_structured_template_must_have_the_routes_shape(
    zalo: ZaloEmulator, http: httpx.Client, payload: dict[str, Any]
) -> None:
    response = http.post(
        f"{zalo.base_url}/v3.0/oa/message/transaction",
        headers={"access_token": zalo.access_token},
        json={
            "recipient": {"user_id": "1"},
            "message": {"attachment": {"type": "template", "payload": payload}},
        },
    )
    assert response.json()["error"] == -201
    assert not zalo.outbox


TEMPLATE = Template(
    "300101",
    (
        TemplateParam("customer_name", 30),
        TemplateParam("amount", 20, type="NUMBER"),
        TemplateParam("note", 90, require=False),
    ),
)


def send_template(http: httpx.Client, emulator: ZaloEmulator, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": "1",
        "template_id": "300101",
        "template_data": {"customer_name": "Nguyễn Văn An", "amount": "100000"},
    }
    body.update(overrides)
    response = http.post(
        f"{emulator.base_url}/v3.0/oa/message/template",
        headers={"access_token": emulator.access_token},
        json=body,
    )
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def test_a_registered_template_is_sent_by_user_id(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.register_template(TEMPLATE)
    answer = send_template(http, zalo)
    assert answer["error"] == 0
    assert set(answer["data"]) == {"message_id", "user_id", "sent_time", "quota"}
    delivery = zalo.outbox.last()
    assert (delivery.address, delivery.kind, delivery.tag, delivery.text) == (
        "1",
        "template",
        "1",
        None,
    )


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"template_id": "999999"}, -109),
        ({"template_data": {}}, -111),
        ({"template_data": {"amount": "1"}}, -1122),
        ({"template_data": {"customer_name": "A" * 31, "amount": "1"}}, -1121),
        ({"template_data": {"customer_name": "An", "amount": "một trăm"}}, -1124),
        ({"template_data": {"customer_name": "An", "amount": "1", "note": "x" * 91}}, -1121),
        ({"message": {"text": "Thông báo BHXH"}}, -201),
    ],
    ids=["unknown-id", "empty", "missing", "too-long", "not-a-number", "optional-too-long", "text"],
)
def test_the_template_route_refuses_what_zalo_refuses(
    zalo: ZaloEmulator, http: httpx.Client, overrides: dict[str, Any], code: int
) -> None:
    zalo.register_template(TEMPLATE)
    assert send_template(http, zalo, **overrides)["error"] == code
    assert not zalo.outbox


def test_unapproved_or_phone_only_templates_are_refused(
    zalo: ZaloEmulator, http: httpx.Client
) -> None:
    zalo.register_template(Template("1", TEMPLATE.params, status="PENDING_REVIEW"))
    zalo.register_template(Template("2", TEMPLATE.params, uid=False))
    assert send_template(http, zalo, template_id="1")["error"] == -131
    assert send_template(http, zalo, template_id="2")["error"] == -249


def test_a_promotion_template_is_never_sent_at_night(
    clock: ManualClock, http: httpx.Client
) -> None:
    clock.set(datetime(2025, 3, 10, 23, 0, tzinfo=VIETNAM))
    promotion = Template("300103", TEMPLATE.params, tag=3)
    with made_emulator(clock, templates=[TEMPLATE, promotion]) as emulator:
        assert send_template(http, emulator, template_id="300103")["error"] == -234
        assert send_template(http, emulator)["error"] == 0  # a transaction template goes


def test_an_account_fault_answers_every_call(zalo: ZaloEmulator, http: httpx.Client) -> None:
    zalo.register_template(TEMPLATE)
    zalo.break_account(-223)
    assert send(http, zalo, "1") == {"error": -223, "message": ERRORS[-223]}
    assert send_template(http, zalo)["error"] == -223
    zalo.repair_account()
    assert send_template(http, zalo)["error"] == 0
