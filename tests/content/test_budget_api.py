"""Through the API, a template over its budget is refused with a 422 naming the problem, and
nothing is written."""

from __future__ import annotations

import time
from typing import Any

import pytest

from dispatcher.core.db import Database
from dispatcher.tables.content import TemplateVersion
from tests.content.test_budget import BAD_BODIES
from tests.test_api_validation import count

GROWING = "Chào {{ recipient.given_name }}{{ 'a' * (times|default(1)) }}"


def refusal(response: Any) -> str:
    assert response.status_code == 422, response.text
    return str(response.json()["detail"][0]["msg"])


@pytest.mark.timeout(600)
def test_saving_a_template_over_its_budget_is_refused(client, db: Database) -> None:
    for name, (body, reason) in BAD_BODIES.items():
        template = {
            "key": "ngan_sach",
            "variants": [{"channel": "email", "subject": "x", "body": body}],
        }
        started = time.monotonic()
        response = client.post("/v1/templates", json=template)
        assert time.monotonic() - started < 10, name
        message = refusal(response)
        assert reason in message or "template budget exceeded" in message, (name, message)
        assert response.json()["detail"][0]["loc"][:3] == ["body", "variants", 0], name
    assert count(db, TemplateVersion) == 11  # the built-in templates only


@pytest.mark.timeout(300)
def test_previews_over_their_budget_are_refused(client) -> None:
    template = {
        "key": "lap_lai",
        "defaults": {"times": 1},
        "variants": [{"channel": "email", "subject": "Chào", "body": GROWING}],
    }
    assert client.post("/v1/templates", json=template).status_code == 201
    fine = client.post(
        "/v1/templates/lap_lai/preview", json={"channel": "email", "variables": {"times": 3}}
    )
    assert fine.status_code == 200, fine.text
    assert fine.json()["body"].endswith("aaa")
    for times in (10**9, 10**8, 2_000_000):
        started = time.monotonic()
        response = client.post(
            "/v1/templates/lap_lai/preview",
            json={"channel": "email", "variables": {"times": times}},
        )
        assert time.monotonic() - started < 10
        message = refusal(response)
        assert "template budget exceeded: a repeated string over 1000000 characters" in message
        assert response.json()["detail"][0]["loc"] == ["template", "body"]

    # A campaign's variables reach the template too: its preview is refused the same way.
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Lặp lại",
            "kind": "policy_news",
            "template": "lap_lai",
            "audience": {"all": True},
            "channels": ["email"],
            "variables": {"times": 10**9},
        },
    )
    if created.status_code == 201:
        preview = client.get(f"/v1/campaigns/{created.json()['id']}/preview")
        assert "template budget exceeded" in refusal(preview)
    else:
        assert "template budget exceeded" in refusal(created)
