"""Bad input answers 422 naming what is wrong, and writes nothing; transitions answer 409."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import func, select

from dispatcher.auth.service import Role
from dispatcher.core.db import Database
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.content import TemplateVersion
from dispatcher.tables.recipients import Recipient
from dispatcher.web.http.callers import Editor, require
from tests.support import approve
from tests.test_end_to_end import TEMPLATE, add_people, publish_template

TEMPLATE_DATA: dict[str, Any] = TEMPLATE


def count(db: Database, model: Any) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def locs(response: Any) -> list[list[Any]]:
    return [e["loc"] for e in response.json()["detail"]]


def test_recipient_batch_with_one_bad_row_writes_nothing(client, db: Database) -> None:
    rows = [
        {"external_id": "0100000001", "full_name": "Nguyễn Văn An"},
        {"external_id": "0100000002", "full_name": "Lê Thị Hoa", "addresses": {"email": "hoa@"}},
    ]
    response = client.post("/v1/recipients", json=rows)
    assert response.status_code == 422
    assert locs(response) == [["body", 1, "addresses"]]
    assert "email" in response.json()["detail"][0]["msg"]
    assert count(db, Recipient) == 0


def test_recipient_field_errors_name_the_field(client, db: Database) -> None:
    cases = [
        ({"full_name": "An"}, ["body", "external_id"]),
        ({"external_id": "01 02", "full_name": "An"}, ["body", "external_id"]),
        ({"external_id": "01", "full_name": "An", "kind": "robot"}, ["body", "kind"]),
        (
            {"external_id": "01", "full_name": "An", "birth_date": "31/02/1990"},
            ["body", "birth_date"],
        ),
        (
            {"external_id": "01", "full_name": "An", "addresses": {"fax": "1"}},
            ["body", "addresses"],
        ),
        ({"external_id": "01", "full_name": "An", "language": "Vietnamese!"}, ["body", "language"]),
        ({"external_id": "01", "full_name": "An", "extra": 1}, ["body", "extra"]),
    ]
    for body, loc in cases:
        response = client.post("/v1/recipients", json=body)
        assert response.status_code == 422, body
        assert loc in locs(response), (body, response.json())
    response = client.post(
        "/v1/recipients", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert count(db, Recipient) == 0


def nested(depth: int) -> str:
    """A recipient whose attributes nest ``depth`` arrays inside each other."""
    return (
        '{"external_id": "0100000042", "full_name": "Lồng Nhau", "attributes": {"x": '
        + "[" * depth
        + "]" * depth
        + "}}"
    )


def test_deeply_nested_json_is_refused_naming_the_depth(client, db: Database) -> None:
    json_body = {"content-type": "application/json"}
    # A few thousand levels used to exhaust the decoder's recursion (a 500); a hundred were
    # stored and served back. Both are refused before anything decodes them.
    for depth in (100, 5_000):
        response = client.post("/v1/recipients", content=nested(depth), headers=json_body)
        assert response.status_code == 422, (depth, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body"] and error["type"] == "json_too_deep"
        assert "more than 32 levels deep" in error["msg"]
        # Every route with a JSON body goes through the same guard, whatever it declares.
        templates = client.post(
            "/v1/templates", content="[" * depth + "]" * depth, headers=json_body
        )
        assert templates.status_code == 422, templates.text
        assert templates.json()["detail"][0]["type"] == "json_too_deep"
    # The recipients route reads its body whatever the content type says.
    as_text = client.post(
        "/v1/recipients", content=nested(5_000), headers={"content-type": "text/plain"}
    )
    assert as_text.status_code == 422 and "levels deep" in as_text.text
    assert count(db, Recipient) == 0

    # Brackets inside strings are text, and real nesting within the limit is accepted.
    fine = nested(8).replace('"Lồng Nhau"', '"' + "[{" * 40 + '"')
    assert client.post("/v1/recipients", content=fine, headers=json_body).status_code == 201


def test_huge_deep_body_is_refused_quickly(client) -> None:
    """Ten megabytes of brackets: linear work, no recursion, the API still answers."""
    body = b"[" * 10_000_000
    started = time.monotonic()
    response = client.post(
        "/v1/recipients", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert time.monotonic() - started < 10
    assert client.get("/healthz").status_code == 200


def test_reposting_a_recipient_updates_it(client) -> None:
    body = {
        "external_id": "0100000009",
        "full_name": "Võ Thị Sáu",
        "addresses": {"email": "a@b.vn"},
    }
    assert client.post("/v1/recipients", json=body).status_code == 201
    body |= {"full_name": "Võ Thị Sáu (cập nhật)", "addresses": {"telegram": "12345"}}
    response = client.post("/v1/recipients", json=body)
    assert response.status_code == 200
    stored = client.get("/v1/recipients/0100000009").json()
    assert stored["full_name"] == "Võ Thị Sáu (cập nhật)"
    assert stored["addresses"] == {"telegram": "12345"}
    assert client.get("/v1/recipients/nobody").status_code == 404


def test_template_errors_name_the_line(client, db: Database) -> None:
    bad_syntax = {
        "key": "loi",
        "variants": [{"channel": "email", "subject": "Chào", "body": "Dòng 1\nDòng 2 {% if %}\n"}],
    }
    response = client.post("/v1/templates", json=bad_syntax)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert "line 2" in detail["msg"]
    assert detail["loc"] == ["body", "variants", 0, "body"]

    undefined = {
        "key": "loi",
        "variants": [{"channel": "email", "subject": "Chào", "body": "A\nB\n{{ so_tien }}"}],
    }
    response = client.post("/v1/templates", json=undefined)
    assert response.status_code == 422
    assert "so_tien" in response.json()["detail"][0]["msg"]
    assert "line 3" in response.json()["detail"][0]["msg"]

    unsafe = {
        "key": "loi",
        "variants": [
            {"channel": "email", "subject": "x", "body": "{{ recipient.__class__.__mro__ }}"}
        ],
    }
    response = client.post("/v1/templates", json=unsafe)
    assert response.status_code == 422
    assert "unsafe" in response.json()["detail"][0]["msg"]

    too_long = {"key": "loi", "variants": [{"channel": "zalo", "body": "x" * 2001}]}
    response = client.post("/v1/templates", json=too_long)
    assert response.status_code == 422
    assert "2001" in response.json()["detail"][0]["msg"]

    duplicate = {
        "key": "loi",
        "variants": [{"channel": "zalo", "body": "a"}, {"channel": "zalo", "body": "b"}],
    }
    assert client.post("/v1/templates", json=duplicate).status_code == 422
    assert count(db, TemplateVersion) == 11  # the built-in templates only


def test_each_post_of_a_key_is_a_new_version_and_preview_renders(client) -> None:
    publish_template(client)
    second = {
        **TEMPLATE_DATA,
        "defaults": {**TEMPLATE_DATA["defaults"], "note": ""},
        "variants": [{**TEMPLATE_DATA["variants"][0], "subject": "Bản 2 {{ hotline }}"}],
    }
    response = client.post("/v1/templates", json=second)
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 2
    add_people(client)
    preview = client.post(
        f"/v1/templates/{TEMPLATE['key']}/preview",
        json={"channel": "email", "recipient": "0100000002"},
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["subject"] == "Bản 2 1900 9068"
    old = client.post(
        f"/v1/templates/{TEMPLATE['key']}/preview",
        json={"channel": "email", "recipient": "0100000002", "version": 1},
    )
    assert old.json()["subject"] == "Cảnh báo lừa đảo — Trần Thị Bích Ngọc"
    missing = client.post(
        f"/v1/templates/{TEMPLATE['key']}/preview",
        json={"channel": "zalo", "recipient": "0100000002"},
    )
    assert missing.status_code == 422
    assert "no variant for zalo" in missing.json()["detail"][0]["msg"]


def test_bad_campaigns_are_refused_and_nothing_is_written(client, db: Database) -> None:
    publish_template(client)
    good: dict[str, Any] = {
        "name": "Thử",
        "kind": "policy_news",
        "template": TEMPLATE["key"],
        "audience": {"all": True},
        "channels": ["email"],
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"audience": {"provinc": ["Hà Nội"]}}, "audience.provinc"),
        ({"audience": {"or": [{"province": []}]}}, "audience.or[0].province"),
        ({"kind": "spam"}, "kind"),
        ({"channels": ["pigeon"]}, "pigeon"),
        ({"channels": []}, "channels"),
        ({"template": "khong_co"}, "khong_co"),
        ({"send_at": "2027-01-01T07:00:00"}, "time zone"),
        ({"priority": "asap"}, "priority"),
    ]
    for change, needle in cases:
        response = client.post("/v1/campaigns", json={**good, **change})
        assert response.status_code == 422, change
        assert needle in response.text, (change, response.text)
    assert count(db, Campaign) == 0


def test_transitions_that_are_not_allowed_say_why(client) -> None:
    publish_template(client)
    response = client.post(
        "/v1/campaigns",
        json={
            "name": "Tin chính sách",
            "kind": "policy_news",
            "template": TEMPLATE["key"],
            "audience": {"all": True},
            "channels": ["email"],
            "send_at": "2099-01-01T07:00:00+07:00",
        },
    )
    campaign = response.json()
    assert campaign["priority"] == "bulk"
    cid = campaign["id"]
    refused = approve(client, cid)
    assert refused.status_code == 409
    assert refused.json()["detail"] == "cannot approve a campaign that is draft: submit it first"
    assert client.post(f"/v1/campaigns/{cid}/resume").status_code == 409
    client.post(f"/v1/campaigns/{cid}/submit")
    assert approve(client, cid).json()["status"] == "scheduled"
    assert client.post(f"/v1/campaigns/{cid}/pause").json()["status"] == "paused"
    assert client.post(f"/v1/campaigns/{cid}/resume").json()["status"] == "scheduled"
    assert client.post(f"/v1/campaigns/{cid}/cancel").json()["status"] == "cancelled"
    again = client.post(f"/v1/campaigns/{cid}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]
    assert client.get("/v1/campaigns/999999").status_code == 404


def test_delivery_search_rejects_bad_cursor_and_status(client) -> None:
    assert client.get("/v1/deliveries", params={"cursor": "garbage"}).status_code == 422
    response = client.get("/v1/deliveries", params={"status": "lost"})
    assert response.status_code == 422
    assert "lost" in response.json()["detail"][0]["msg"]
    assert client.get("/v1/deliveries").json() == {"items": [], "next_cursor": None}


def test_health(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}


class _Note(BaseModel):
    text: str


_later = APIRouter(prefix="/v1/later", dependencies=[Depends(require(Role.editor))])


@_later.put("/{note_id}")
def _put_note(note_id: int, data: _Note, caller: Editor) -> _Note:
    return data


def test_every_operation_documents_the_errors_it_can_give(client) -> None:
    # A route added later, by another module, is documented the same way.
    client.app.include_router(_later)
    client.app.openapi_schema = None
    document = client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorOut"}
    assert document["components"]["schemas"]["ErrorOut"]["required"] == ["detail"]
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            inputs = operation.get("parameters") or operation.get("requestBody")
            expected = set()
            if operation.get("security"):
                expected |= {"401", "403"}
            if "{" in path:
                expected.add("404")
            if method != "get":
                expected.add("409")
            if inputs:
                expected.add("422")
            assert expected <= set(answers), (method, path, sorted(answers))
            for status in expected - {"422"}:
                if path.startswith("/v1"):
                    content = answers[status]["content"]["application/json"]["schema"]
                    assert content == error, (method, path, status)
            checked += 1
    assert checked > 30
    assert set(document["paths"]["/v1/later/{note_id}"]["put"]["responses"]) == {
        "200",
        "401",
        "403",
        "404",
        "409",
        "422",
    }
    send = document["paths"]["/v1/messages"]["post"]["responses"]["429"]
    assert "Retry-After" in send["headers"]
    assert "WWW-Authenticate" in document["paths"]["/v1/keys"]["get"]["responses"]["401"]["headers"]


def test_a_method_not_allowed_names_every_method_of_the_path(client) -> None:
    cases = {
        ("OPTIONS", "/v1/campaigns"): "GET, POST",
        ("OPTIONS", "/v1/templates"): "GET, POST",
        ("OPTIONS", "/u/abc"): "GET, POST",
        ("DELETE", "/v1/campaigns/1"): "GET",
        # A fixed path is not also the parameterised one beside it, as in OpenAPI.
        ("OPTIONS", "/v1/audiences/preview"): "POST",
    }
    for (method, path), allow in cases.items():
        response = client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allow, (method, path)


def test_a_body_that_is_not_utf8_is_a_422_naming_the_body(client, db: Database) -> None:
    response = client.post(
        "/v1/campaigns",
        content=b'{"name": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert "not valid JSON" in response.json()["detail"][0]["msg"]
    assert count(db, Campaign) == 0


def test_fields_accept_what_the_schema_says_and_nothing_else(client, db: Database) -> None:
    refused: list[tuple[str, str, dict[str, Any]]] = [
        # Times and dates as text, never numbers of seconds.
        ("post", "/v1/recipients", {"external_id": "01", "full_name": "An", "birth_date": 0}),
        ("post", "/v1/keys", {"name": "k", "role": "editor", "expires_at": 4102444800}),
        # Integers as JSON numbers, not strings.
        ("post", "/v1/templates/birthday/preview", {"channel": "email", "version": "1"}),
        # Unknown channels and keys, blank text.
        ("post", "/v1/templates/birthday/preview", {"channel": "pigeon"}),
        ("post", "/v1/recipients", {"external_id": "01", "full_name": " \t "}),
        ("post", "/v1/recipients", {"external_id": "01", "full_name": "An", "language": "vi-"}),
    ]
    for method, path, body in refused:
        response = client.request(method, path, json=body)
        assert response.status_code == 422, (path, body, response.text)
    for query in ({"since": "0.5"}, {"until": "1700000000"}, {"cursor": "ZDox"}):
        assert client.get("/v1/deliveries", params=query).status_code == 422, query
    assert count(db, Recipient) == 0
    # Surrounding spaces are allowed and stripped, as the schema's patterns say.
    stored = client.post(
        "/v1/recipients",
        json={"external_id": " 0100000003 ", "full_name": " Lý Văn Ba ", "language": " VI_vn "},
    )
    assert stored.status_code == 201, stored.text
    assert (stored.json()["external_id"], stored.json()["full_name"]) == ("0100000003", "Lý Văn Ba")
    assert stored.json()["language"] == "vi-vn"
    # A whole number written 7.0 is an integer in JSON Schema.
    preview = client.post(
        "/v1/templates/birthday/preview", json={"channel": "email", "version": 1.0}
    )
    assert preview.status_code != 422 or "version" not in preview.text, preview.text
