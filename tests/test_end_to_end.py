"""A campaign from the HTTP API through Redis and real workers to a real mailbox."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.tables.deliveries import Attempt, Delivery
from tests.support import SmtpServer, approve, parts, wait_for
from workers.sweeper import sweep

PEOPLE = [
    ("0100000001", "Nguyễn Văn An", "an.nguyen@example.vn", "Hà Nội"),
    ("0100000002", "Trần Thị Bích Ngọc", "ngoc.tran@example.vn", "Hà Nội"),
    ("0100000003", "Lê Hoàng Đức", "duc.le@example.vn", "Đà Nẵng"),
    ("0100000004", "Phạm Thị Hương", "huong.pham@example.vn", "Cần Thơ"),
    ("0100000005", "Đặng Quốc Việt", "viet.dang@example.vn", "Hà Nội"),
]

TEMPLATE = {
    "key": "canh_bao_test",
    "kind": "fraud_warning",
    "defaults": {"hotline": "1900 9068"},
    "variants": [
        {
            "channel": "email",
            "locale": "vi",
            "subject": "Cảnh báo lừa đảo — {{ recipient.full_name }}",
            "body": "Kính gửi {{ recipient.honorific }} {{ recipient.full_name }},\n"
            "BHXH không bao giờ yêu cầu chuyển tiền qua điện thoại. Tổng đài {{ hotline }}.",
            "html": "<p>Kính gửi <b>{{ recipient.full_name }}</b>,</p>"
            "<p>Tổng đài {{ hotline }}. {{ note }}</p>",
        }
    ],
}


def add_people(client: Any, people: list[tuple[str, str, str, str]] = PEOPLE) -> None:
    body = [
        {
            "external_id": external_id,
            "full_name": name,
            "province": province,
            "addresses": {"email": mail},
        }
        for external_id, name, mail, province in people
    ]
    response = client.post("/v1/recipients", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["count"] == len(people)


def publish_template(client: Any, template: dict[str, Any] = TEMPLATE) -> None:
    template = {**template, "defaults": {**template["defaults"], "note": "<script>"}}
    response = client.post("/v1/templates", json=template)
    assert response.status_code == 201, response.text


def launch(client: Any, **overrides: Any) -> int:
    body = {
        "name": "Cảnh báo mạo danh BHXH",
        "kind": "fraud_warning",
        "template": TEMPLATE["key"],
        "audience": {"all": True},
        "channels": ["email"],
        **overrides,
    }
    response = client.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "draft"
    assert created["priority"] == "urgent"
    campaign_id = created["id"]
    assert client.post(f"/v1/campaigns/{campaign_id}/submit").json()["status"] == "submitted"
    approved = approve(client, campaign_id)
    assert approved.status_code == 200, approved.text
    return int(campaign_id)


def plan_campaign(client: Any, db: Database, settings: Settings) -> tuple[int, int]:
    """The five people, the template and an approved campaign, planned here rather than by a
    worker (its jobs wait in Redis): (campaign, run)."""
    add_people(client)
    publish_template(client)
    return plan_launched(client, db, settings)


def plan_launched(client: Any, db: Database, settings: Settings) -> tuple[int, int]:
    """An approved campaign of whoever is there, planned here: (campaign, run)."""
    from dispatcher.engine.planner import plan_run
    from dispatcher.tables.campaigns import Run

    campaign_id = launch(client)
    with db.transaction() as session:
        run_id = session.scalar(select(Run.id).where(Run.campaign_id == campaign_id))
    assert run_id is not None
    plan_run(db=db, run_id=run_id, settings=settings)
    return campaign_id, run_id


def campaign_status(client: Any, campaign_id: int) -> dict[str, Any]:
    response = client.get(f"/v1/campaigns/{campaign_id}")
    assert response.status_code == 200
    return dict(response.json())


def all_deliveries(client: Any, **query: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/deliveries", params=params).json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_campaign_reaches_every_mailbox_once(client, worker, smtp: SmtpServer) -> None:
    add_people(client)
    publish_template(client)
    campaign_id = launch(client)

    done = wait_for(
        lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
        what="the campaign to complete",
    )
    assert done["counts"] == {
        "total": 5,
        "by_status": {"sent": 5},
        "by_channel": {"email": {"sent": 5}},
    }
    assert smtp.mailbox.count() == len(PEOPLE)
    for _, name, mail, _ in PEOPLE:
        received = smtp.mailbox.to(mail)
        assert len(received) == 1, mail
        content = parts(received[0])
        assert content["subject"] == f"Cảnh báo lừa đảo — {name}"
        assert f"Kính gửi Ông/Bà {name}," in content["text"]
        assert "Tổng đài 1900 9068" in content["text"]
        assert f"<b>{name}</b>" in content["html"]
        assert "&lt;script&gt;" in content["html"], "HTML parts are autoescaped"
        assert received[0]["Message-ID"].startswith("<d")
        # Fraud warnings are not transactional: one-click unsubscribe (RFC 8058).
        assert received[0]["List-Unsubscribe"].strip().startswith("<https://thongbao.bhxh.test/u/")
        assert received[0]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    deliveries = all_deliveries(client, campaign_id=campaign_id)
    assert len(deliveries) == 5
    for delivery in deliveries:
        assert delivery["status"] == "sent"
        assert delivery["locale"] == "vi"
        assert [a["outcome"] for a in delivery["attempts"]] == ["sent"]
        assert delivery["attempts"][0]["provider_message_id"] == delivery["provider_message_id"]
        assert delivery["attempts"][0]["possible_duplicate"] is False
    one = all_deliveries(client, recipient="0100000003")
    assert [d["recipient"] for d in one] == ["0100000003"]


def test_transient_451_is_retried_and_both_attempts_recorded(
    client, worker, smtp: SmtpServer
) -> None:
    add_people(client)
    publish_template(client)
    smtp.mailbox.script["ngoc.tran@example.vn"] = ["451 4.7.1 Greylisted, try again later"]
    smtp.mailbox.script["duc.le@example.vn"] = ["450 4.2.0 Mailbox busy"]
    campaign_id = launch(client)
    wait_for(lambda: campaign_status(client, campaign_id)["status"] == "completed")

    assert smtp.mailbox.count() == len(PEOPLE)
    by_recipient = {d["recipient"]: d for d in all_deliveries(client, campaign_id=campaign_id)}
    for external_id in ("0100000002", "0100000003"):
        delivery = by_recipient[external_id]
        assert delivery["status"] == "sent"
        assert [a["outcome"] for a in delivery["attempts"]] == ["transient", "sent"]
        assert delivery["attempts"][0]["provider_code"] in {"451", "450"}
        assert [a["number"] for a in delivery["attempts"]] == [1, 2]
    assert [a["outcome"] for a in by_recipient["0100000001"]["attempts"]] == ["sent"]


def test_transient_beyond_quick_retries_goes_back_through_the_broker(
    client, worker, smtp: SmtpServer
) -> None:
    add_people(client, PEOPLE[:1])
    publish_template(client)
    # Three refusals: more than the two quick retries, so one delayed re-delivery is needed.
    smtp.mailbox.script["an.nguyen@example.vn"] = ["421 4.3.2 Service not available"] * 3
    campaign_id = launch(client)
    wait_for(lambda: campaign_status(client, campaign_id)["status"] == "completed")
    (delivery,) = all_deliveries(client, campaign_id=campaign_id)
    assert delivery["status"] == "sent"
    assert [a["outcome"] for a in delivery["attempts"]] == ["transient"] * 3 + ["sent"]
    assert len(smtp.mailbox.to("an.nguyen@example.vn")) == 1


def test_permanent_550_fails_at_once_with_its_reason(client, worker, smtp: SmtpServer) -> None:
    add_people(client)
    publish_template(client)
    smtp.mailbox.script["huong.pham@example.vn"] = ["550 5.1.1 User unknown"]
    campaign_id = launch(client)
    done = wait_for(
        lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c
    )
    assert done["counts"]["by_status"] == {"sent": 4, "failed": 1}
    (failed,) = all_deliveries(client, campaign_id=campaign_id, status="failed")
    assert failed["recipient"] == "0100000004"
    assert failed["error_class"] == "permanent"
    assert "550" in failed["error_reason"] and "User unknown" in failed["error_reason"]
    assert [a["outcome"] for a in failed["attempts"]] == ["permanent"]
    assert failed["attempts"][0]["error_class"] == "address_dead"
    # Exactly one RCPT for that address: a permanent answer is never retried.
    assert [a for a, _ in smtp.mailbox.rcpt_log].count("huong.pham@example.vn") == 1
    # The mailbox is gone: the address is marked dead for later campaigns.
    recipient = client.get("/v1/recipients/0100000004").json()
    assert "email" in recipient["dead_addresses"]


@pytest.mark.timeout(600)
def test_flushall_mid_campaign_still_completes(
    client, worker, smtp: SmtpServer, redis_client, settings, db: Database, job_queue
) -> None:
    people = [
        (f"02{i:08d}", f"Người nhận {i}", f"nguoi{i}@example.vn", "Hà Nội") for i in range(60)
    ]
    add_people(client, people)
    publish_template(client)
    smtp.mailbox.hold_after = 8
    campaign_id = launch(client)
    smtp.mailbox.holding.wait(timeout=30)
    assert smtp.mailbox.holding.is_set(), "the campaign never got under way"
    redis_client.flushall()
    smtp.mailbox.gate.set()

    def finished() -> bool:
        sweep(db=db, settings=settings, markers=job_queue.markers)
        return campaign_status(client, campaign_id)["status"] == "completed"

    wait_for(finished, timeout=90, interval=0.3, what="completion after FLUSHALL")
    for _, _, mail, _ in people:
        assert len(smtp.mailbox.to(mail)) == 1, mail
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 60
        assert (
            session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == "sent")
            )
            == 60
        )
        assert session.scalar(select(func.count()).select_from(Attempt)) == 60
