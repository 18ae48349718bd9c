"""The two-person rule: who may approve, what an approval freezes, and what withdraws it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from dispatcher.audit.models import AuditEntry
from dispatcher.campaigns import service as campaigns
from dispatcher.config import Settings
from dispatcher.db import Database
from tests.conftest import make_key
from tests.support import second_person
from tests.test_api_validation import TEMPLATE_DATA
from tests.test_end_to_end import TEMPLATE, publish_template

SEND_AT = datetime(2030, 5, 1, 1, 0, tzinfo=UTC)


def add_people(client: Any, n: int) -> None:
    body = [
        {
            "external_id": f"01{i:08d}",
            "full_name": f"Trần Văn {i}",
            "addresses": {"email": f"nguoi{i}@example.vn"},
        }
        for i in range(n)
    ]
    assert client.post("/v1/recipients", json=body).status_code == 200


def draft(client: Any, **overrides: Any) -> int:
    body = {
        "name": "Tin chính sách tháng 5",
        "kind": "policy_news",
        "template": TEMPLATE["key"],
        "audience": {"all": True},
        "channels": ["email"],
        "send_at": SEND_AT.isoformat(),
        **overrides,
    }
    response = client.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def audit_actions(db: Database, campaign_id: int) -> list[tuple[str, dict[str, Any]]]:
    import json

    with db.transaction() as session:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.subject == f"campaign:{campaign_id}")
            .order_by(AuditEntry.seq)
        ).all()
        return [(r.action, json.loads(r.data)) for r in rows]


def test_the_submitter_cannot_approve_a_second_person_can(client, db: Database) -> None:
    publish_template(client)
    add_people(client, 3)
    cid = draft(client)
    assert client.post(f"/v1/campaigns/{cid}/submit").status_code == 200

    own = client.post(f"/v1/campaigns/{cid}/approve")  # the admin who submitted it
    assert own.status_code == 403
    assert "a different approver must approve it" in own.json()["detail"]
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "submitted"

    approver = second_person()
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=approver)
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "scheduled"
    assert body["approved_by"] not in (None, body["submitted_by"])
    assert body["template_version"] == 1
    assert body["approved_audience_count"] == 3
    assert body["approval_expires_at"] is not None

    actions = audit_actions(db, cid)
    assert [a for a, _ in actions] == ["campaign.submit", "campaign.approve"]
    frozen = actions[1][1]
    assert frozen["audience_count"] == 3 and len(frozen["preview_hash"]) == 64


def test_an_approver_rejects_with_a_reason(client, db: Database) -> None:
    publish_template(client)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    approver = second_person()
    no_reason = client.post(f"/v1/campaigns/{cid}/reject", json={}, headers=approver)
    assert no_reason.status_code == 422
    rejected = client.post(
        f"/v1/campaigns/{cid}/reject", json={"reason": "Sai ngày hiệu lực"}, headers=approver
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "draft"
    assert rejected.json()["status_reason"] == "rejected: Sai ngày hiệu lực"
    # Back in draft: the editor fixes and submits again.
    assert client.post(f"/v1/campaigns/{cid}/submit").json()["status"] == "submitted"


def test_a_new_template_version_withdraws_the_approval(client, db: Database) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).status_code == 200

    variant: dict[str, Any] = dict(TEMPLATE_DATA["variants"][0])
    variant["body"] += " Đã cập nhật."
    edited = {**TEMPLATE_DATA, "variants": [variant]}
    publish_template(client, edited)

    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == ("approval withdrawn: the template has a new version (v2)")
    assert campaign["approved_at"] is None
    assert audit_actions(db, cid)[-1][0] == "campaign.withdraw"
    # Approving again freezes the new version.
    again = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()
    assert again["template_version"] == 2


def test_an_audience_change_before_launch_withdraws_the_approval(
    client, db: Database, settings: Settings
) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    client.post(f"/v1/campaigns/{cid}/approve", headers=second_person())
    add_people(client, 3)  # one more person joins the audience

    with db.transaction() as session:
        runs = campaigns.launch_due(session=session, settings=settings, now=SEND_AT)
    assert runs == []
    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == "approval withdrawn: the audience changed from 2 to 3"
    assert campaign["runs"] == []


def test_an_unchanged_approved_campaign_launches_when_due(
    client, db: Database, settings: Settings
) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    client.post(f"/v1/campaigns/{cid}/approve", headers=second_person())
    with db.transaction() as session:
        runs = campaigns.launch_due(session=session, settings=settings, now=SEND_AT)
    assert len(runs) == 1
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "running"


def test_an_approval_expires_if_not_sent(client, db: Database, settings: Settings) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()
    expires = datetime.fromisoformat(approved["approval_expires_at"])
    assert expires == SEND_AT + timedelta(seconds=settings.approval_ttl_seconds)

    # The scheduler was stopped past the approval's lifetime: nothing goes out on a stale one.
    late = expires + timedelta(minutes=1)
    with db.transaction() as session:
        assert campaigns.launch_due(session=session, settings=settings, now=late) == []
    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == (
        "approval withdrawn: it expired before the campaign was sent"
    )


def test_roles_are_enforced_along_the_life_cycle(client, db: Database) -> None:
    publish_template(client)
    editor = {"Authorization": f"Bearer {make_key(db, 'editor', 'Biên tập viên')}"}
    operator = {"Authorization": f"Bearer {make_key(db, 'operator', 'Vận hành')}"}
    approver = second_person()
    cid = draft(client)
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=operator).status_code == 403
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=editor).status_code == 200
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=editor).status_code == 403
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=approver).status_code == 200
    assert client.post(f"/v1/campaigns/{cid}/pause", headers=approver).status_code == 403
    assert client.post(f"/v1/campaigns/{cid}/pause", headers=operator).status_code == 200
    preview = client.get(f"/v1/campaigns/{cid}/preview", headers=approver)
    assert preview.status_code == 200
    assert [p["channel"] for p in preview.json()] == ["email"]
    assert preview.json()[0]["body"]
