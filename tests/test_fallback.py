"""Dead addresses are skipped with their reason; fallback campaigns hop to the next channel."""

from __future__ import annotations

from typing import Any

from tests.support import SmtpServer, approve, wait_for
from tests.test_end_to_end import all_deliveries, campaign_status

PEOPLE = [
    # external_id, email, has null address
    ("0500000001", "a@example.vn", True),
    ("0500000002", "b@example.vn", True),
    ("0500000003", None, True),
    ("0500000004", "d@example.vn", False),
]

TEMPLATE = {
    "key": "tin_test",
    "variants": [
        {"channel": "email", "subject": "Tin {{ recipient.given_name }}", "body": "Email"},
        {"channel": "default", "body": "Chung"},
    ],
}


def setup(client: Any) -> None:
    people = []
    for external_id, mail, null in PEOPLE:
        addresses = {"null": f"n-{external_id}"} if null else {}
        if mail:
            addresses["email"] = mail
        people.append(
            {
                "external_id": external_id,
                "full_name": f"Người {external_id}",
                "addresses": addresses,
            }
        )
    assert client.post("/v1/recipients", json=people).status_code == 200
    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201


def run(client: Any, channels: list[str], mode: str = "all") -> dict[str, Any]:
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Thử kênh",
            "kind": "policy_news",
            "template": "tin_test",
            "audience": {"all": True},
            "channels": channels,
            "channel_mode": mode,
            "priority": "urgent",
        },
    ).json()
    assert created["channel_mode"] == mode
    client.post(f"/v1/campaigns/{created['id']}/submit")
    approve(client, created["id"])
    return dict(
        wait_for(
            lambda: (c := campaign_status(client, created["id"]))["status"] == "completed" and c
        )
    )


def hops(client: Any, campaign_id: int) -> dict[str, list[tuple[str, str, str | None]]]:
    out: dict[str, list[tuple[str, str, str | None]]] = {}
    for d in all_deliveries(client, campaign_id=campaign_id):
        out.setdefault(d["recipient"], []).append((d["channel"], d["status"], d["error_class"]))
    return out


def test_fallback_hops_after_a_permanent_failure_and_skips_dead_addresses(
    client, worker, smtp: SmtpServer
) -> None:
    setup(client)
    smtp.mailbox.script["b@example.vn"] = ["550 5.1.1 User unknown"]
    first = run(client, ["email", "null"], mode="fallback")
    assert hops(client, first["id"]) == {
        "0500000001": [("email", "sent", None)],
        # 550 user unknown: failed on email, then the next channel.
        "0500000002": [("email", "failed", "permanent"), ("null", "sent", None)],
        # No email address at all: straight to the next channel.
        "0500000003": [("null", "sent", None)],
        "0500000004": [("email", "sent", None)],
    }
    assert smtp.mailbox.count() == 2

    # The dead mailbox is remembered: the next campaign records why and falls back at once.
    second = run(client, ["email", "null"], mode="fallback")
    assert hops(client, second["id"])["0500000002"] == [
        ("email", "skipped", "address_dead"),
        ("null", "sent", None),
    ]
    assert smtp.mailbox.count() == 4
    assert second["counts"]["by_status"] == {"sent": 4, "skipped": 1}


def test_all_mode_sends_on_every_channel_and_records_dead_ones(
    client, worker, smtp: SmtpServer
) -> None:
    setup(client)
    smtp.mailbox.script["b@example.vn"] = ["550 5.1.1 User unknown"]
    run(client, ["email"])
    both = run(client, ["email", "null"])
    result = hops(client, both["id"])
    assert sorted(result["0500000001"]) == [("email", "sent", None), ("null", "sent", None)]
    assert sorted(result["0500000002"]) == [
        ("email", "skipped", "address_dead"),
        ("null", "sent", None),
    ]
    assert result["0500000003"] == [("null", "sent", None)]
    assert result["0500000004"] == [("email", "sent", None)]
