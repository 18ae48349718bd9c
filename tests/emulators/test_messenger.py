"""Tests of the Messenger Send API / Page feed emulator."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest

from channels.emulators.base import ANY, Delay, Disconnect, ManualClock
from channels.emulators.messenger import ERRORS, MessengerEmulator, error, rate_limited

PSID = "6543210987654321"


def send(
    http: httpx.Client,
    emulator: MessengerEmulator,
    psid: str = PSID,
    text: str = "Thông báo BHXH",
    messaging_type: str = "UPDATE",
    tag: str | None = None,
    token: str | None = None,
    node: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {
        "recipient": {"id": psid},
        "messaging_type": messaging_type,
        "message": {"text": text},
    }
    if tag is not None:
        body["tag"] = tag
    return http.post(
        f"{emulator.base_url}/v21.0/{node or emulator.page_id}/messages",
        params={"access_token": token if token is not None else emulator.page_token},
        json=body,
    )


def graph_error(response: httpx.Response) -> dict[str, Any]:
    detail: dict[str, Any] = response.json()["error"]
    assert set(detail) >= {"message", "type", "code", "fbtrace_id"}
    return detail


def made_emulator(clock: ManualClock, **kwargs: Any) -> MessengerEmulator:
    return MessengerEmulator(clock=clock, monotonic=clock.monotonic, **kwargs)


# -- sending -----------------------------------------------------------------------------------


def test_send_json_with_token_in_query(messenger: MessengerEmulator, http: httpx.Client) -> None:
    response = send(http, messenger)
    assert response.status_code == 200
    body = response.json()
    assert body["recipient_id"] == PSID
    assert body["message_id"].startswith("m_") and len(body["message_id"]) > 40
    delivery = messenger.outbox.last()
    assert (delivery.address, delivery.text, delivery.kind, delivery.tag) == (
        PSID,
        "Thông báo BHXH",
        "UPDATE",
        None,
    )
    assert delivery.message_id == body["message_id"]
    assert "access_token" not in delivery.payload


def test_form_body_token_in_body_or_bearer_unversioned_and_me(
    messenger: MessengerEmulator, http: httpx.Client
) -> None:
    form = {
        "recipient": json.dumps({"id": PSID}),
        "messaging_type": "RESPONSE",
        "message": json.dumps({"text": "form"}),
        "access_token": messenger.page_token,
    }
    assert http.post(f"{messenger.base_url}/v19.0/me/messages", data=form).status_code == 200
    bearer = {"Authorization": f"Bearer {messenger.page_token}"}
    json_body = {"recipient": {"id": PSID}, "messaging_type": "RESPONSE", "message": {"text": "b"}}
    url = f"{messenger.base_url}/{messenger.page_id}/messages"
    assert http.post(url, headers=bearer, json=json_body).status_code == 200
    assert [d.text for d in messenger.outbox] == ["form", "b"]


def test_message_tag_outside_the_window(
    messenger: MessengerEmulator, http: httpx.Client, clock: ManualClock
) -> None:
    messenger.user_messaged(PSID, clock() - timedelta(hours=25))
    outside = send(http, messenger, messaging_type="RESPONSE")
    assert outside.status_code == 400
    assert (graph_error(outside)["code"], graph_error(outside)["error_subcode"]) == (10, 2018278)
    for tag in ("CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE", "HUMAN_AGENT"):
        assert send(http, messenger, messaging_type="MESSAGE_TAG", tag=tag).status_code == 200
    assert messenger.outbox.last().tag == "HUMAN_AGENT"
    assert messenger.outbox.last().kind == "MESSAGE_TAG"


def test_window_is_24_hours_since_the_users_last_message(
    clock: ManualClock, http: httpx.Client
) -> None:
    with made_emulator(clock, default_in_window=False) as emulator:
        assert graph_error(send(http, emulator))["error_subcode"] == 2018278
        emulator.user_messaged(PSID)
        assert send(http, emulator).status_code == 200
        clock.advance(timedelta(hours=24))
        assert send(http, emulator).status_code == 200
        clock.advance(1)
        assert graph_error(send(http, emulator))["error_subcode"] == 2018278
        human = send(http, emulator, messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
        assert human.status_code == 200  # a human agent may answer for 7 days
        emulator.close_window(PSID)
        human = send(http, emulator, messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
        assert graph_error(human)["error_subcode"] == 2018278


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messaging_type": "UPDATE", "message": {"text": "x"}}, "recipient is required"),
        ({"recipient": {}, "messaging_type": "UPDATE", "message": {"text": "x"}}, "recipient[id]"),
        ({"recipient": {"id": PSID}, "message": {"text": "x"}}, "messaging_type is required"),
        (
            {"recipient": {"id": PSID}, "messaging_type": "PROMO", "message": {"text": "x"}},
            "messaging_type must be one of",
        ),
        (
            {"recipient": {"id": PSID}, "messaging_type": "MESSAGE_TAG", "message": {"text": "x"}},
            "tag must be one of",
        ),
        (
            {
                "recipient": {"id": PSID},
                "messaging_type": "MESSAGE_TAG",
                "tag": "PROMOTION",
                "message": {"text": "x"},
            },
            "tag must be one of",
        ),
        ({"recipient": {"id": PSID}, "messaging_type": "UPDATE"}, "either message or state"),
        (
            {"recipient": {"id": PSID}, "messaging_type": "UPDATE", "message": {}},
            "either text or attachment",
        ),
        (
            {
                "recipient": {"id": PSID},
                "messaging_type": "UPDATE",
                "message": {"text": "x" * 2001},
            },
            "less than or equal to 2000",
        ),
    ],
)
def test_parameter_errors_are_code_100(
    messenger: MessengerEmulator, http: httpx.Client, body: dict[str, Any], fragment: str
) -> None:
    response = http.post(
        f"{messenger.base_url}/v21.0/{messenger.page_id}/messages",
        params={"access_token": messenger.page_token},
        json=body,
    )
    assert response.status_code == 400
    detail = graph_error(response)
    assert detail["code"] == 100
    assert detail["type"] == "OAuthException"
    assert fragment in detail["message"]
    assert not messenger.outbox


def test_text_limit_is_2000(messenger: MessengerEmulator, http: httpx.Client) -> None:
    assert send(http, messenger, text="ệ" * 2000).status_code == 200


# -- credentials and paths -------------------------------------------------------------------


def test_token_errors(messenger: MessengerEmulator, http: httpx.Client) -> None:
    url = f"{messenger.base_url}/v21.0/{messenger.page_id}/messages"
    missing = http.post(url, json={})
    assert graph_error(missing)["code"] == 104
    wrong = send(http, messenger, token="EAAGwrong")
    assert wrong.status_code == 400
    assert graph_error(wrong)["code"] == 190
    assert "error_subcode" not in graph_error(wrong)
    assert wrong.headers["www-authenticate"].startswith('OAuth "Facebook Platform" "invalid_token"')
    messenger.expire_token()
    expired = graph_error(send(http, messenger))
    assert (expired["code"], expired["error_subcode"]) == (190, 463)
    fresh = messenger.issue_token()
    assert send(http, messenger, token=fresh).status_code == 200
    messenger.revoke_token()
    revoked = graph_error(send(http, messenger, token=fresh))
    assert (revoked["code"], revoked["error_subcode"]) == (190, 460)


def test_page_token_expires_after_n_calls(messenger: MessengerEmulator, http: httpx.Client) -> None:
    messenger.expire_token_after(2)
    assert send(http, messenger).status_code == 200
    assert send(http, messenger, messaging_type="SOMETIMES").status_code == 400  # counts too
    expired = graph_error(send(http, messenger))
    assert (expired["code"], expired["error_subcode"]) == (190, 463)
    assert len(messenger.outbox) == 1
    fresh = messenger.issue_token()  # what an operator pastes in after a 190
    assert all(send(http, messenger, token=fresh).status_code == 200 for _ in range(3))


def test_server_errors_for_the_next_k_calls_on_any_psid(
    messenger: MessengerEmulator, http: httpx.Client
) -> None:
    messenger.script(ANY, error(1), error(2), error(1200))
    answers = [send(http, messenger, psid=f"65432109876543{i:02d}") for i in range(4)]
    assert [a.status_code for a in answers] == [500, 503, 500, 200]
    assert [graph_error(a)["code"] for a in answers[:3]] == [1, 2, 1200]
    assert len(messenger.outbox) == 1


def test_other_page_and_unknown_path(messenger: MessengerEmulator, http: httpx.Client) -> None:
    other = graph_error(send(http, messenger, node="999"))
    assert (other["code"], other["error_subcode"], other["type"]) == (
        100,
        33,
        "GraphMethodException",
    )
    assert "Object with ID '999' does not exist" in other["message"]
    unknown = http.post(
        f"{messenger.base_url}/v21.0/{messenger.page_id}/photos_of_cats",
        params={"access_token": messenger.page_token},
    )
    assert graph_error(unknown)["code"] == 2500


# -- people who cannot be reached ----------------------------------------------------------------


def test_unknown_and_unreachable_people(clock: ManualClock, http: httpx.Client) -> None:
    with made_emulator(clock, users={PSID, "2", "3", "4", "5"}) as emulator:
        unknown = graph_error(send(http, emulator, psid="404"))
        assert (unknown["code"], unknown["error_subcode"]) == (100, 2018001)
        emulator.forget("2")
        emulator.make_unavailable("3")
        emulator.make_unavailable("4", 200, 1545041)
        emulator.make_unavailable("5", 10, 2018108)
        answers = {psid: send(http, emulator, psid=psid) for psid in ("2", "3", "4", "5")}
        codes = {
            p: (graph_error(r)["code"], graph_error(r)["error_subcode"]) for p, r in answers.items()
        }
        assert codes == {
            "2": (100, 2018001),
            "3": (551, 1545041),
            "4": (200, 1545041),
            "5": (10, 2018108),
        }
        assert answers["4"].status_code == 403
        emulator.restore("3")
        assert send(http, emulator, psid="3").status_code == 200


# -- rate limits ---------------------------------------------------------------------------------


def test_page_rate_limit_is_613(clock: ManualClock, http: httpx.Client) -> None:
    with made_emulator(clock, page_rate=2) as emulator:
        assert [send(http, emulator).status_code for _ in range(2)] == [200, 200]
        limited = graph_error(send(http, emulator))
        assert limited["code"] == 613
        assert limited["is_transient"] is True
        clock.advance(0.5)
        assert send(http, emulator).status_code == 200


def test_app_rate_limit_is_4(clock: ManualClock, http: httpx.Client) -> None:
    with made_emulator(clock, app_rate=1) as emulator:
        assert send(http, emulator).status_code == 200
        limited = send(http, emulator)
        assert limited.status_code == 403
        assert graph_error(limited)["code"] == 4


# -- scripted outcomes -----------------------------------------------------------------------

CONTRACT_ROWS = [
    (10, 2018278),
    (551, 1545041),
    (200, 1545041),
    (10, 2018108),
    (100, 2018001),
    (190, None),
    (4, None),
    (17, None),
    (32, None),
    (613, None),
    (80001, None),
    (1200, None),
    (1, None),
    (2, None),
    (368, None),
    # Account-wide: a permission of the app or Page is missing.
    (10, None),
    (10, 2018065),
    (200, 2018028),
    (200, 2018027),
    (200, 2018021),
    (230, None),
]


@pytest.mark.parametrize(("code", "subcode"), CONTRACT_ROWS)
def test_every_contract_row_can_be_scripted_once(
    messenger: MessengerEmulator, http: httpx.Client, code: int, subcode: int | None
) -> None:
    messenger.script(PSID, error(code, subcode))
    failed = send(http, messenger)
    status, error_type, message = ERRORS[(code, subcode)]
    assert failed.status_code == status
    detail = graph_error(failed)
    assert (detail["code"], detail.get("error_subcode"), detail["type"]) == (
        code,
        subcode,
        error_type,
    )
    assert detail["message"] == message
    assert failed.headers["x-fb-trace-id"] == detail["fbtrace_id"]
    assert not messenger.outbox
    assert send(http, messenger).status_code == 200


def test_rate_limit_delay_and_dropped_connection(
    messenger: MessengerEmulator, http: httpx.Client
) -> None:
    messenger.script(PSID, rate_limited(), rate_limited(80001), Delay(0.01), Disconnect())
    assert graph_error(send(http, messenger))["code"] == 613
    assert graph_error(send(http, messenger))["code"] == 80001
    assert send(http, messenger).status_code == 200  # held briefly, then served
    with pytest.raises(httpx.RemoteProtocolError):
        send(http, messenger)
    assert send(http, messenger).status_code == 200


def test_each_error_answer_has_its_own_trace_id(
    messenger: MessengerEmulator, http: httpx.Client
) -> None:
    messenger.script(PSID, *[error(2)] * 2)
    first, second = (graph_error(send(http, messenger))["fbtrace_id"] for _ in range(2))
    assert first != second


# -- page feed -----------------------------------------------------------------------------------


def test_post_to_page_feed(messenger: MessengerEmulator, http: httpx.Client) -> None:
    url = f"{messenger.base_url}/v21.0/{messenger.page_id}/feed"
    token = {"access_token": messenger.page_token}
    posted = http.post(url, params=token, data={"message": "Thông báo lịch nghỉ Tết"})
    assert posted.status_code == 200
    post_id = posted.json()["id"]
    page, _, number = post_id.partition("_")
    assert page == messenger.page_id and number.isdigit()
    delivery = messenger.outbox.last()
    assert (delivery.kind, delivery.address, delivery.message_id) == ("feed", page, post_id)
    assert graph_error(http.post(url, params=token, data={}))["code"] == 100
    messenger.script(messenger.page_id, error(368))
    assert graph_error(http.post(url, params=token, json={"message": "x"}))["code"] == 368


def test_token_appears_only_in_the_query(messenger: MessengerEmulator, http: httpx.Client) -> None:
    send(http, messenger)
    (request,) = messenger.requests.wait_for(1)
    assert request.mentions(messenger.page_token) == ["query"]
